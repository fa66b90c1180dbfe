"""Helpers for the WSGI tests: an engine serving a WSGI app in a subprocess, raw HTTP over sockets.

The server is the engine tests' ``tests/engine/serve.py`` run with
``--interface wsgi``; test apps live next to this file (``wsgi_apps``,
``flask_app``, ``django_app``).
"""

from __future__ import annotations

import socket
import weakref
from pathlib import Path
from typing import Any

import psutil

from engine.engine_util import EngineProc  # tests/ is on sys.path; tests/engine is a namespace package
from util import Response, wait_until

HERE = Path(__file__).resolve().parent

MODES = [0, 4]  # threads: 0 = inline on the loop, 4 = a pool of four threads
MODE_IDS = ["inline", "threads4"]


class WSGIProc(EngineProc):
    """One engine serving one WSGI app, on TCP (default) or a unix socket; stats on."""

    def __init__(self, app: str, threads: int = 0, settings: dict[str, Any] | None = None,
                 unix: str | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(app, settings={"threads": threads, **(settings or {})}, unix=unix,
                         shutdown_timeout=5.0, stats=True, interface="wsgi", env=env, app_dir=HERE,
                         log_prefix="wsgi-")

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss


# Bytes read past the end of a response (pipelining), kept per socket for the next call.
_LEFTOVER: "weakref.WeakKeyDictionary[socket.socket, bytes]" = weakref.WeakKeyDictionary()


def recv_response(sock: socket.socket, head_only: bool = False) -> Response:
    """Read one response; the body framed by Content-Length, chunked, or the close."""
    buf = _LEFTOVER.pop(sock, b"")

    def more() -> bytes:
        try:
            return sock.recv(65536)
        except ConnectionResetError:
            return b""

    while b"\r\n\r\n" not in buf:
        data = more()
        if not data:
            raise ConnectionError(f"connection closed before a response head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    _version, status, *_reason = lines[0].split(" ", 2)
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    resp = Response(int(status), headers, complete=True, raw=head + b"\r\n\r\n")  # type: ignore[arg-type]  # (name, value) pairs
    if head_only or resp.status in (204, 304) or 100 <= resp.status < 200:
        _LEFTOVER[sock] = rest
        return resp
    length = resp.header("content-length")
    if length is not None:
        need = int(length)
        while len(rest) < need:
            data = more()
            if not data:
                resp.complete = False
                break
            rest += data
        resp.body, rest = rest[:need], rest[need:]
    elif (resp.header("transfer-encoding") or "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                data = more()
                if not data:
                    resp.complete = False
                    resp.body = body
                    return resp
                rest += data
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                data = more()
                if not data:
                    resp.complete = False
                    resp.body = body + rest[:size]
                    return resp
                rest += data
            if size == 0:
                rest = rest[2:]
                break
            body += rest[:size]
            rest = rest[size + 2:]
        resp.body = body
    else:
        while True:
            data = more()
            if not data:
                break
            rest += data
        resp.body, rest = rest, b""
    _LEFTOVER[sock] = rest
    return resp


def request(server: WSGIProc, method: str = "GET", target: str = "/", headers: dict[str, str] | None = None,
            body: bytes = b"", version: str = "1.1") -> Response:
    """One request on a fresh connection."""
    hdrs = {"Host": "testserver"}
    hdrs.update(headers or {})
    if body and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with server.connect() as sock:
        sock.sendall(head.encode("latin-1") + body)
        return recv_response(sock, head_only=method == "HEAD")


def chunked(body: bytes, size: int = 1000) -> bytes:
    """``body`` in chunked transfer coding."""
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def connection_closed(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the server has closed ``sock`` (reads hit EOF or a reset) without sending more."""
    if _LEFTOVER.pop(sock, b""):
        return False
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
            return False
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


__all__ = ["MODES", "MODE_IDS", "WSGIProc", "Response", "recv_response", "request", "chunked",
           "connection_closed", "wait_until"]
