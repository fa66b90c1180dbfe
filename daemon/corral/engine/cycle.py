"""One request/response exchange: the part shared by the ASGI and WSGI cycles.

The protocol (``corral.engine.protocol``) parses requests and creates one cycle
per request; the interface subclass (``ASGICycle``, ``WSGICycle``) runs the app.
This base class owns everything that must be identical for both interfaces:
request-body buffering with flow control, response framing (Content-Length,
chunked, close-delimited, no body for HEAD/204/304), header validation, error
responses, and completion. It implements ``corral.engine.contracts.CycleHooks``
for the HTTP protocol, which it reaches through ``contracts.Connection``.

Everything here runs on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from corral.engine.contracts import (
    HEAD_CLOSE,
    HEAD_CONN,
    HEAD_DATE,
    HEAD_SERVER,
    HEAD_TE,
    Connection,
    Scope,
)
from corral.engine.wire import (
    CONTINUE_100,
    STATUS_LINES,
    ClientDisconnected,
    InvalidResponse,
    check_name,
    check_value,
    error_response,
    names_cache,
    values_cache,
)

if TYPE_CHECKING:
    from corral.engine.context import EngineContext

__all__ = ["ClientDisconnected", "Cycle", "DisconnectCause", "InvalidResponse", "disconnect_cause"]

log = logging.getLogger("corral.engine")

_NAMES = names_cache()
_VALUES = values_cache()

# Response header names the engine looks at (the rest pass through untouched).
_RESP_SPECIAL = frozenset((b"content-length", b"transfer-encoding", b"connection", b"date", b"server"))
# contracts.HeadFlag bits, as plain ints (hot path: see HeadFlag).
_F_TE = HEAD_TE
_F_CLOSE = HEAD_CLOSE
_F_CONN = HEAD_CONN
_F_DATE = HEAD_DATE
_F_SERVER = HEAD_SERVER

# Framing of the response body, decided when the head is written.
_UNDECIDED = 0
_LENGTH = 1
_CHUNKED = 2
_UNTIL_CLOSE = 3
_NO_BODY = 4


# Exceptions that mean "the client left", by class name: ours, and Starlette's
# (FastAPI's) ClientDisconnect, which it raises from our OSError or when
# receive() says http.disconnect. Names, so the engine imports no framework.
_DISCONNECT_NAMES = frozenset(("ClientDisconnected", "ClientDisconnect"))


class DisconnectCause(IntEnum):
    """How an app's exception relates to its client leaving."""

    NONE = 0  # unrelated: an application error
    IS = 1  # the exception is the client leaving
    AFTER = 2  # raised while handling the client leaving (it is in the exception's chain)


def disconnect_cause(exc: BaseException) -> DisconnectCause:
    """Whether an app's exception comes from the client leaving."""
    if isinstance(exc, BaseExceptionGroup):
        # A task group's: caused by the disconnect only if every member is.
        causes = [disconnect_cause(e) for e in exc.exceptions]
        return DisconnectCause.NONE if DisconnectCause.NONE in causes else max(causes)
    cause = DisconnectCause.IS
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen and len(seen) < 16:
        if isinstance(node, ClientDisconnected) or type(node).__name__ in _DISCONNECT_NAMES:
            return cause
        seen.add(id(node))
        node = node.__cause__ or node.__context__
        cause = DisconnectCause.AFTER
    return DisconnectCause.NONE


