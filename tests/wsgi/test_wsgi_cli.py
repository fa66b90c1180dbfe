"""WSGI through the real command line: ``interface: auto`` picks WSGI, ``threads`` reaches the engine."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest

from util import CORRAL, free_port, stop_process, wait_until
from wsgi_util import HERE


def _get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.status, resp.read()


@pytest.mark.parametrize("threads,expect_thread", [(None, "MainThread"), ("3", "corral-wsgi-")])
def test_corral_run_serves_wsgi(tmp_path, threads, expect_thread):
    port = free_port()
    env = {**os.environ, "CORRAL_CONTROL_SOCKET": str(tmp_path / "control.sock"),
           "PYTHONPATH": str(HERE)}
    env.pop("CORRAL_THREADS", None)
    if threads is not None:
        env["CORRAL_THREADS"] = threads
    proc = subprocess.Popen([CORRAL, "run", "-w", "1", "-b", f"127.0.0.1:{port}", "wsgi_apps:app"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        status, body = wait_until(lambda: _get(port, "/thread"), timeout=60, what="corral serving the WSGI app")
        data = json.loads(body)
        assert status == 200 and data["thread"].startswith(expect_thread)
        assert data["multithread"] is (threads is not None)
    finally:
        stop_process(proc)
        err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, err


def test_stuck_request_gets_the_worker_recycled(tmp_path):
    """request_timeout on a WSGI request: 504, the stack in the log, and the supervisor replaces the worker."""
    port = free_port()
    env = {**os.environ, "CORRAL_CONTROL_SOCKET": str(tmp_path / "control.sock"), "PYTHONPATH": str(HERE),
           "CORRAL_THREADS": "2", "CORRAL_REQUEST_TIMEOUT": "1", "CORRAL_GRACEFUL_TIMEOUT": "10"}
    log_path = tmp_path / "corral.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([CORRAL, "run", "-w", "1", "-b", f"127.0.0.1:{port}", "wsgi_apps:app"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = json.loads(wait_until(lambda: _get(port, "/pid"), timeout=60, what="the first worker")[1])["pid"]
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(port, "/stuck?seconds=6")
        assert info.value.code == 504

        def new_worker() -> int | None:
            pid = json.loads(_get(port, "/pid")[1])["pid"]
            return pid if pid != first else None

        wait_until(new_worker, timeout=60, what="a replacement worker serving")
        text = log_path.read_text()
        assert "stuck_in_the_app" in text and "past request_timeout" in text
    finally:
        stop_process(proc)
