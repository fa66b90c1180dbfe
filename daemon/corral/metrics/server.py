"""A minimal HTTP responder for ``GET /metrics``, run by the supervisor on asyncio.

The supervisor must not import uvloop or httptools, and a scrape every few
seconds needs none of the engine's speed: this is a small, defensive HTTP/1.x
server on the standard library.

- It accepts on sockets that are already listening (systemd's ``metrics`` socket
  or ``metrics_bind:``) and never calls listen() again: asyncio's create_server
  would, and so override the socket unit's ``Backlog=``.
- One request per connection (``Connection: close``): Prometheus reconnects
  for each scrape at no measurable cost, and it keeps the server trivially bounded.
- Bounded: request head size, time to send the request, time to read the
  response, and the number of concurrent connections.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Callable

from corral.metrics.exposition import CONTENT_TYPE

__all__ = ["MetricsServer"]

log = logging.getLogger("corral.metrics")

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 505: "HTTP Version Not Supported",
}
# accept() errors that say "out of resources": back off instead of spinning.
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LINGER_BYTES = 64 * 1024


class _HeadTooLarge(Exception):
    pass


class MetricsServer:
    """Serves ``render()`` at ``/metrics`` on any number of listening sockets.

    Usage, on the supervisor's running loop::

        server = MetricsServer(metrics.render)
        server.serve(sock)          # as many sockets as needed
        ...
        await server.close()        # the listening sockets stay open: their owner closes them
    """

    def __init__(self, render: Callable[[], str], *, path: str = "/metrics",
                 max_head_bytes: int = 8192, timeout: float = 10.0,
                 max_connections: int = 16) -> None:
        self._render = render
        self._path = path
        self._max_head = max_head_bytes
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._acceptors: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()

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

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Take a slot before accepting: beyond the limit, clients wait in the kernel queue.
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                self._slots.release()
                if exc.errno in _ACCEPT_BACKOFF:
                    log.warning("metrics socket: accept failed (%s); retrying in 1s", exc)
                    await asyncio.sleep(1.0)
                continue
            except BaseException:
                self._slots.release()
                raise
            task = loop.create_task(self._serve_connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._slots.release()

    async def _serve_connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            try:
                head = await asyncio.wait_for(self._read_head(conn), self._timeout)
            except TimeoutError:
                response = _response(408, b"request not received in time\n")
            except _HeadTooLarge:
                response = _response(431, b"request head too large\n")
            else:
                if head is None:
                    return  # the client closed without a request
                response = self._respond(head)
            await asyncio.wait_for(loop.sock_sendall(conn, response), self._timeout)
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
        if path != self._path:
            return _response(404, f"not found; metrics are at {self._path}\n".encode())
        if method not in ("GET", "HEAD"):
            return _response(405, b"use GET\n", extra=b"Allow: GET, HEAD\r\n")
        try:
            body = self._render().encode("utf-8")
        except Exception:
            log.exception("rendering metrics failed")
            return _response(500, b"rendering metrics failed; see the corral log\n")
        return _response(200, body, content_type=CONTENT_TYPE, head_only=method == "HEAD")


def _response(status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8",
              extra: bytes = b"", head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: close\r\n").encode("ascii") + extra + b"\r\n"
    return head if head_only else head + body
