"""Copying a file to a connection's socket with ``os.sendfile``, driven by the event loop.

The transport owns the socket and refuses to share its descriptor with
``loop.add_writer``. We work on a ``dup()`` of it instead: our own descriptor
for the same socket, so (a) the loop can tell us when the socket is writable
again, and (b) if the transport closes its descriptor meanwhile, its number
can never be reused under us for another client's connection.

Only used while the transport's own write buffer is empty (checked by the
caller), so bytes reach the client in order.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

# Bytes per sendfile() call and per loop iteration: large enough to be cheap,
# small enough that one download does not hold the loop for long.
_CHUNK = 1 << 20
_PER_STEP = 8 << 20


class SendfileJob:
    """Send ``count`` bytes of ``in_fd`` from ``offset``; ``done(sent, error)`` is called once, on the loop."""

    __slots__ = ("loop", "out_fd", "in_fd", "offset", "remaining", "sent", "done", "write_timeout",
                 "is_gone", "_waiting", "_timer", "_last_progress", "_finished")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: Any, in_fd: int, offset: int, count: int,
                 write_timeout: float, is_gone: Callable[[], bool],
                 done: Callable[[int, BaseException | None], None]) -> None:
        self.loop = loop
        self.out_fd = os.dup(sock.fileno())
        self.in_fd = in_fd
        self.offset = offset
        self.remaining = count
        self.sent = 0
        self.done = done
        self.write_timeout = write_timeout
        self.is_gone = is_gone
        self._waiting = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_progress = loop.time()
        self._finished = False

    def step(self) -> None:
        """Send until done, the socket is full (then wait for writability), or a step's budget is used."""
        if self._finished:
            return
        budget = _PER_STEP
        while self.remaining:
            if self.is_gone():
                self.finish(ConnectionResetError("the client closed the connection during a file download"))
                return
            try:
                n = os.sendfile(self.out_fd, self.in_fd, self.offset, min(self.remaining, _CHUNK))
            except (BlockingIOError, InterruptedError):
                self._wait_writable()
                return
            except OSError as exc:
                self.finish(exc)
                return
            if n == 0:
                self.finish(EOFError(f"the file ended {self.remaining} bytes before the response's "
                                     "Content-Length (was it truncated while being sent?)"))
                return
            self.offset += n
            self.remaining -= n
            self.sent += n
            self._last_progress = self.loop.time()
            budget -= n
            if budget <= 0 and self.remaining:
                self._stop_waiting()
                self.loop.call_soon(self.step)  # let other connections run
                return
        self.finish(None)

    def _wait_writable(self) -> None:
        if not self._waiting:
            self._waiting = True
            self.loop.add_writer(self.out_fd, self.step)
        if self._timer is None:
            self._timer = self.loop.call_later(self.write_timeout, self._check_timeout)

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.loop.remove_writer(self.out_fd)

    def _check_timeout(self) -> None:
        self._timer = None
        if self._finished:
            return
        idle = self.loop.time() - self._last_progress
        if idle >= self.write_timeout:
            self.finish(TimeoutError(f"the client read nothing of a file download for {idle:.0f}s "
                                     "(write_timeout)"))
        else:
            self._timer = self.loop.call_later(self.write_timeout - idle, self._check_timeout)

    def cancel(self) -> None:
        """The connection went away: stop now."""
        self.finish(ConnectionResetError("the client closed the connection during a file download"))

    def finish(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop_waiting()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        os.close(self.out_fd)
        self.done(self.sent, error)
