"""A real browser: Chromium headless loads a page from a Starlette app under `corral run`; the
page's script opens a WebSocket, sends a message and writes the echo into the DOM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from util import CORRAL, free_port, stop_process, wait_until

HERE = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: apt-get install chromium "
                                             "(in the Makefile's APT_PACKAGES)")
def test_chromium_echoes_over_a_websocket_served_by_corral(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "corral.json"
    config.write_text(json.dumps({"app": "ws_browser_app:app", "app_dir": str(HERE), "workers": 1,
                                  "bind": [f"127.0.0.1:{port}"],
                                  "control_socket": str(tmp_path / "control.sock")}))
    log = open(tmp_path / "corral.log", "wb")
    proc = subprocess.Popen([CORRAL, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until(lambda: _answers(port), 90, 0.2, "corral serving the page")
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                              "--dump-dom", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=120).stdout
        assert '<p id="echo">echo: hello from chromium (via 1.1, ws)</p>' in dom, dom
        assert '<p id="state">open</p>' in dom, dom
        assert '<p id="closed">closed 1000</p>' in dom, dom  # the closing handshake completed
    finally:
        stop_process(proc, signal.SIGTERM, 60)
        log.close()
    assert proc.returncode == 0, (tmp_path / "corral.log").read_text()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
