"""The supervisor serves the metrics registry (corral.metrics) on metrics_bind."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess


from supervisor_util import Corral
from util import free_port, wait_until


def _scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def _value(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_prefix!r}")


def test_metrics_count_requests_and_restarts_and_pass_promtool(tmp_path):
    metrics_port = free_port()
    with Corral(tmp_path, workers=2, metrics_bind=[f"127.0.0.1:{metrics_port}"]) as corral:
        for _ in range(50):
            assert corral.get("/")[0] == 200
        wait_until(lambda: _value(_scrape(metrics_port), 'corral_requests_total{status="2xx"}') >= 50, 30, 0.2,
                   "50 requests in the scrape")
        victim = corral.status()["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: _value(_scrape(metrics_port), 'corral_worker_restarts_total{reason="crash"}') == 1,
                   30, 0.2, "the crash counted")
        corral.wait_ready(2)
        text = _scrape(metrics_port)
        assert _value(text, 'corral_requests_total{status="2xx"}') >= 50  # the dead worker's count kept
        status = corral.status()
        assert status["listeners"][-1]["role"] == "metrics"
        assert status["queue_depth"] == 0
        wait_until(lambda: corral.status()["status"].startswith("2/2 workers ready · gen 1"), 30, 0.1, "STATUS")
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
