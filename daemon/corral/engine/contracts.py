"""The contracts between the engine's parts, as ``typing.Protocol`` classes.

Three parties meet for every request:

* the **HTTP protocol** (``corral.engine.protocol.HttpProtocol``), one per
  connection: it parses requests, enforces the limits and deadlines, and
  offers each request's cycle a :class:`Connection`;
* a **cycle**, one per request, made by the interface's :class:`CycleFactory`
  (``corral.engine.cycle.Cycle`` and its ASGI, WSGI and WebSocket subclasses):
  it runs the app and answers the :class:`CycleHooks` the protocol calls;
* the **interface adapter** (:class:`InterfaceAdapter`: ASGI's
  ``corral.engine.asgi.ASGIInterface``, WSGI's ``corral.engine.wsgi.WSGIInterface``),
  which the :class:`~corral.engine.server.Server` asks for the cycle factory,
  the lifespan and the optional capabilities (``serve_simple``, ``websocket_class``).

The concrete classes depend on these contracts, not on each other. This module
imports nothing from the engine, so every engine module may import it.
Everything here runs on the event-loop thread; a cycle that runs the app in a
thread hops back with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from enum import IntFlag
from typing import Any, Final, Protocol

# An ASGI HTTP scope: ``type``, ``asgi``, ``http_version``, ``method``, ``scheme``,
# ``path``, ``raw_path``, ``query_string``, ``root_path``, ``headers`` (lower-cased
# names, in order, no trailers), ``client``, ``server``, ``state``; already corrected
# by trusted proxy headers. A WSGI cycle builds its environ from it.
Scope = dict[str, Any]
# Request header fields as parsed: (lower-cased name, value), in order.
Headers = list[tuple[bytes, bytes]]


class HeadFlag(IntFlag):
    """What a validated response head already says, among the fields the engine itself writes.

    An interface that validates and encodes its heads itself passes these bits to
    ``Cycle.set_encoded_head`` (WSGI does). Per response the engine tests them as
    plain ints (the ``HEAD_*`` constants below): an IntFlag operation is a
    Python-level call, about 0.6 µs each, and a response makes up to four.
    """

    TE = 1  # the app sent Transfer-Encoding (dropped: framing is the engine's job)
    CLOSE = 2  # the app sent Connection: close (the connection closes after the response)
    CONN = 4  # the app sent a Connection field (the engine adds no keep-alive line)
    DATE = 8  # the app sent its own Date (the engine's is left out)
    SERVER = 16  # the app sent its own Server (the engine's is left out)


# HeadFlag bits as plain ints, for the per-response code (hot path).
HEAD_TE: Final = HeadFlag.TE.value
HEAD_CLOSE: Final = HeadFlag.CLOSE.value
HEAD_CONN: Final = HeadFlag.CONN.value
HEAD_DATE: Final = HeadFlag.DATE.value
HEAD_SERVER: Final = HeadFlag.SERVER.value


class Exchange(Protocol):
    """One request as the engine's bookkeeping sees it (stats, the access log, in-flight counts)."""

    scope: Scope
    start: float  # time.monotonic() when the app was started (0.0: not yet)
    status: int  # the response status (0 until the response started)
    bytes_sent: int  # response body bytes written
    response_complete: bool


class CycleHooks(Exchange, Protocol):
    """A request/response cycle: what the HTTP protocol calls on it and the state it reads.

    ``corral.engine.cycle.Cycle`` implements everything but :meth:`run`, and
    default (empty) versions of the ``on_*`` hooks.
    """

    keep_alive: bool  # False: the connection closes after this response
    response_started: bool
    head_sent: bool
    body_received: int  # request body bytes received so far (the protocol checks max_body_size)
    body_complete: bool  # no more request body bytes will come

    def run(self) -> None:
        """Start the app for this request; called once, on the loop, when it is this request's turn.

        Must not block. When the app is done the cycle has completed the response
        (``write_body(..., more=False)``) or called ``abort_response()``. Sets
        ``self.start = ctx.monotonic()`` (request_timeout and the stats use it).
        """

    def on_body_event(self) -> None:
        """Body bytes arrived, the body ended, or the client left: wake whoever waits in a body read.

        Also called when the response completes while a reader waits.
        """

    def on_drain(self) -> None:
        """The write buffer drained (or the client left): wake writers waiting on it."""

    def on_request_timeout(self) -> None:
        """``request_timeout`` passed before the response completed: stop the app if possible,
        then ``abort_response(504, ...)`` (504 if nothing was written yet, else a close)."""

    def on_disconnect(self) -> None:
        """The connection is gone (called once by the protocol)."""

    def feed_body(self, data: bytes) -> None:
        """Request body bytes arrived (the protocol's side of the body buffer)."""

    def end_body(self) -> None:
        """The request body is complete."""

    def take_body(self) -> bytes:
        """All buffered body bytes (maybe b""); resumes reading if the buffer was full."""
        ...

    def abort_response(self, status: int = 500, message: str = "Internal Server Error") -> None:
        """Error exit: a canned ``status`` response if the head is unsent, else close the connection."""


class UpgradeCycle(CycleHooks, Protocol):
    """The cycle of a WebSocket handshake (``corral.engine.websocket``)."""

    def on_upgrade_data(self, data: bytes) -> None:
        """Bytes that came right behind the handshake's head: the client's first frames."""


