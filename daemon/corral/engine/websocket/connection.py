"""One WebSocket after its 101: the transport's protocol, driving websockets' sans-IO ``ServerProtocol``.

The HTTP protocol hands the transport over (``HttpProtocol.switch_protocols``);
from then on this object is the connection, in ``ctx.connections`` in place of
the HTTP protocol, and answers what the server asks of every connection:
``check_deadlines(now)`` (twice a second), ``check_request_timeout`` (never
applies), ``drain_for_shutdown()`` and ``force_close()``.

Frames are parsed and written by ``websockets`` (``ServerProtocol``, with its C
speedups for unmasking): masking, reserved bits and opcodes, control-frame
rules, the message size limit, close codes and answering pings are its job
(whole, masked, unfragmented data frames are unmasked here, ``_receive_fast``;
every other frame goes to it),
and a violation closes the connection with the RFC's code (1002, 1007, 1009)
before the TCP connection is dropped. This module reassembles fragmented
messages (checking text as UTF-8 fragment by fragment), queues them for the
app, and runs the flow control and the timers:

* incoming: at ``ws_max_queue`` unread messages, reading from the socket
  pauses until the app has taken half of them;
* outgoing: ``write_paused`` is true while the transport holds more than
  ``write_buffer_size`` unsent bytes; ``send()`` then waits (``drained()``),
  and a peer that reads nothing for ``write_timeout`` is dropped;
* keepalive: a ping every ``ws_ping_interval``; no pong within
  ``ws_ping_timeout`` closes the connection with 1011;
* closing: once a close frame is sent, the peer has ``ws_close_timeout`` to
  answer before the TCP connection is dropped.

Outgoing data frames are written here when no extension is negotiated (a head
and the payload: ``frame_head``); with permessage-deflate, ``ServerProtocol``
compresses and frames them.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import random
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from corral.engine.cycle import ClientDisconnected

try:
    from websockets.speedups import apply_mask
except ImportError:  # a websockets built without its C extension
    from websockets.utils import apply_mask

if TYPE_CHECKING:
    from corral.engine.context import EngineContext

log = logging.getLogger("corral.engine")

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_CLOSE = Opcode.CLOSE
_PONG = Opcode.PONG
_OPEN = State.OPEN

ABNORMAL = 1006  # no close frame came: the TCP connection was lost (RFC 6455 section 7.1.5)
_INTERNAL_ERROR = 1011
_INVALID_DATA = 1007
_utf8_decoder = codecs.getincrementaldecoder("utf-8")

# Heads of unmasked, unfragmented data frames (RFC 6455 section 5.2), for the send fast path:
# FIN + opcode, then the payload length in 7, 7+16 or 7+64 bits. Small ones are prebuilt.
_SMALL_HEADS = {op: [bytes((0x80 | op, n)) for n in range(126)] for op in (1, 2)}
_TEXT_HEADS = _SMALL_HEADS[1]
_BINARY_HEADS = _SMALL_HEADS[2]
_MID_HEAD = struct.Struct("!BBH").pack
_BIG_HEAD = struct.Struct("!BBQ").pack
_MID_LENGTH = struct.Struct("!H").unpack_from
_BIG_LENGTH = struct.Struct("!Q").unpack_from

# The receive fast path (``_receive_fast``) keeps an incomplete frame of up to this many bytes
# to finish it itself; a longer one goes to ServerProtocol as it comes.
_FAST_FRAME_MAX = 65536 + 14


def frame_head(opcode: int, length: int) -> bytes:
    """The head of a final, unmasked data frame of ``length`` payload bytes (a server's frame)."""
    if length < 126:
        return _SMALL_HEADS[opcode][length]
    if length < 65536:
        return _MID_HEAD(0x80 | opcode, 126, length)
    return _BIG_HEAD(0x80 | opcode, 127, length)


def _nothing() -> None:
    pass


class WebSocketConnection(asyncio.Protocol):
    """The WebSocket side of one connection (see the module docstring)."""

    __slots__ = (
        "ctx", "transport", "proto", "peer", "on_closed", "stats", "bytes_out",
        # incoming messages
        "_messages", "_max_queue", "_waiter", "_parts", "_decoder", "_text", "_read_paused", "_closing_sent",
        "_fast", "_held", "_owed", "_max_size",
        # outgoing flow control
        "write_paused", "_drain_waiters", "_write_deadline",
        # timers (time.monotonic(); 0.0 = not armed)
        "_ping_at", "_pong_deadline", "_ping_payload", "_close_deadline", "_drain_at",
        # the end
        "_lost", "_fail_code", "code", "reason",
    )

    # The server counts a connection's HTTP request in flight from ``_cur``: a
    # WebSocket has none (its upgrade request was answered with the 101).
    _cur = None

    def __init__(self, ctx: EngineContext, transport: asyncio.Transport, proto: ServerProtocol,
                 peer: str, on_closed: Callable[[], None]) -> None:
        self.ctx = ctx
        self.transport = transport
        self.proto = proto
        self.peer = peer  # for log lines
        self.on_closed = on_closed  # called once the TCP connection is gone
        self.stats = ctx.stats.ws
        self.bytes_out = 0  # payload bytes of the messages sent (for the access log)
        settings = ctx.settings
        self._messages: deque[str | bytes] = deque()
        self._max_queue = settings.ws_max_queue
        self._waiter: asyncio.Future[str | bytes | None] | None = None  # receive() waiting
        self._parts: list[Any] | None = None  # fragments of the message being received
        self._decoder: Any = None  # incremental UTF-8 decoder of a fragmented text message
        self._text = False
        self._read_paused = False
        self._closing_sent = False  # we started the closing handshake (or failed the connection)
        # The receive fast path: on while no extension is negotiated and the connection is open.
        self._fast = not proto.extensions
        self._held = b""  # the start of a frame the fast path waits to see whole
        self._owed = 0  # bytes of the frame being read that ServerProtocol still has to get
        self._max_size = settings.ws_max_message_size  # ServerProtocol's max_size (handshake.py)
        self.write_paused = False  # over write_buffer_size unsent: send() callers await drained()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._write_deadline = 0.0
        now = ctx.monotonic()
        interval = settings.ws_ping_interval
        self._ping_at = now + interval if interval else 0.0
        self._pong_deadline = 0.0
        self._ping_payload = b""
        self._close_deadline = 0.0
        self._drain_at = 0.0  # shutting down: close at this time (ws_drain_timeout)
        self._lost = False
        self._fail_code = 0  # a close code we failed the connection with (a protocol error)
        self.code: int | None = None  # the close code reported to the app, once closed
        self.reason = ""

    def start(self, early: bytes) -> None:
        """Begin: take bytes that came right behind the handshake, then read from the socket."""
        transport = self.transport
        self.stats.open += 1
        if transport.get_write_buffer_size() > self.ctx.write_buffer_size:
            self.pause_writing()  # the 101 itself did not fit: this protocol never saw the pause
        if early:
            self.data_received(early)
        if not self._read_paused and not self._lost:
            transport.resume_reading()

    # ------------------------------------------------------------------ the transport's events

    def data_received(self, data: bytes) -> None:
        # Hot path.
        if self._fast:
            self._receive_fast(data)
        else:
            self._receive(data)

    def _receive_fast(self, data: bytes) -> None:
        """Hot path: whole, unfragmented, masked text and binary frames are unmasked and handed to
        the app here; every other frame (control frames, fragments, anything malformed or too big)
        goes to ServerProtocol, byte for byte, so it judges them as it judges all frames.

        ServerProtocol keeps no state about the data frames it did not see, except that it must
        get each frame it is given whole: ``_owed`` counts what it still needs of a frame it began.
        A frame is taken here only when ServerProtocol is between frames and no fragmented
        message is under way (a new data frame in the middle of one is its error to report).
        Going through it costs about 3 us a message, most of the server's share of an echo.
        """
        if self._held:
            data = self._held + data
            self._held = b""
        size = len(data)
        pos = 0
        nbytes = 0
        proto = self.proto
        while pos < size:
            owed = self._owed
            if owed:
                end = pos + owed if owed < size - pos else size
                self._owed = owed - (end - pos)
                self._receive(data[pos:end])
                pos = end
                continue
            if not self._fast or proto.state is not _OPEN or self._closing_sent or self._lost:
                self._fast = False  # for good: none of these comes back
                self.stats.bytes_in += nbytes
                self._receive(data[pos:] if pos else data)
                return
            if size - pos < 2:
                self._held = data[pos:]
                break
            first = data[pos]
            second = data[pos + 1]
            if not second & 0x80:
                # Unmasked: a client's frame must be masked (RFC 6455 section 5.1), and
                # ServerProtocol fails the connection with 1002; it reads everything from here.
                self._fast = False
                continue
            length = second & 0x7F
            if length < 126:
                head = 6
            elif length == 126:
                head = 8
                if size - pos >= 4:
                    length = _MID_LENGTH(data, pos + 2)[0]
            else:
                head = 14
                if size - pos >= 10:
                    length = _BIG_LENGTH(data, pos + 2)[0]
            if size - pos < head:  # the extended length or the mask is still to come
                self._held = data[pos:]
                break
            total = head + length
            # FIN, no RSV bits, text (1) or binary (2).
            if ((first == 0x81 or first == 0x82) and self._parts is None
                    and length <= self._max_size):
                if size - pos >= total:
                    start = pos + head
                    payload = apply_mask(data[start:start + length], data[start - 4:start])
                    pos += total
                    nbytes += length
                    if first == 0x81:
                        try:
                            message: str | bytes = str(payload, "utf-8")
                        except UnicodeDecodeError as exc:
                            self.stats.bytes_in += nbytes
                            self._fail(_INVALID_DATA, f"invalid UTF-8 in a text message: {exc.reason}")
                            self._fast = False
                            return
                    else:
                        message = payload
                    self._push(message)
                    continue
                if total <= _FAST_FRAME_MAX:
                    self._held = data[pos:]
                    break
            # Not for the fast path, or too long to hold: ServerProtocol reads this frame.
            self._owed = total
        self.stats.bytes_in += nbytes

    def _receive(self, data: bytes) -> None:
        """Bytes for ServerProtocol; the frames it parsed go to the app."""
        # ServerProtocol's ``events`` and ``writes`` lists are read here directly (what
        # events_received() and data_to_send() return): the two calls would allocate two new
        # lists each time.
        proto = self.proto
        proto.receive_data(data)
        # After the handshake ServerProtocol's events are only Frames (Request and Response
        # in the union are the opening handshake's, which the HTTP engine did).
        events: list[Frame] = proto.events  # type: ignore[assignment]
        if events:
            proto.events = []
            nbytes = 0
            for frame in events:
                opcode = frame.opcode
                if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                    nbytes += len(frame.data)
                    if frame.fin and opcode is not _CONT:
                        if opcode is _TEXT:
                            try:
                                self._push(str(frame.data, "utf-8"))  # any buffer type; strict
                            except UnicodeDecodeError as exc:
                                self._fail(_INVALID_DATA, f"invalid UTF-8 in a text message: {exc.reason}")
                                break
                        else:
                            payload = frame.data
                            self._push(payload if type(payload) is bytes else bytes(payload))
                    elif not self._fragment(frame):
                        break
                elif opcode is _PONG:
                    if self._pong_deadline and frame.data == self._ping_payload:
                        self._pong_deadline = 0.0
                elif opcode is _CLOSE:
                    self._closing()
                # Pings: ServerProtocol queued the pong (same payload) already.
            self.stats.bytes_in += nbytes
        if proto.writes:
            self._flush()

    def _fragment(self, frame: Any) -> bool:
        """A frame of a fragmented message; False if it failed the connection (bad UTF-8)."""
        data = frame.data
        if frame.opcode is not _CONT:  # the first fragment
            self._text = frame.opcode is _TEXT
            self._parts = []
            self._decoder = _utf8_decoder() if self._text else None
        parts = self._parts
        assert parts is not None  # ServerProtocol refuses a continuation with no message begun
        try:
            if self._text:
                # Checked as it comes (RFC 6455 section 8.1: fail fast on invalid UTF-8).
                parts.append(self._decoder.decode(data, frame.fin))
            else:
                parts.append(data)
        except UnicodeDecodeError as exc:
            self._fail(_INVALID_DATA, f"invalid UTF-8 in a text message: {exc.reason}")
            return False
        if frame.fin:
            self._parts = None
            self._decoder = None
            self._push("".join(parts) if self._text else b"".join(parts))
        return True

    def _push(self, message: str | bytes) -> None:
        # Hot path: a whole message for the app.
        self.stats.messages_in += 1
        waiter = self._waiter
        if waiter is not None:
            # The app waits in receive() with nothing queued: hand it over directly.
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        messages = self._messages
        if self._closing_sent and len(messages) >= self._max_queue:
            return  # we are closing and the app is behind: what matters now is the peer's close frame
        messages.append(message)
        if len(messages) >= self._max_queue and not self._read_paused and not self._closing_sent:
            # The app is not keeping up: leave the rest in the kernel's buffers (TCP tells the peer).
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        proto = self.proto
        if self._held:  # a frame cut short: ServerProtocol reports it as it reports any
            held, self._held = self._held, b""
            self._receive(held)
        proto.receive_eof()  # no close frame first: ServerProtocol records an abnormal closure
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.stats.connections_open -= 1
        self._set_code()
        stats = self.stats
        stats.open -= 1
        code = self.code or ABNORMAL
        stats.closes[code] = stats.closes.get(code, 0) + 1
        self._wake_reader()
        self.write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(ClientDisconnected("the WebSocket connection is closed"))
        on_closed, self.on_closed = self.on_closed, _nothing  # and the cycle <-> connection cycle is broken
        on_closed()
        ctx.connection_closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_deadline = self.ctx.monotonic() + self.ctx.write_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        self._write_deadline = 0.0
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------ for the app (via the ASGI cycle)

    @property
    def closed(self) -> bool:
        """No more messages can be sent: a close frame went out, or the connection is gone."""
        return self._lost or self.proto.state is not _OPEN

    @property
    def lost(self) -> bool:
        return self._lost

    def next_message(self) -> str | bytes | None:
        """The oldest unread message, or None if none is queued."""
        messages = self._messages
        if not messages:
            return None
        message = messages.popleft()
        if self._read_paused and len(messages) <= self._max_queue // 2 and not self._lost:
            self._read_paused = False
            self.transport.resume_reading()
        return message

    @property
    def ended(self) -> bool:
        """No more messages will come (a close frame came, the connection failed or is gone)."""
        return self.code is not None

    def wait_message(self) -> asyncio.Future[str | bytes | None]:
        """A future for the next message, to await once ``next_message()`` found none queued
        and the connection has not ``ended``: it gets the message (from ``_push``) or None
        when no more will come (``_wake_reader``).

        A plain future, not a coroutine: one frame less on every message's way to the app.
        If the app's task is cancelled, the cancelled future stays here until ``_push``
        (which then queues the message) or the next call replaces it.
        """
        waiter = self._waiter = self.ctx.loop.create_future()
        return waiter

    def send(self, data: str | bytes) -> None:
        """Write one message (hot path). Raises ClientDisconnected if it can no longer be sent."""
        proto = self.proto
        if self._lost or proto.state is not _OPEN:
            raise ClientDisconnected("the WebSocket connection is closed")
        if isinstance(data, str):
            payload = data.encode()
            heads = _TEXT_HEADS
        else:
            payload = data
            heads = _BINARY_HEADS
        n = len(payload)
        if proto.extensions:
            # permessage-deflate: websockets compresses and frames it.
            if heads is _TEXT_HEADS:
                proto.send_text(payload)
            else:
                proto.send_binary(payload)
            self._flush()
        else:
            # A server's frame without extensions is a head and the payload as is: writing
            # it here saves websockets' Frame object and its serializer's copies (~1 us a
            # message). ServerProtocol keeps no state about data frames it did not write.
            head = heads[n] if n < 126 else frame_head(heads[0][0] & 0x0F, n)
            self.transport.write(head + payload)
        self.bytes_out += n
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += n

    async def drained(self) -> None:
        """Wait while the transport holds more than ``write_buffer_size`` unsent bytes."""
        if self._lost:
            raise ClientDisconnected("the WebSocket connection is closed")
        if self.write_paused:
            fut = self.ctx.loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (no-op if it started already or the connection is gone)."""
        if self._lost or self.proto.state is not _OPEN:
            return
        self.proto.send_close(code, reason)
        self._flush()
        self._arm_close_timer()
        self._read_for_close()

    # ------------------------------------------------------------------ for the server

    def check_deadlines(self, now: float) -> None:
        """Called by the server about twice a second: write, close and keepalive timers."""
        if self._lost:
            return
        if self._write_deadline and self._write_deadline <= now:
            log.info("closing WebSocket from %s: the client did not read for %.0fs (write_timeout)",
                     self.peer, self.ctx.write_timeout)
            self.transport.abort()
            return
        if self._close_deadline:
            if self._close_deadline <= now:
                log.info("dropping WebSocket from %s: the closing handshake did not finish within %.0fs "
                         "(ws_close_timeout)", self.peer, self.ctx.settings.ws_close_timeout)
                self.transport.abort()
            return
        if self._drain_at and self._drain_at <= now:
            self._drain_at = 0.0
            self._close_for_shutdown()
            return
        if self._pong_deadline:
            if self._pong_deadline <= now:
                log.info("closing WebSocket from %s: no pong within %.0fs of a ping (ws_ping_timeout)",
                         self.peer, self.ctx.settings.ws_ping_timeout)
                self._fail(_INTERNAL_ERROR, "keepalive ping timeout")
            return
        interval = self.ctx.settings.ws_ping_interval
        if self._ping_at and self._ping_at <= now and interval and self.proto.state is _OPEN:
            self._ping_at = now + interval
            self._ping_payload = random.getrandbits(32).to_bytes(4, "big")
            self.proto.send_ping(self._ping_payload)
            self._flush()
            timeout = self.ctx.settings.ws_ping_timeout
            if timeout:
                self._pong_deadline = now + timeout

    def check_request_timeout(self, now: float, limit: float) -> None:
        """``request_timeout`` does not apply to a WebSocket (its keepalive pings do)."""

    def drain_for_shutdown(self) -> None:
        """Graceful shutdown: let the WebSocket run for ``ws_drain_timeout``, then close it.

        The close code is ``ctx.ws_close_code``: 1012 (Service Restart) for a
        reload or recycle, 1001 (Going Away) for a stop. Messages the app sent
        before go out first (the close frame is queued behind them).
        """
        drain = self.ctx.settings.ws_drain_timeout
        if drain > 0:
            self._drain_at = self.ctx.monotonic() + drain
        else:
            self._close_for_shutdown()

    def evict(self) -> bool:
        return False  # never idle in the HTTP sense: the app holds it open

    def force_close(self) -> None:
        """The shutdown timeout passed: a close frame if none went out yet, then drop the connection."""
        if not self._lost:
            self._close_for_shutdown()
            self.transport.abort()

    def _close_for_shutdown(self) -> None:
        code = self.ctx.ws_close_code
        self.close(code, "server restarting" if code == 1012 else "server shutting down")

    # ------------------------------------------------------------------ internals

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): a close frame, then drop TCP."""
        proto = self.proto
        if proto.state is _OPEN:
            self._fail_code = code
        proto.fail(code, reason)
        self._flush()
        self._arm_close_timer()
        self._read_for_close()
        self._set_code()
        self._wake_reader()

    def _read_for_close(self) -> None:
        """We sent a close frame: read on even if the app is behind, to see the peer's answer
        (or its EOF); from now on messages past ws_max_queue are dropped."""
        self._closing_sent = True
        if self._read_paused and not self._lost:
            self._read_paused = False
            self.transport.resume_reading()

    def _closing(self) -> None:
        """A close frame came: ServerProtocol echoed it (if we had not sent ours) and ends TCP."""
        self._set_code()
        self._wake_reader()

    def _flush(self) -> None:
        transport = self.transport
        for data in self.proto.data_to_send():
            if data:
                transport.write(data)
            else:
                # websockets' SEND_EOF: after the closing handshake (or a failure) the server
                # ends the TCP connection first (RFC 6455 section 7.1.1). After a failure the
                # peer may still be sending: a half-close then, since closing with unread input
                # makes the kernel send a reset, which can destroy the close frame before the
                # peer reads it. ServerProtocol discards what still comes; the peer's EOF (or
                # ws_close_timeout) ends the connection.
                if self.proto.close_rcvd is None and transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
                self._arm_close_timer()
                self._read_for_close()

    def _arm_close_timer(self) -> None:
        # Also bounds a close that waits for a peer that reads nothing to drain the buffer.
        if not self._close_deadline:
            self._close_deadline = self.ctx.monotonic() + self.ctx.settings.ws_close_timeout

    def _set_code(self) -> None:
        """The close code and reason the app's websocket.disconnect reports."""
        if self.code is not None:
            return
        proto = self.proto
        received = proto.close_rcvd
        if received is not None:
            # The peer's own code; 1005 if its close frame had none.
            self.code, self.reason = received.code, received.reason
        elif self._fail_code or (proto.parser_exc is not None and not isinstance(proto.parser_exc, EOFError)
                                 and proto.close_sent is not None):
            # We failed the connection over a protocol error: the app learns why.
            self.code = self._fail_code or proto.close_sent.code  # type: ignore[union-attr]
        elif self._lost or proto.state is State.CLOSED:
            self.code = ABNORMAL

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
