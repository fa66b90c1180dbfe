"""Helpers for the engine tests: run tests/engine/serve.py, talk raw HTTP over sockets."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from util import REPO, Response, parse_responses, stop_process, wait_until

HERE = Path(__file__).resolve().parent
SERVE = HERE / "serve.py"


class EngineProc:
    """tests/engine/serve.py in a subprocess: one engine on one socket.

    ``app_dir`` is put on the subprocess's PYTHONPATH, so that test apps next to
    the calling test module import (this directory's ``apps`` by default).
    """

    def __init__(self, app: str = "apps:app", settings: dict[str, Any] | None = None,
                 unix: str | None = None, bind: str = "127.0.0.1:0", shutdown_timeout: float = 10.0,
                 stats: bool = False, expect_ready: bool = True, backlog: int = 1024,
                 interface: str = "asgi", env: dict[str, str] | None = None, app_dir: Path = HERE,
                 log_prefix: str = "engine-") -> None:
        self.unix = unix
        self._log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
        self.stats_path = self._log.name + ".stats.json" if stats else None
        penv = dict(os.environ)
        penv["PYTHONPATH"] = os.pathsep.join([str(app_dir), str(REPO / "daemon"), penv.get("PYTHONPATH", "")])
        penv.pop("JOURNAL_STREAM", None)
        penv.update(env or {})
        cmd = [sys.executable, str(SERVE), "--app", app, "--interface", interface,
               "--shutdown-timeout", str(shutdown_timeout), "--backlog", str(backlog)]
        if settings:
            cmd += ["--settings", json.dumps(settings)]
        if unix:
            cmd += ["--unix", unix]
        else:
            cmd += ["--bind", bind]
        if self.stats_path:
            cmd += ["--stats-file", self.stats_path]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=penv, text=True)
        self.port = 0
        if expect_ready:
            line = self._read_line(60.0)
            if not line.startswith("READY"):
                message = f"engine did not start: {line!r}\n{self.log_text()}"
                self.cleanup()
                raise AssertionError(message)
            where = line.split()[1]
            if not unix:
                self.port = int(where)

    def _read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                return self.proc.stdout.readline().strip()
            if self.proc.poll() is not None:
                return self.proc.stdout.readline().strip()
        return ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 30.0) -> socket.socket:
        if self.unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.unix)
            return sock
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return sock

    def log_text(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        assert self.stats_path, "start EngineProc(stats=True)"
        return wait_until(lambda: json.loads(Path(self.stats_path).read_text()), 10, what="stats file")

    def stop(self) -> int:
        rc = stop_process(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        return rc

    def cleanup(self) -> None:
        self.stop()
        self._log.close()
        for p in (self._log.name, self.stats_path):
            if p:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass


P = TypeVar("P", bound=EngineProc)


def served(app: str, **kwargs: Any) -> Iterator[EngineProc]:
    """A module fixture's body: ``yield from served("apps:app")`` serves it, always cleaned up."""
    proc = EngineProc(app=app, **kwargs)
    try:
        yield proc
    finally:
        proc.cleanup()


@contextlib.contextmanager
def started_engines(factory: Callable[..., P]) -> Iterator[Callable[..., P]]:
    """A function that starts engines with ``factory``; every one it started is cleaned up on exit."""
    procs: list[P] = []

    def start(*args: Any, **kwargs: Any) -> P:
        proc = factory(*args, **kwargs)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.cleanup()


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until the peer closes (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def exchange(proc: EngineProc, data: bytes, timeout: float = 10.0, shut_wr: bool = False) -> bytes:
    """Send ``data`` on a new connection and return everything until the server closes."""
    with proc.connect() as sock:
        sock.sendall(data)
        if shut_wr:
            sock.shutdown(socket.SHUT_WR)
        return recv_all(sock, timeout)


def read_responses(sock: socket.socket, count: int, timeout: float = 10.0, head: bool = False) -> list[Response]:
    """Read until ``count`` complete responses arrived (keep-alive connections)."""
    data = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        responses = parse_responses(data, head=head) if data else []
        if len([r for r in responses if r.complete]) >= count:
            return responses
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"expected {count} responses, got {data[:500]!r}")


def assert_still_serves(sock: socket.socket, request: bytes = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n",
                        timeout: float = 10.0) -> Response:
    """The server kept ``sock`` open: one more request on it is answered (a positive check that
    cannot pass by waiting too briefly for a close, as ``not peer_closed(sock, 0.5)`` could)."""
    sock.sendall(request)
    (resp,) = read_responses(sock, 1, timeout=timeout)
    assert resp.status == 200, resp
    return resp


def peer_closed(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the server closed the connection (EOF or reset), reading and dropping data."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not chunk:
            return True
    return False