class Connection(Protocol):
    """What the HTTP protocol offers a cycle (``HttpProtocol`` implements it).

    Request body, with flow control: the protocol buffers at most about
    ``body_buffer_size`` unread bytes in the cycle, then stops reading from the
    socket until the app takes them (``Cycle.take_body``).

    Response: nothing reaches the socket until the cycle's first ``write_body``,
    so a head that fails validation can still become a 500. A cycle writes
    through :meth:`write` (or ``transport.write`` for the head and its first
    bytes), reports the end with :meth:`response_done`, and awaits
    :meth:`drain_waiter` while ``write_paused``: the client is not reading
    (``write_timeout`` applies).
    """

    # The connection's EngineContext (corral.engine.context). Typed Any here: the
    # context types its cycle factories with this module, so naming its class here
    # would make the two modules import each other. Cycles annotate it themselves.
    ctx: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    client: tuple[str, int] | None  # the peer (host, port); None for a unix socket
    server: tuple[str, int | None] | None  # our end: (host, port), or (path, None)
    interface_state: Any  # whatever the interface keeps per connection (None until it sets it)
    write_paused: bool  # the transport's buffer is over its high-water mark: await drain_waiter()

    def write(self, data: bytes) -> None:
        """Write bytes of the current response (hot path)."""

    def response_done(self, cycle: CycleHooks) -> None:
        """The cycle's response is complete: account for it, then the next request or idle (hot path)."""

    def drain_waiter(self) -> asyncio.Future[None] | None:
        """A future to await before writing more (None: no need); it fails if the client left."""
        ...

    def pause_reading_for(self, cycle: CycleHooks) -> None:
        """The cycle's body buffer is full: stop reading from the socket."""

    def resume_reading_for(self, cycle: CycleHooks) -> None:
        """The app took the buffered body: read again."""

    def waiting_for_body(self, cycle: CycleHooks, waiting: bool) -> None:
        """Arm (True) or disarm the body-read idle timeout while the app waits for body bytes."""

    def switch_protocols(self, cycle: CycleHooks, protocol: asyncio.Protocol) -> None:
        """Hand the connection to ``protocol`` once ``cycle`` wrote a 101 (a WebSocket accepted)."""

    def finish_simple(self, head: bytes, body: bytes, add_length: bool, status: int, start: float) -> None:
        """Answer the simple request being served (see :class:`SimpleServer`) with one whole response."""

    def adopt(self, cycle: CycleHooks, method: str, raw_path: bytes, query: bytes) -> None:
        """Make a cycle that began in ``serve_simple`` the connection's current, ordinary cycle."""


class CycleFactory(Protocol):
    """Makes the cycle of one request (a cycle class is one)."""

    def __call__(self, conn: Connection, scope: Scope, keep_alive: bool, expect_continue: bool,
                 body_expected: bool) -> CycleHooks: ...


class WebSocketFactory(Protocol):
    """Makes the cycle of a WebSocket handshake, and says which requests are one."""

    def __call__(self, conn: Connection, scope: Scope, keep_alive: bool, expect_continue: bool,
                 body_expected: bool) -> UpgradeCycle: ...

    def wants(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether a request with these special headers (Upgrade among them) is a WebSocket handshake."""
        ...


class SimpleServer(Protocol):
    """An interface's shortcut for *simple* requests (WSGI inline mode has one).

    Called by the protocol from ``on_headers_complete`` for an HTTP/1.1
    keep-alive request with one Host header and none that needs a check (no
    body, Expect, Upgrade, Connection or proxy headers), an origin-form target,
    on a connection with nothing else in progress, while not draining (and only
    with no access log and no root_path, which the Server checks). No scope or
    cycle exists for it. Before returning it must either answer it with
    ``conn.finish_simple(head, body, add_length, status, start)`` (one whole
    keep-alive response, accounted like any other) or make it an ordinary cycle
    with ``conn.adopt(cycle, method, raw_path, query)`` and carry on through
    :class:`CycleHooks`. It is the hot path of hello-world style apps: a scope
    dict, a queued cycle and its framing state cost about as much as the app.
    """

    def __call__(self, conn: Connection, method: str, raw_path: bytes, query: bytes,
                 headers: Headers) -> None: ...


class InterfaceAdapter(Protocol):
    """An application interface (ASGI, WSGI) as the Server drives it.

    The optional capabilities are declared, None where the interface has none:
    the Server wires what is there into the engine context.
    """

    @property
    def cycle_class(self) -> CycleFactory:
        """The cycle of each HTTP request."""
        ...

    @property
    def state(self) -> dict[str, Any]:
        """Lifespan state, copied (shallowly) into each request's scope."""
        ...

    @property
    def serve_simple(self) -> SimpleServer | None:
        """The simple-request shortcut, or None."""
        ...

    @property
    def websocket_class(self) -> WebSocketFactory | None:
        """The cycle of WebSocket handshakes, or None (an Upgrade: websocket request is plain HTTP then)."""
        ...

    async def startup(self) -> None:
        """Before serving (ASGI lifespan startup); raises LifespanError with the app's message."""

    async def shutdown(self, timeout: float | None = None) -> None:
        """After the connections drained (ASGI lifespan shutdown, WSGI thread pool)."""


class ServedConnection(Protocol):
    """A connection as the Server sees it: the HTTP protocol, or the WebSocket protocol that took over."""

    @property
    def _cur(self) -> Exchange | None:
        """The request being answered, if any (read when the stats count requests in flight).

        Private by name for history: both protocols define it; a rename is one edit in each.
        """
        ...

    def check_deadlines(self, now: float) -> None:
        """The server's sweep (twice a second), with ``ctx.monotonic()``."""

    def check_request_timeout(self, now_monotonic: float, limit: float) -> None:
        """The sweep, when ``request_timeout`` is set."""

    def drain_for_shutdown(self) -> None:
        """Graceful shutdown: close now if idle, else after the current response."""

    def force_close(self) -> None:
        """Shutdown's deadline passed: drop the connection."""

    def evict(self) -> bool:
        """Close to make room for a new connection, if idle; False if it is not."""
        ...