def _raised_at(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised, for a log line without its traceback."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"response body must be bytes, not {type(data).__name__}")


# Validated response heads: (status, header pairs) -> (status line and header
# lines, Content-Length or None, HeadFlag bits). Bounded, and only short heads:
# apps that echo request data in a header cannot grow it without limit.
_HEADS: dict[tuple[int, tuple[Any, ...]], tuple[bytes, int | None, int]] = {}
_HEADS_LIMIT = 4096
_HEAD_MEMO_BYTES = 1024


def _encode_head(status: int, headers: tuple[Any, ...]) -> tuple[bytes, int | None, int]:
    """Validate an ASGI app's response head; return (head bytes, Content-Length, HeadFlag bits)."""
    names = _NAMES
    values = _VALUES
    parts = [STATUS_LINES[status]]
    length = None
    flags = 0
    try:
        for name, value in headers:
            lname = names.get(name)
            if lname is None:
                lname = check_name(name)
            if value not in values:
                check_value(name, value)
            if lname in _RESP_SPECIAL:
                if lname == b"content-length":
                    if not value.isdigit():
                        raise InvalidResponse(f"invalid Content-Length {value!r}: must be digits")
                    n = int(value)
                    if length is not None:
                        if n != length:
                            raise InvalidResponse(f"conflicting Content-Length values {length} and {n}")
                        continue
                    length = n
                    if status == 204:
                        continue  # RFC 9110 8.6: never sent with 204
                elif lname == b"transfer-encoding":
                    flags |= _F_TE  # framing is the server's job; the app's header is dropped
                    continue
                elif lname == b"connection":
                    flags |= _F_CONN
                    if b"close" in value.lower():
                        flags |= _F_CLOSE
                elif lname == b"date":
                    flags |= _F_DATE
                else:
                    flags |= _F_SERVER
            parts += (name, b": ", value, b"\r\n")
    except (TypeError, ValueError) as exc:
        raise InvalidResponse(f"response headers must be an iterable of (name, value) byte-string "
                              f"pairs: {exc}") from None
    if flags & _F_TE and length is not None:
        raise InvalidResponse("the app sent both Content-Length and Transfer-Encoding")
    return b"".join(parts), length, flags


class Cycle:
    """Base class of a request/response cycle (``contracts.CycleHooks``); a subclass implements ``run()``.

    What a subclass calls, each documented below. Request body: ``take_body()``,
    ``body_buffered``, ``body_complete``, ``disconnected``, ``want_body()`` before
    waiting for body bytes (100 Continue, body timeout) and ``body_wait_over()``
    after. Response: ``start_response()`` (or ``set_encoded_head()`` for a head the
    interface encoded itself), ``write_body()``, ``drain()``, ``abort_response()``;
    state in ``response_started``, ``head_sent``, ``response_complete``, ``status``,
    ``bytes_sent`` and ``keep_alive`` (set False to close after the response).
    """

    __slots__ = (
        "conn", "ctx", "scope", "keep_alive", "expect_continue", "start",
        # request body
        "_chunks", "_buffered", "body_complete", "body_received", "disconnected", "_body_paused",
        "_waiter",
        # response
        "status", "response_started", "head_sent", "response_complete", "bytes_sent",
        "_head", "_length", "_flags", "_framing", "_remaining",
    )

    def __init__(self, conn: Connection, scope: Scope, keep_alive: bool,
                 expect_continue: bool, body_expected: bool) -> None:
        # Hot path: only what is read before the app starts the response; the
        # response fields are set by start_response().
        self.conn = conn
        self.ctx: EngineContext = conn.ctx
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.start = 0.0
        self._chunks: list[bytes] | None = None
        self._buffered = 0
        self.body_complete = not body_expected
        self.body_received = 0
        self.disconnected = False
        self._body_paused = False
        self._waiter: asyncio.Future[None] | None = None  # a reader waiting for body (or the end)
        self.status = 0
        self.response_started = False
        self.head_sent = False
        self.response_complete = False
        self.bytes_sent = 0
        self._framing = _UNDECIDED

    # ------------------------------------------------------------------ subclass hooks

    def run(self) -> None:
        """Start the application for this request (called once, on the loop, in order)."""
        raise NotImplementedError

    def on_body_event(self) -> None:
        """Body bytes arrived, the body ended, the client went away, or the response completed.

        Default: wake ``self._waiter`` (a future a reader awaits), if any. Called on
        response completion only while ``_waiter`` is set.
        """
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_request_timeout(self) -> None:
        """``request_timeout`` passed and the response is not complete: stop the app if possible."""

    def on_drain(self) -> None:
        """The connection's write buffer drained below the low-water mark (or the client left)."""

    # ------------------------------------------------------------------ request body (protocol side)

    def feed_body(self, data: bytes) -> None:
        """The protocol hands over request-body bytes (hot path for uploads)."""
        if self.response_complete:
            return  # the app answered without reading the rest: discard it
        if self._chunks is None:
            self._chunks = [data]
        else:
            self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.ctx.body_buffer_size and not self._body_paused:
            self._body_paused = True
            self.conn.pause_reading_for(self)
        self.on_body_event()

    def end_body(self) -> None:
        """The protocol saw the end of the request body."""
        self.body_complete = True
        self.on_body_event()

    def on_disconnect(self) -> None:
        """The connection is gone (called by the protocol once)."""
        self.disconnected = True
        self.on_body_event()
        self.on_drain()

    # ------------------------------------------------------------------ request body (app side)

    @property
    def body_buffered(self) -> int:
        return self._buffered

    def take_body(self) -> bytes:
        """All buffered body bytes (possibly b""); resumes reading if it was paused."""
        chunks = self._chunks
        if not chunks:  # None or empty
            data = b""
        elif len(chunks) == 1:
            data = chunks[0]
            chunks.clear()
        else:
            data = b"".join(chunks)
            chunks.clear()
        self._buffered = 0
        if self._body_paused:
            self._body_paused = False
            self.conn.resume_reading_for(self)
        return data

    def want_body(self) -> None:
        """The app is about to wait for body bytes: send 100 Continue if owed, arm the body timeout."""
        if self.expect_continue:
            self.expect_continue = False
            if not self.head_sent and not self.disconnected:
                self.conn.write(CONTINUE_100)
        self.conn.waiting_for_body(self, True)

    def body_wait_over(self) -> None:
        self.conn.waiting_for_body(self, False)

    # ------------------------------------------------------------------ response

    def start_response(self, status: int, headers: Iterable[Any]) -> None:
        """Validate and record the response head; it is written with the first body bytes.

        Raises InvalidResponse (nothing is written) for a bad status or header, so
        the caller's error path can still answer 500.
        """
        # Hot path: an app usually sends the same few heads over and over, so a
        # validated head is memoised whole, keyed by (status, header pairs).
        if self.response_started:
            raise InvalidResponse("the response was already started (http.response.start sent twice)")
        if type(status) is not int or not 200 <= status <= 599:
            raise InvalidResponse(f"invalid response status {status!r}: must be an int from 200 to 599 "
                                  "(1xx interim responses are the server's job)")
        try:
            items = tuple(headers)
        except TypeError as exc:
            raise InvalidResponse(f"response headers must be an iterable of (name, value) byte-string "
                                  f"pairs: {exc}") from None
        try:
            key = (status, items)
            head = _HEADS.get(key)
        except TypeError:  # unhashable pairs (lists): validate them, never memoise
            key = None
            head = None
        if head is None:
            head = _encode_head(status, items)
            if key is not None and len(_HEADS) < _HEADS_LIMIT and len(head[0]) <= _HEAD_MEMO_BYTES:
                _HEADS[key] = head
        self._head, self._length, flags = head
        self._flags = flags
        self.status = status
        if flags & _F_CLOSE:
            self.keep_alive = False
        self.response_started = True

    def set_encoded_head(self, status: int, head: bytes, length: int | None, flags: int,
                         close: bool) -> None:
        """Record a head an interface validated and encoded itself (WSGI does).

        ``head`` is the status line and the header lines, each ending in CRLF
        (no blank line), ``length`` the declared Content-Length or None, ``flags``
        the ``contracts.HeadFlag`` bits (as a plain int) for the headers the engine
        looks at, ``close`` whether the app asked to close.
        """
        self._head = head
        self._length = length
        self._flags = flags
        self.status = status
        if close:
            self.keep_alive = False
        self.response_started = True

    @property
    def is_head(self) -> bool:
        method: str = self.scope["method"]
        return method == "HEAD"

    def write_body(self, body: bytes, more: bool) -> None:
        """Frame and write body bytes; ``more=False`` completes the response (hot path).

        Raises ClientDisconnected if the client is gone, InvalidResponse if the
        body breaks the declared Content-Length (the connection is then closed
        and nothing beyond the declared length is sent).
        """
        if type(body) is not bytes:
            body = _as_bytes(body)
        if self.response_complete:
            raise InvalidResponse("response body sent after the response was complete")
        if self.disconnected and not (self._framing == _NO_BODY and self._length is not None):
            # The app learns that the client left (a stream must stop), except
            # for a response without a body (HEAD, 204, 304) whose head is out
            # and that declared a length: its finite body is dropped as it
            # would have been anyway.
            raise ClientDisconnected("the client closed the connection")
        if not self.response_started:
            raise InvalidResponse("response body sent before the response was started")
        framing = self._framing
        if framing == _UNDECIDED:
            self._write_first(body, more)
        elif framing == _LENGTH:
            n = len(body)
            if n > self._remaining:
                self._framing_error(f"response body longer than its Content-Length {self._length}")
            self._remaining -= n
            if n:
                self.conn.write(body)
                self.bytes_sent += n
            if not more and self._remaining:
                self._framing_error(f"response body shorter than its Content-Length {self._length} "
                                    f"({(self._length or 0) - self._remaining} bytes sent)")
        elif framing == _CHUNKED:
            n = len(body)
            if n:
                data = b"%x\r\n" % n + body + (b"\r\n" if more else b"\r\n0\r\n\r\n")
                self.bytes_sent += n
            else:
                data = b"" if more else b"0\r\n\r\n"
            if data:
                self.conn.write(data)
        elif framing == _UNTIL_CLOSE and body:
            self.conn.write(body)
            self.bytes_sent += len(body)
        # _NO_BODY: HEAD, 204, 304: body bytes are dropped.
        if not more:
            # The response is complete (hot path).
            self.response_complete = True
            self.conn.response_done(self)
            if self._waiter is not None:
                self.on_body_event()  # the waiting reader now gets "disconnect" (the exchange is over)

    def declared_rest(self) -> int | None:
        """Body bytes still due by the declared Content-Length; None: no length was declared."""
        if self._length is None:
            return None
        if self._framing == _LENGTH:
            return self._remaining
        if self._framing == _NO_BODY:
            return 0  # HEAD, 204, 304: nothing is ever written
        return self._length  # the head is not written yet

    def drop_body(self, more: bool) -> None:
        """Accept body bytes without writing them (the client left); ``more=False`` completes the
        response, as write_body() would have."""
        if self.response_complete:
            raise InvalidResponse("response body sent after the response was complete")
        if not self.response_started:
            raise InvalidResponse("response body sent before the response was started")
        if not more:
            self.response_complete = True
            self.conn.response_done(self)
            if self._waiter is not None:
                self.on_body_event()

    def _write_first(self, body: bytes, more: bool) -> None:
        """Write the head, together with the first body bytes in one write (hot path)."""
        status = self.status
        length = self._length
        scope = self.scope
        extra = b""  # header lines the engine adds: framing, connection
        if status == 204 or status == 304 or scope["method"] == "HEAD":
            framing = _NO_BODY
        elif length is not None:
            framing = _LENGTH
            n = len(body)
            if n > length or (not more and n != length):
                # Nothing is written yet: the error path can still answer 500.
                self.response_started = False
                self._raise_framing(f"response body {'longer' if n > length else 'shorter'} than its "
                                    f"Content-Length {length} ({n} bytes)")
            self._remaining = length - n  # read only under _LENGTH framing, so set only here
        elif not more:
            # The whole body is here: a Content-Length beats chunked framing for every client.
            framing = _LENGTH
            extra = b"content-length: %d\r\n" % len(body)
        elif scope["http_version"] != "1.0":
            framing = _CHUNKED
            extra = b"transfer-encoding: chunked\r\n"
        else:
            framing = _UNTIL_CLOSE  # HTTP/1.0 has no chunked coding: the close ends the body
            self.keep_alive = False
        flags = self._flags
        ctx = self.ctx
        if self.keep_alive:
            if ctx.draining or (self.expect_continue and not self.body_complete):
                # Draining, or the client still withholds a body we never asked for: close after this.
                self.keep_alive = False
                if not flags & _F_CLOSE:
                    extra += b"connection: close\r\n"
            elif not flags & _F_CONN and scope["http_version"] == "1.0":
                extra += b"connection: keep-alive\r\n"
        elif not flags & _F_CLOSE:
            extra += b"connection: close\r\n"
        if flags & (_F_DATE | _F_SERVER):
            if not flags & _F_DATE:
                extra += ctx.date_line
            if not flags & _F_SERVER:
                extra += ctx.server_line
        else:
            extra += ctx.default_headers
        self._framing = framing
        self.head_sent = True
        if framing == _NO_BODY or not body:
            data = self._head + extra + (b"\r\n0\r\n\r\n" if framing == _CHUNKED and not more else b"\r\n")
        elif framing == _CHUNKED:
            data = b"".join((self._head, extra, b"\r\n%x\r\n" % len(body), body,
                             b"\r\n" if more else b"\r\n0\r\n\r\n"))
            self.bytes_sent = len(body)
        else:
            data = b"".join((self._head, extra, b"\r\n", body))
            self.bytes_sent = len(body)
        # The transport itself: one call less than conn.write() (hot path).
        self.conn.transport.write(data)  # type: ignore[union-attr]  # set: the connection is open

    def _raise_framing(self, message: str) -> None:
        """Log the app's framing error once and raise it to the app."""
        full = f"{message} ({self.scope.get('method')} {self.scope.get('path')}); closing the connection"
        log.error("%s", full)
        exc = InvalidResponse(full)
        exc.logged = True
        raise exc

    def _framing_error(self, message: str) -> None:
        """The app broke its framing after the head went out: close the connection, tell the app."""
        self.keep_alive = False
        self.response_complete = True
        self.conn.response_done(self)
        self._raise_framing(message)

    def log_disconnect(self, exc: BaseException) -> bool:
        """Log an app's exception that the client's leaving caused; False if it is not one.

        A client that leaves (a closed tab, ``curl -I``) is normal: the
        ``ClientDisconnected`` that send() raised, or the framework's own
        exception for it, is logged at debug; an exception raised while
        handling one gets one info line, with no traceback. Call it only once
        ``self.disconnected`` is true.
        """
        cause = disconnect_cause(exc)
        if cause == DisconnectCause.NONE:
            return False
        scope = self.scope
        if cause == DisconnectCause.IS:
            log.debug("client went away during %s %s (%s)", scope["method"], scope["path"], type(exc).__name__)
        else:
            log.info("client went away during %s %s; the app then raised %s: %s (at %s)", scope["method"],
                     scope["path"], type(exc).__name__, exc, _raised_at(exc))
        return True

    def abort_response(self, status: int = 500, message: str = "Internal Server Error") -> None:
        """End this exchange after an error: answer ``status`` if nothing was written, else close."""
        if self.response_complete:
            return
        self.keep_alive = False
        if self.head_sent or self.disconnected:
            self.response_complete = True
            self.conn.response_done(self)
            if self._waiter is not None:
                self.on_body_event()
            return
        self.status = status
        self.head_sent = True
        self.response_started = True
        data = error_response(status, message, self.ctx.default_headers)
        self.conn.write(data)
        self.response_complete = True
        self.conn.response_done(self)
        if self._waiter is not None:
            self.on_body_event()

    # ------------------------------------------------------------------ flow control for writers

    def drain(self) -> asyncio.Future[None] | None:
        """A future to await while the client is not reading fast enough, or None if no wait is needed."""
        return self.conn.drain_waiter()
