"""An in-place self-upgrade (re-exec) keeps every counter the metrics and `corral status` show.

Before SupervisorState, reexec copied ~15 attributes one by one and the metrics registry
started empty in the new image: restarts, reloads and the requests of exited workers went
back to zero. A counter never goes backwards; this test holds every one of them to that,
across a real re-exec (a reload that finds corral's code changed on disk).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from control_util import clean_env
from supervisor_util import Corral
from util import REPO, free_port, wait_until

# One sample line of the exposition format: name{labels} value
_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def _counters(metrics_port: int) -> dict[str, float]:
    """Every counter sample (``*_total``) and histogram count of a scrape, by name and labels."""
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    counters = {}
    for line in body.splitlines():
        match = _SAMPLE.match(line)
        if match and (match[1].endswith("_total") or match[1].endswith("_count")) \
                and not match[1].startswith("process_") and 'pid="' not in (match[2] or ""):
            # Not the process's own figures (a new image's), nor one worker's (it leaves when drained).
            counters[match[1] + (match[2] or "")] = float(match[3])
    return counters


def _upgrade(lib: Path, version: str) -> None:
    init = lib / "corral" / "__init__.py"
    text = init.read_text()
    start = text.index("__version__")
    init.write_text(text[:start] + f'__version__ = "{version}"' + text[text.index("\n", start):])


def _reload(corral: Corral, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "corral", "reload", "--control-socket", corral.control],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr + corral.log()[-3000:]


def test_every_counter_survives_an_in_place_reexec(tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(REPO / "daemon" / "corral", lib / "corral", ignore=shutil.ignore_patterns("__pycache__"))
    env = clean_env(PYTHONPATH=str(lib))
    metrics_port = free_port()
    corral = Corral(tmp_path, workers=1, env=env, metrics_bind=[f"127.0.0.1:{metrics_port}"])
    corral.write_config()
    corral._log = open(corral.log_path, "wb")  # noqa: SIM115  (closed by stop())
    corral.proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "--config", str(corral.config_path)],
                                   stdout=corral._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        corral.wait_ready(1)
        for _ in range(20):
            assert corral.get("/")[0] == 200
        # A crash (restart "crash"), then two reloads (reload outcomes, "reload" restarts, and
        # the requests of the drained generations in the retired totals).
        pid = corral.ready_workers()[0]["pid"]
        try:
            corral.get("/exit", timeout=10)
        except (OSError, http.client.HTTPException):
            pass  # the worker died answering: that is the point
        wait_until(lambda: pid not in {w["pid"] for w in corral.ready_workers()}
                   and len(corral.ready_workers()) == 1, 60, 0.1, "the crashed worker replaced")
        _reload(corral, env)
        _reload(corral, env)
        for _ in range(20):
            assert corral.get("/")[0] == 200
        wait_until(lambda: len(corral.status()["workers"]) == 1, 60, 0.1, "the old generations gone")
        # Heartbeats carry the live workers' counters: wait until the scrape has the last requests.
        # (The crashed worker's last second of requests may be lost with it: only the live ones count here.)
        wait_until(lambda: corral.ready_workers()[0]["requests"] >= 20, 30, 0.1, "the live worker's heartbeat")
        before = _counters(metrics_port)
        status_before = corral.status()
        assert status_before["restarts"].get("crash") == 1, status_before["restarts"]
        assert before['corral_reload_duration_seconds_count{outcome="success"}'] == 2

        _upgrade(lib, "9.9.9")
        _reload(corral, env)
        status = corral.status()
        assert status["pid"] == corral.proc.pid
        assert status["supervisor"]["code"]["reexecs"] == 1, corral.log()[-3000:]

        wait_until(lambda: len(corral.status()["workers"]) == 1, 60, 0.1, "the adopted worker drained")
        after = _counters(metrics_port)
        went_back = {name: (value, after.get(name)) for name, value in before.items()
                     if after.get(name, -1) < value}
        assert not went_back, f"counters went backwards across the re-exec (before, after): {went_back}"
        assert after['corral_reload_duration_seconds_count{outcome="success"}'] == 3  # this reload too
        assert after['corral_worker_restarts_total{reason="crash"}'] == 1
        status = corral.status()
        assert status["restarts"]["crash"] == 1
        assert status["restarts"]["reload"] >= status_before["restarts"]["reload"]
        assert status["requests_total"] >= status_before["requests_total"]
    finally:
        code = corral.stop()
    assert code == 0, corral.log()[-3000:]
    assert not os.path.exists(corral.control)
