"""An in-process harness for the engine's ``HttpProtocol``: no sockets, no subprocess.

In the spirit of uvicorn's ``MockTransport`` tests and h11's unit tests: one
:class:`HttpProtocol` per :class:`Wire`, built the way ``corral.engine.server``
builds it (an ``EngineContext`` from the interface adapter), connected to a
:class:`FakeTransport` that records what the engine writes and whether it
paused reading or closed. Bytes go in with ``data_received``; the app runs on
a real event loop (uvloop, as in a worker), driven by the harness.

Time is the context's clock (``ctx.monotonic``), replaced by a :class:`Clock`
the test moves forward, so deadlines (keep-alive, header, body, write) are
reached at once: ``wire.clock.advance(66); wire.sweep()`` does what the
server's half-second sweep would do 66 seconds later.

Usage (the ``wire`` fixture of tests/engine/conftest.py is a :class:`WireFactory`)::

    conn = wire(app)                       # or wire(app, max_request_line=64, interface="wsgi")
    conn.send(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    [resp] = conn.responses(1)             # runs the loop until one complete response
    assert resp.status == 200
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import uvloop

from corral.engine.asgi import ASGIInterface
from corral.engine.context import EngineContext
from corral.engine.protocol import HttpProtocol
from corral.engine.settings import EngineSettings
from util import Response, parse_responses

T = TypeVar("T")

PEER = ("127.0.0.1", 40000)
SOCKNAME = ("127.0.0.1", 8000)
_DEADLINE = 10.0  # seconds of wall time a wait may take before it fails (the machine is loaded)


class Clock:
    """A monotonic clock the test moves by hand (``ctx.monotonic`` of the harness)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeTransport(asyncio.Transport):
    """Records writes, reading state, EOF and close; calls ``connection_lost`` as a real one does."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol,
                 peername: Any = PEER, sockname: Any = SOCKNAME) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.extra = {"peername": peername, "sockname": sockname}
        self.data = bytearray()  # everything written, in order
        self.reading = True
        self.pauses = 0  # pause_reading() calls that paused
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.lost = False  # connection_lost() was called
        self.high_water: int | None = None
        self.buffered = 0  # what get_write_buffer_size() answers (a test sets it)

    # --- what the protocol calls
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_written:
            raise AssertionError(f"write after write_eof(): {bytes(data)[:80]!r}")
        if not self.closed:
            self.data += data

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def pause_reading(self) -> None:
        if self.reading:
            self.pauses += 1
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]  # a WebSocket protocol takes over

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def _lose(self) -> None:
        if self.closed:
            return
        self.closed = True
        # As asyncio's transports do: connection_lost comes in a later loop iteration.
        self.loop.call_soon(self._lost)

    def _lost(self) -> None:
        self.lost = True
        self.protocol.connection_lost(None)


class Wire:
    """One connection: an ``HttpProtocol`` on a ``FakeTransport``, driven on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: Any, settings: EngineSettings,
                 interface: str = "asgi", peername: Any = PEER, sockname: Any = SOCKNAME) -> None:
        self.loop = loop
        self.clock = Clock()
        self.adapter = _make_adapter(app, settings, interface)
        if interface == "wsgi":
            self.run(self.adapter.startup())  # the WSGI adapter learns its loop (and pool) here
        self.ctx = self.run(self._context(app, settings))
        self.protocol = HttpProtocol(self.ctx)
        self.transport = FakeTransport(loop, self.protocol, peername, sockname)
        self.call(self.protocol.connection_made, self.transport)
        self._read = 0  # bytes of transport.data already returned by take()

    async def _context(self, app: Any, settings: EngineSettings) -> EngineContext:
        # As Server._context() wires it (corral.engine.server).
        ctx = EngineContext(asyncio.get_running_loop(), app, settings, self.adapter.cycle_class,
                            self.adapter.state)
        ctx.monotonic = self.clock
        if not settings.access_log and not settings.root_path:
            ctx.serve_simple = getattr(self.adapter, "serve_simple", None)
        if settings.ws:
            ctx.websocket_class = getattr(self.adapter, "websocket_class", None)
        return ctx

    # --- driving the loop
    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a plain loop callback, as the loop calls a protocol (never inside a task)."""
        done: asyncio.Future[None] = self.loop.create_future()

        def callback() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001  (handed to the test that made the call)
                done.set_exception(exc)
            else:
                done.set_result(None)
        self.loop.call_soon(callback)
        self.loop.run_until_complete(done)

    def settle(self, rounds: int = 20) -> None:
        """Let the loop run callbacks and app tasks that are ready (nothing waits on time)."""
        async def spin() -> None:
            for _ in range(rounds):
                await asyncio.sleep(0)
        self.run(spin())

    def wait_for(self, predicate: Callable[[], T], what: str, timeout: float = _DEADLINE) -> T:
        """Run the loop until ``predicate()`` is truthy; fail after ``timeout`` seconds of wall time."""
        async def poll() -> T:
            deadline = self.loop.time() + timeout
            while True:
                value = predicate()
                if value:
                    return value
                if self.loop.time() > deadline:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                         f"written so far: {bytes(self.transport.data)[:600]!r}")
                await asyncio.sleep(0.001)
        return self.run(poll())

    # --- the client's side
    def send(self, data: bytes, settle: bool = True) -> None:
        """The client sends ``data`` (one read by the server); then let the loop settle."""
        self.call(self.protocol.data_received, data)
        if settle:
            self.settle()

    def send_eof(self) -> None:
        """The client half-closes (shutdown(SHUT_WR)): the transport closes unless the protocol keeps it."""
        def eof() -> None:
            if not self.protocol.eof_received():
                self.transport.close()
        self.call(eof)
        self.settle()

    def disconnect(self) -> None:
        """The client resets the connection."""
        self.transport.abort()
        self.settle()

    @property
    def written(self) -> bytes:
        return bytes(self.transport.data)

    def take(self) -> bytes:
        """The bytes written since the last take()."""
        data = bytes(self.transport.data[self._read:])
        self._read = len(self.transport.data)
        return data

    def responses(self, count: int, head: bool = False) -> list[Response]:
        """Run the loop until ``count`` complete responses are written; return all parsed so far."""
        def complete() -> list[Response] | None:
            parsed = parse_responses(self.written, head=head)
            return parsed if sum(r.complete for r in parsed) >= count else None
        return self.wait_for(complete, f"{count} complete response(s)")

    def response(self, head: bool = False) -> Response:
        """The one response written (waits for it); fails if there are more."""
        parsed = self.responses(1, head=head)
        assert len(parsed) == 1, f"expected one response, got {len(parsed)}: {self.written[:600]!r}"
        return parsed[0]

    def wait_closed(self) -> None:
        self.wait_for(lambda: self.transport.lost, "the server to close the connection")

    # --- the server's side
    def sweep(self) -> None:
        """What the server's periodic sweep does for this connection, at the harness clock's time."""
        now = self.clock()
        self.call(self.protocol.check_deadlines, now)
        limit = self.ctx.request_timeout
        if limit is not None:
            self.call(self.protocol.check_request_timeout, now, limit)
        self.settle()

    def pause_writing(self) -> None:
        """The transport's buffer went over its high-water mark (the client does not read)."""
        self.call(self.protocol.pause_writing)
        self.settle()

    def resume_writing(self) -> None:
        self.call(self.protocol.resume_writing)
        self.settle()


def _make_adapter(app: Any, settings: EngineSettings, interface: str) -> Any:
    if interface == "asgi":
        return ASGIInterface(app, settings)
    from corral.engine.wsgi import WSGIInterface  # imported on demand, as the server does
    return WSGIInterface(app, settings)


class WireFactory:
    """``wire(app, **settings)`` opens one harness connection; all share one event loop."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.wires: list[Wire] = []

    def __call__(self, app: Any, interface: str = "asgi", peername: Any = PEER, sockname: Any = SOCKNAME,
                 **settings: Any) -> Wire:
        conn = Wire(self.loop, app, replace(EngineSettings(), **settings), interface, peername, sockname)
        self.wires.append(conn)
        return conn

    def __enter__(self) -> WireFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in self.wires:
            if not conn.transport.closed:
                conn.transport.abort()
            if conn.adapter.__class__.__name__ == "WSGIInterface":
                conn.run(conn.adapter.shutdown(5.0))
        # Let app tasks see the disconnect and finish before the loop goes away.
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending, timeout=_DEADLINE))
        self.loop.close()
