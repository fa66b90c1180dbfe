"""A minimal HTTP responder for ``GET /metrics`` and the probes, run by the supervisor on asyncio.

It serves ``/metrics`` (when given a ``render``) and, when given a ``probes`` snapshot,
``/livez`` and ``/readyz`` (``corral.metrics.probes``: 200 or 503 with the reason in the
body). The metrics listener serves all three; a ``health`` listener only the probes.

The supervisor must not import uvloop or httptools, and a scrape every few
seconds needs none of the engine's speed: this is a small, defensive HTTP/1.x
server on the standard library.

- It accepts on sockets that are already listening (systemd's ``metrics`` socket
  or ``metrics_bind:``) and never calls listen() again: asyncio's create_server
  would, and so override the socket unit's ``Backlog=``.
- One request per connection (``Connection: close``): Prometheus reconnects
  for each scrape at no measurable cost, and it keeps the server trivially bounded.
- Bounded: request head size, time to send the request head
  (``header_timeout``, a few seconds: Prometheus sends it at once), time to
  read the response, and the number of concurrent connections.
- A scrape always gets a slot. When every slot is taken and a new connection
  arrives, the oldest connection that has had its response, or has not sent
  a whole request head within ``HEAD_GRACE`` (half a second), is closed to
  make room, as nginx and uvicorn shed idle connections; connections being
  answered, and scrapers that just connected, are never closed for another.
  Silent or slow clients therefore cannot lock Prometheus out; new
  connections wait only while every slot is sending a response or has just
  been opened.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from corral.metrics.exposition import CONTENT_TYPE
from corral.metrics.probes import LIVEZ_PATH, READYZ_PATH, HostState, livez, readyz

__all__ = ["MetricsServer"]

log = logging.getLogger("corral.metrics")

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
# accept() errors that say "out of resources": back off instead of spinning.
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LINGER_BYTES = 64 * 1024
# Seconds between two log reports of connections closed to make room.
_REPORT_EVERY = 60.0
# A connection that has not sent its request head is closed to make room for a newcomer only
# after this long: real scrapers send at once, so only a connection held idle is closed.
HEAD_GRACE = 0.5


class _HeadTooLarge(Exception):
    pass


class _Phase(enum.Enum):
    """Where a connection is; all but RESPONDING may be closed to make room for a new one."""

    HEAD = "has not sent a whole request head"
    RESPONDING = "is being answered"
    CLOSING = "has had its response"


class _Slot:
    """One accepted connection: its peer, its phase and since when it is open."""

    __slots__ = ("peer", "phase", "opened")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.phase = _Phase.HEAD
        self.opened = time.monotonic()


class MetricsServer:
    """Serves ``render()`` at ``/metrics`` on any number of listening sockets.

    Usage, on the supervisor's running loop::

        server = MetricsServer(metrics.render)
        server.serve(sock)          # as many sockets as needed
        ...
        await server.close()        # the listening sockets stay open: their owner closes them
    """

    def __init__(self, render: Callable[[], str] | None, *, path: str = "/metrics",
                 probes: Callable[[], HostState] | None = None,
                 max_head_bytes: int = 8192, timeout: float = 10.0, header_timeout: float = 5.0,
                 max_connections: int = 16) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        if not header_timeout > 0 or not timeout > 0:
            raise ValueError(f"timeouts must be > 0 seconds, got timeout={timeout!r}, "
                             f"header_timeout={header_timeout!r}")
        if render is None and probes is None:
            raise ValueError("MetricsServer needs render (for /metrics), probes (for /livez, /readyz) or both")
        self._render = render
        self._path = path
        self._probes = probes
        # What a 404 lists: the paths this server answers.
        self._paths = ([path] if render is not None else []) + ([LIVEZ_PATH, READYZ_PATH] if probes else [])
        self._max_head = max_head_bytes
        self._timeout = timeout  # sending the response, and the lingering close after it
        self._header_timeout = min(header_timeout, timeout)  # receiving the request head
        self._max_connections = max_connections
        self._acceptors: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()  # every connection task, for close()
        # The connections that hold a slot, in accept order (so the first one
        # that may be closed is the oldest). A connection closed to make room
        # leaves at once; its task ends a moment later.
        self._slots: dict[asyncio.Task[None], _Slot] = {}
        self._changed = asyncio.Event()  # a slot was freed, or a connection became closable
        self._evicted = 0  # connections closed to make room since the last log report
        self._reported_at = float("-inf")

    def serve(self, sock: socket.socket) -> None:
        """Start accepting on a listening stream socket."""
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"metrics socket {sock.getsockname()!r} is not listening; "
                             f"call listen() first or pass a socket unit's fd")
        sock.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._accept_loop(sock),
                                                      name=f"metrics-accept-{sock.fileno()}")
        self._acceptors.append(task)

    async def close(self) -> None:
        """Stop accepting and end open connections."""
        tasks = self._acceptors + list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._acceptors.clear()

    # ------------------------------------------------------------------ slots

    def _closable(self) -> asyncio.Task[None] | None:
        """The oldest connection that may be closed to make room now, if any: one that had its
        response, or one that has not sent a whole request head for HEAD_GRACE seconds (so that
        a burst of scrapers, each sending at once, never closes each other)."""
        now = time.monotonic()
        for task, slot in self._slots.items():
            if slot.phase is _Phase.CLOSING or (slot.phase is _Phase.HEAD and now - slot.opened >= HEAD_GRACE):
                return task
        return None

    def _has_room(self) -> bool:
        return len(self._slots) < self._max_connections or self._closable() is not None

    async def _wait_for_change(self) -> None:
        """Until a connection changes phase, or one waiting for its request head passes HEAD_GRACE."""
        self._changed.clear()
        heads = [slot.opened for slot in self._slots.values() if slot.phase is _Phase.HEAD]
        timeout = max(min(heads) + HEAD_GRACE - time.monotonic(), 0.0) if heads else None
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass  # that connection may be closed for another now

    async def _make_room(self) -> None:
        """Free a slot for a connection just accepted: close the oldest closable one, or wait."""
        while len(self._slots) >= self._max_connections:
            victim = self._closable()
            if victim is not None:
                self._evict(victim)
                return
            await self._wait_for_change()  # every slot is answering a request: soon over

    def _evict(self, task: asyncio.Task[None]) -> None:
        slot = self._slots.pop(task)
        task.cancel()  # its finally closes the socket
        self._evicted += 1
        now = time.monotonic()
        if now - self._reported_at >= _REPORT_EVERY:
            log.warning("metrics listener: all %d connections were taken; closed %d idle or slow ones to make "
                        "room for new ones (the last from %s, which %s after %.1fs). Something opens "
                        "connections to the metrics socket without sending requests",
                        self._max_connections, self._evicted, slot.peer, slot.phase.value, now - slot.opened)
            self._evicted = 0
            self._reported_at = now

    def _set_phase(self, slot: _Slot, phase: _Phase) -> None:
        slot.phase = phase
        if phase is not _Phase.RESPONDING:
            self._changed.set()  # an acceptor waiting for room may close this one now

    # ------------------------------------------------------------------ accepting

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # While every slot is answering a request, new clients wait in the kernel queue.
            while not self._has_room():
                await self._wait_for_change()
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _ACCEPT_BACKOFF:
                    log.warning("metrics socket: accept failed (%s); retrying in 1s", exc)
                    await asyncio.sleep(1.0)
                continue
            try:
                await self._make_room()
            except BaseException:
                conn.close()
                raise
            slot = _Slot(_peer_text(address))
            task = loop.create_task(self._serve_connection(conn, slot))
            self._connections.add(task)
            self._slots[task] = slot
            task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._slots.pop(task, None)
        self._changed.set()

    async def _serve_connection(self, conn: socket.socket, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            try:
                head = await asyncio.wait_for(self._read_head(conn), self._header_timeout)
            except TimeoutError:
                response = _response(408, b"request not received in time\n")
            except _HeadTooLarge:
                response = _response(431, b"request head too large\n")
            else:
                if head is None:
                    return  # the client closed without a request
                self._set_phase(slot, _Phase.RESPONDING)
                response = self._respond(head)
            await asyncio.wait_for(loop.sock_sendall(conn, response), self._timeout)
            self._set_phase(slot, _Phase.CLOSING)
            await asyncio.wait_for(self._linger(conn), self._timeout)
        except (OSError, TimeoutError):
            pass  # the client went away or stalled; nothing to tell it
        finally:
            conn.close()

    async def _read_head(self, conn: socket.socket) -> bytes | None:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        while True:
            chunk = await loop.sock_recv(conn, 4096)
            if not chunk:
                return None
            buf += chunk
            for terminator in (b"\r\n\r\n", b"\n\n"):
                end = buf.find(terminator)
                if 0 <= end <= self._max_head:
                    return bytes(buf[:end])
            if len(buf) > self._max_head:
                raise _HeadTooLarge

    async def _linger(self, conn: socket.socket) -> None:
        # Closing with unread input makes the kernel send RST, which can destroy the
        # response before the client reads it: half-close, then read to EOF first.
        loop = asyncio.get_running_loop()
        conn.shutdown(socket.SHUT_WR)
        drained = 0
        while drained < _LINGER_BYTES:
            chunk = await loop.sock_recv(conn, 4096)
            if not chunk:
                return
            drained += len(chunk)

    def _respond(self, head: bytes) -> bytes:
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        try:
            method, target, version = request_line.decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return _response(400, b"malformed request line\n")
        if not version.startswith("HTTP/"):
            return _response(400, b"malformed request line\n")
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            return _response(505, b"only HTTP/1.0 and HTTP/1.1 are served here\n")
        if "://" in target:  # absolute-form, as sent to proxies: keep the path
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path = target.split("?", 1)[0]
        if path not in self._paths:
            return _response(404, f"not found; served here: {', '.join(self._paths)}\n".encode())
        if method not in ("GET", "HEAD"):
            return _response(405, b"use GET\n", extra=b"Allow: GET, HEAD\r\n")
        if path != self._path or self._render is None:
            return self._probe(path, head_only=method == "HEAD")
        try:
            body = self._render().encode("utf-8")
        except Exception:
            log.exception("rendering metrics failed")
            return _response(500, b"rendering metrics failed; see the corral log\n")
        return _response(200, body, content_type=CONTENT_TYPE, head_only=method == "HEAD")

    def _probe(self, path: str, *, head_only: bool) -> bytes:
        assert self._probes is not None  # only probe paths reach here without a render
        try:
            state = self._probes()
            answer = livez(state) if path == LIVEZ_PATH else readyz(state)
        except Exception:  # a bug in the snapshot must answer, not hang the prober
            log.exception("computing %s failed", path)
            return _response(500, f"computing {path} failed; see the corral log\n".encode())
        # Never cached: a stale "ready" is exactly what a probe must not get.
        return _response(int(answer.status), answer.body.encode("utf-8"), extra=b"Cache-Control: no-store\r\n",
                         head_only=head_only)


def _response(status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8",
              extra: bytes = b"", head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: close\r\n").encode("ascii") + extra + b"\r\n"
    return head if head_only else head + body


def _peer_text(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "a unix-socket peer"
