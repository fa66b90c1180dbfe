"""10,000 idle WebSockets on one worker (`corral run`): it keeps answering HTTP, its heartbeat stays
fresh, `corral status` counts them, and the memory each costs (worker RSS delta / N) stays small."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from util import CORRAL, free_port, stop_process, wait_until

HERE = Path(__file__).resolve().parent
N = 10_000
WARMUP = 200  # connections opened before the baseline, so that one-time allocations are not counted
MAX_KIB_PER_CONNECTION = 40  # generous: about 10 KiB measured (docs/websockets.md)
HANDSHAKE = (b"GET /idle HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise AssertionError(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn) to run this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


async def _open(port: int, count: int, held: list) -> None:
    """Open ``count`` WebSockets (raw handshakes: the client must cost little), 200 at a time."""
    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HANDSHAKE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert head.startswith(b"HTTP/1.1 101 "), head
        held.append(writer)

    for start in range(0, count, 200):
        await asyncio.gather(*(one() for _ in range(min(200, count - start))))


def _status(control: str) -> dict:
    out = subprocess.run([CORRAL, "status", "--json", "--control-socket", control], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_ten_thousand_idle_websockets_on_one_worker(tmp_path: Path) -> None:
    _raise_fd_limit(N + WARMUP + 1000)  # the worker inherits it through the supervisor
    port = free_port()
    control = str(tmp_path / "control.sock")
    config = tmp_path / "corral.json"
    config.write_text(json.dumps({
        "app": "ws_idle_app:app", "app_dir": str(HERE), "workers": 1, "bind": [f"127.0.0.1:{port}"],
        "control_socket": control, "max_connections": N + WARMUP + 100, "backlog": 4096,
        # The raw client answers no ping; the test is over well before the default 20 s + 20 s anyway.
        "ws_ping_interval": None}))
    log = open(tmp_path / "corral.log", "wb")
    proc = subprocess.Popen([CORRAL, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    loop = asyncio.new_event_loop()
    held: list = []
    try:
        worker = wait_until(lambda: [w for w in _status(control)["workers"] if w["state"] == "ready"], 90, 0.2,
                            "the worker ready")[0]
        worker_proc = psutil.Process(worker["pid"])
        loop.run_until_complete(_open(port, WARMUP, held))
        time.sleep(1.5)  # noqa: the RSS baseline is a measurement, not a wait for a condition
        before = worker_proc.memory_info().rss
        started = time.monotonic()
        loop.run_until_complete(_open(port, N, held))
        opened_in = time.monotonic() - started
        wait_until(lambda: _status(control)["workers"][0]["websockets_open"] == N + WARMUP, 60, 0.2,
                   f"{N + WARMUP} open WebSockets in corral status")
        after = worker_proc.memory_info().rss
        per_connection_kib = (after - before) / N / 1024
        print(f"{N} idle WebSockets opened in {opened_in:.1f}s; worker RSS {before >> 20} -> {after >> 20} MiB: "
              f"{per_connection_kib:.1f} KiB per connection")
        # It keeps serving HTTP and its heartbeat stays fresh, with every WebSocket open.
        for _ in range(20):
            response = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
            assert (response.status_code, response.text) == (200, "ok")
        status = _status(control)["workers"][0]
        assert status["heartbeat_age"] is not None and status["heartbeat_age"] < 3, status
        assert status["state"] == "ready" and status["pid"] == worker["pid"]
        assert per_connection_kib < MAX_KIB_PER_CONNECTION, per_connection_kib
    finally:
        for writer in held:
            writer.transport.abort()
        loop.close()
        stop_process(proc, signal.SIGTERM, 60)
        log.close()
