"""WebSockets across deploys without systemd (`corral run`): a reload or a recycle closes each open
WebSocket with 1012 (Service Restart) after the messages the app sent, and the client that reconnects
lands on the new code; a stop closes with 1001 (Going Away). A peer that never answers the close
frame cannot hold a worker's exit past ws_close_timeout.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from reload_util import LocalCorral
from util import wait_until
from ws_deploy import write_ws_app

class WsCorral(LocalCorral):
    """LocalCorral serving WS_APP (same module name, so the reload machinery is unchanged)."""

    def deploy(self, version: str, **app: Any) -> None:
        write_ws_app(self.app_dir, version, **app)


class Session:
    """One client connection: its hello, then every numbered message until the close."""

    def __init__(self, port: int) -> None:
        self.ws = connect(f"ws://127.0.0.1:{port}/live", open_timeout=30, close_timeout=30, legacy=True,
                          max_queue=None, ping_interval=None)  # the ticks are read late: buffer them all
        _, self.version, pid = self.ws.recv(timeout=30).split()
        self.pid = int(pid)
        self.numbers: list[int] = []

    def read_until_closed(self, timeout: float = 90) -> ConnectionClosed:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
            except ConnectionClosed as exc:
                return exc
            self.numbers.append(int(message.split()[1]))

    def assert_no_gap(self) -> None:
        assert self.numbers, "no numbered message arrived before the close"
        assert self.numbers == list(range(self.numbers[0], self.numbers[0] + len(self.numbers))), self.numbers[:20]

    def close(self) -> None:
        self.ws.close()


def _close_code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None


def test_reload_closes_websockets_with_1012_and_clients_reconnect_to_the_new_code(tmp_path: Path) -> None:
    with WsCorral(tmp_path, workers=2, ws_drain_timeout=0.5).start("v1") as corral:
        sessions = [Session(corral.port) for _ in range(6)]
        assert {s.version for s in sessions} == {"v1"}
        corral.deploy("v2")
        reloading = corral.reload_async()
        closes = [s.read_until_closed() for s in sessions]
        assert reloading.wait(timeout=120) == 0, reloading.stderr.read()
        # 1012, with the closing handshake completed (the client got the server's close frame and answered).
        assert [_close_code(c) for c in closes] == [1012] * len(sessions), closes
        assert all(c.sent is not None for c in closes), closes
        for s in sessions:
            s.assert_no_gap()  # everything the app sent before the close arrived, in order
        again = [Session(corral.port) for _ in range(6)]
        assert {s.version for s in again} == {"v2"}
        assert not {s.pid for s in again} & {s.pid for s in sessions}
        for s in again:
            s.close()


def test_stop_closes_websockets_with_1001(tmp_path: Path) -> None:
    with WsCorral(tmp_path, workers=1).start("v1") as corral:
        session = Session(corral.port)
        session.ws.recv(timeout=30)
        corral.proc.send_signal(signal.SIGTERM)
        closed = session.read_until_closed()
        assert _close_code(closed) == 1001, closed
        session.assert_no_gap()
        assert corral.proc.wait(timeout=60) == 0


def test_max_requests_recycle_closes_websockets_with_1012(tmp_path: Path) -> None:
    with WsCorral(tmp_path, workers=1, max_requests=20).start("v1") as corral:
        session = Session(corral.port)
        with httpx.Client(base_url=f"http://127.0.0.1:{corral.port}", timeout=30) as client:
            for _ in range(25):
                client.get("/")
        closed = session.read_until_closed()
        assert _close_code(closed) == 1012, closed
        session.assert_no_gap()
        fresh = wait_until(lambda: _try_session(corral.port, session.pid), 60, 0.2, "a session on the new worker")
        assert fresh.version == "v1"
        fresh.close()


def _try_session(port: int, old_pid: int) -> Session | None:
    try:
        s = Session(port)
    except (OSError, TimeoutError):
        return None
    if s.pid == old_pid:
        s.close()
        return None
    return s


def test_a_peer_that_never_answers_the_close_does_not_hold_the_old_worker(tmp_path: Path) -> None:
    # graceful_timeout is long; ws_close_timeout bounds how long the old worker waits for the close.
    with WsCorral(tmp_path, workers=1, graceful_timeout=300, ws_close_timeout=2).start("v1") as corral:
        old_pid = corral.status()["workers"][0]["pid"]
        mute = socket.create_connection(("127.0.0.1", corral.port), timeout=30)
        mute.sendall(b"GET /live HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert mute.recv(4096).startswith(b"HTTP/1.1 101")  # then it never reads or answers again
        try:
            corral.deploy("v2")
            start = time.monotonic()
            proc = corral.reload()
            assert proc.returncode == 0, proc.stderr
            wait_until(lambda: old_pid not in {w["pid"] for w in corral.status()["workers"]}, 60, 0.2,
                       "the old worker gone")
            assert time.monotonic() - start < 60  # far below graceful_timeout=300
        finally:
            mute.close()



def test_corral_status_shows_open_websockets_per_worker(tmp_path: Path) -> None:
    import subprocess

    from util import CORRAL

    with WsCorral(tmp_path, workers=1).start("v1") as corral:
        sessions = [Session(corral.port) for _ in range(3)]
        pid = sessions[0].pid
        wait_until(lambda: [w["websockets_open"] for w in corral.status()["workers"]] == [3], 30, 0.2,
                   "3 open WebSockets in corral status --json")
        table = subprocess.run([CORRAL, "status", "--control-socket", corral.control], capture_output=True,
                               text=True, timeout=30).stdout
        header, row = [line.split() for line in table.splitlines() if line.split()[:1] in (["PID"], [str(pid)])]
        assert row[header.index("WS")] == "3", table
        for s in sessions:
            s.close()
        wait_until(lambda: [w["websockets_open"] for w in corral.status()["workers"]] == [0], 30, 0.2,
                   "no open WebSocket once the clients left")
