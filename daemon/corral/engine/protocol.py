"""HTTP/1.1 over one connection: httptools parsing, limits, timeouts, pipelining.

One :class:`HttpProtocol` per connection. It parses requests with httptools,
enforces the limits of :class:`~corral.engine.settings.EngineSettings`, and
hands each request to a *cycle* object, one per request, which runs the app and
writes the response. Requests on a connection are answered strictly in order,
one at a time (pipelined ones wait in a queue, with reading paused).

The contracts
=============

What a cycle must answer (``CycleHooks``), what this protocol offers it
(``Connection``), the interface adapter (``InterfaceAdapter``) and its optional
simple-request shortcut (``SimpleServer``) are ``typing.Protocol`` classes in
``corral.engine.contracts``, each method documented there. The base class
``corral.engine.cycle.Cycle`` implements the shared part of a cycle: body
buffering with flow control, response framing and validation, error responses.
A cycle class is constructed by the protocol as
``cls(conn, scope, keep_alive, expect_continue, body_expected)``.

WebSocket handshakes
====================

With ``ctx.websocket_class`` set (ASGI, ``ws: true``), a request whose Upgrade
header offers ``websocket`` gets that cycle class instead (it answers 400/426
itself for a malformed handshake); bytes that came behind its head go to its
``on_upgrade_data(data)``. Once it has written a 101 it calls
``switch_protocols(cycle, protocol)``: the transport and the connection's place
in ``ctx.connections`` pass to ``protocol`` (``corral.engine.websocket``).

Simple requests (an optional shortcut)
======================================

With ``ctx.serve_simple`` set (``contracts.SimpleServer``; WSGI inline mode), a
simple request is answered from on_headers_complete without a scope or a queued
cycle: the per-request hot path of hello-world style apps.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left as _bisect
from collections import deque
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote_to_bytes

import httptools
from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade

from corral.engine.contracts import CycleHooks, Headers, Scope, ServedConnection, UpgradeCycle
from corral.engine.proxy import apply_proxy_headers
from corral.engine.stats import DURATION_BUCKETS as _BUCKETS
from corral.engine.tls import tls_extension
from corral.engine.wire import ClientDisconnected, error_response

if TYPE_CHECKING:
    from corral.engine.context import EngineContext

log = logging.getLogger("corral.engine")

# Request header names the protocol inspects while parsing (hot path: a set lookup).
# Any of them but Host sends the request head through _check_head().
_H_HOST = b"host"
_H_EXPECT = b"expect"
_H_CL = b"content-length"
_H_TE = b"transfer-encoding"
_PROXY_HEADERS = frozenset((b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"))
_H_UPGRADE = b"upgrade"
_H_CONNECTION = b"connection"
_SPECIAL = frozenset((_H_HOST, _H_EXPECT, _H_CL, _H_TE, _H_UPGRADE, _H_CONNECTION)) | _PROXY_HEADERS

_METHODS = {m.encode(): m for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")}

# What the read deadline is for.
_NONE = 0
_HEADER = 1  # waiting for (the rest of) a request head
_KEEPALIVE = 2  # idle between requests
_BODY = 3  # the app waits for body bytes
_LINGER = 4  # an error response went out; draining the client's input before closing

# _head_extra while data_received runs: the head began in this read (after a
# request with a body), its bytes in the read not counted yet.
_HEAD_BEGAN = -1
_HEAD_AFTER_BODY = -2

_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20


class Reject(Exception):
    """Raised inside parser callbacks to refuse the request with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ErrorCycle:
    """A queued refusal: answered in order, after the requests before it."""

    __slots__ = ("conn", "status", "message")

    def __init__(self, conn: HttpProtocol, status: int, message: str) -> None:
        self.conn = conn
        self.status = status
        self.message = message

    def run(self) -> None:
        conn = self.conn
        conn._cur = None
        conn._queue.clear()
        conn._write_error(self.status, self.message)


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "ctx", "loop", "transport", "_parser", "_closed", "client", "server", "_trusted", "interface_state",
        "scheme", "tls",
        # current request head
        "_url", "_headers", "_ntrailers", "_hsize", "_hosts", "_special",
        "_in_head", "_head_extra", "_after_body",
        # requests
        "_cur", "_parsing", "_queue", "_driving", "_stop", "_last_request", "_upgrade", "_ws_handshake",
        # flow control and deadlines
        "_read_paused", "_body_reader_paused", "write_paused", "_drain_waiters",
        "_deadline", "_deadline_kind", "_write_deadline", "_linger_budget", "_eof", "_evicted",
        # this connection's slot in the in-flight table (ctx.in_flight); -1: not recorded
        "_rec",
    )

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._closed = False
        self.client: tuple[str, int] | None = None  # the peer (host, port); None for a unix socket
        self.server: tuple[str, int | None] | None = None  # our end: (host, port), or (path, None)
        self.interface_state: Any = None  # whatever the interface keeps per connection
        self.scheme = "http"  # "https" on a TLS listener (before any trusted proxy header)
        self.tls: dict[str, Any] | None = None  # on a TLS listener: the ASGI "tls" extension
        self._trusted = False
        self._url = b""
        self._headers: Headers = []
        self._ntrailers = 0
        self._hsize = 0
        self._hosts = 0
        self._special: list[tuple[bytes, bytes]] | None = None
        self._in_head = False
        self._head_extra = 0  # bytes of the current head read so far; < 0: it began in this read
        self._after_body = False  # the last request had a body (until the next one begins)
        self._cur: CycleHooks | None = None  # the request being answered
        self._parsing: CycleHooks | None = None  # the request whose body is being read
        self._queue: deque[CycleHooks | _ErrorCycle] = deque()  # requests waiting for their turn
        self._driving = False
        self._stop = False
        self._last_request = False
        self._upgrade = False
        self._ws_handshake = False  # the request is a WebSocket handshake, for ctx.websocket_class
        self._read_paused = False
        self._body_reader_paused = False
        self.write_paused = False  # the transport's buffer is full: writers await drain_waiter()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._deadline = 0.0
        self._deadline_kind = _NONE
        self._write_deadline = 0.0
        self._linger_budget = 0
        self._eof = False
        self._evicted = False  # closed to make room for a new connection
        self._rec = -1

    # ------------------------------------------------------------------ connection events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ctx = self.ctx
        # A stream transport: connect_accepted_socket() makes one for a SOCK_STREAM socket.
        self.transport = stream = cast(asyncio.Transport, transport)
        ctx.connections.add(self)
        stats = ctx.stats
        stats.connections_open += 1
        stats.connections_accepted += 1
        peer = transport.get_extra_info("peername")
        sockname = transport.get_extra_info("sockname")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (peer[0], peer[1])
            self._trusted = ctx.trusted.trusts(peer[0])
        else:  # unix socket
            self.client = None
            self._trusted = ctx.trusted.trusts(None)
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            self.server = (sockname[0], sockname[1])
        elif sockname:
            self.server = (sockname if isinstance(sockname, str) else sockname.decode("utf-8", "replace"), None)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # a TLS listener: the handshake is done
            self.scheme = "https"
            self.tls = tls_extension(ssl_object)
        stream.set_write_buffer_limits(high=ctx.write_buffer_size)
        if ctx.in_flight is not None:
            self._rec = ctx.in_flight.take(self.client)
        self._deadline = self.ctx.monotonic() + ctx.header_timeout
        self._deadline_kind = _HEADER
        ctx.idle[self] = None  # silent so far: the newest idle connection
        if ctx.draining:
            stream.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.idle.pop(self, None)
        if self._evicted:
            ctx.closing -= 1
        ctx.stats.connections_open -= 1
        if self._rec >= 0:
            ctx.in_flight.give_back(self._rec)  # type: ignore[union-attr]  # a slot is taken only from a recorder
            self._rec = -1
        seen = set()
        for cycle in (self._cur, self._parsing, *self._queue):
            if cycle is not None and not isinstance(cycle, _ErrorCycle) and id(cycle) not in seen:
                seen.add(id(cycle))
                cycle.on_disconnect()
        self._queue.clear()
        self.write_paused = False
        self._wake_drain(ClientDisconnected("the client closed the connection"))
        ctx.connection_closed()

    def eof_received(self) -> bool | None:
        # The client closed its side. Like nginx (499) and uvicorn, take that as
        # the client going away: the app sees http.disconnect. What is already in
        # the write buffer (say, an error response) is still flushed by close().
        self._eof = True
        return False

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        # Hot path.
        if self._stop:
            if self._deadline_kind == _LINGER:
                self._linger_budget -= len(data)
                if self._linger_budget < 0:
                    self._close()
            return
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._on_upgrade(data, exc)
        except HttpParserCallbackError as exc:
            reason = exc.__context__
            if isinstance(reason, Reject):
                self._reject(reason.status, reason.message)
            else:
                log.error("internal error while parsing a request", exc_info=reason or exc)
                self._reject(500, "Internal Server Error")
        except HttpParserError as exc:
            if not self._stop:
                self._reject_parse_error(exc)
        if self._in_head:
            # httptools buffers a header line until it is complete, without a
            # callback: bound what a client can make it hold, by counting the
            # bytes of this request head read so far.
            count = self._head_extra
            if count >= 0:  # the whole read belongs to the head that was in progress before it
                count += len(data)
            else:  # the head began in this read (after other requests, maybe)
                count = self._head_bytes_in(data, count == _HEAD_AFTER_BODY)
            self._head_extra = count
            if count > self.ctx.max_head_bytes and not self._stop:
                if not self._headers and len(self._url) >= self.ctx.max_request_line:
                    self._reject(414, "URI Too Long")
                else:
                    self._reject(431, "Request Header Fields Too Large")
        if self._queue and self._cur is None and not self._driving:
            self._drive()

    def _head_bytes_in(self, data: bytes, after_body: bool) -> int:
        """How many bytes at the end of ``data`` belong to the request head that began in it.

        The read ends inside that head, which holds no empty line (CRLF CRLF
        would have ended it). Before it came the end of an earlier head, the
        CRLF CRLF that ends a chunked body, or empty lines llhttp skips: so the
        head starts right after the last CRLF CRLF, or (none in this read) after
        the leading CR and LF bytes; the start of its method may have come in
        earlier reads, which counted no head then. A Content-Length body ends
        in any bytes, so after a body this returns what the parser reported of
        the head (its target and header fields): a lower bound that is exact up
        to the field in progress, which the next read counts whole.
        """
        if after_body:
            return len(self._url) + self._hsize
        end = data.rfind(b"\r\n\r\n")
        start = end + 4 if end >= 0 else len(data) - len(data.lstrip(b"\r\n"))
        method = self._parser.get_method() + b" "
        earlier = 0  # bytes of "METHOD " in earlier reads
        while not data.startswith(method[earlier:], start):
            earlier += 1
        return len(data) - start + earlier

    def _reject_parse_error(self, exc: HttpParserError) -> None:
        text = str(exc)
        if "HTTP version" in text:
            self._reject(505, "HTTP Version Not Supported")
        else:
            self._reject(400, f"Bad Request: {text}")

    def _on_upgrade(self, data: bytes, exc: HttpParserUpgrade) -> None:
        # The request was fully parsed (llhttp stops at the end of its head);
        # bytes after it belong to another protocol: never parse them as HTTP.
        self._stop = True
        self.transport.pause_reading()  # type: ignore[union-attr]  # set in connection_made
        self._read_paused = True
        if self._ws_handshake and self._queue:
            # A WebSocket client may send its first frames right behind the handshake.
            offset = exc.args[0] if exc.args else len(data)
            if offset < len(data):
                # _check_head queued it: the cycle of a WebSocket handshake.
                cast(UpgradeCycle, self._queue[-1]).on_upgrade_data(data[offset:])

    # ------------------------------------------------------------------ parser callbacks (hot path)

    # httptools calls on_url first for every request (there is no on_message_begin
    # callback: one Python call less per request), then on_header per field,
    # on_headers_complete, on_body per chunk and on_message_complete.

    def on_url(self, url: bytes) -> None:
        if self._in_head:  # the target arrived in pieces
            url = self._url + url
        else:  # a new request begins
            self._in_head = True
            if self._after_body:
                self._head_extra = _HEAD_AFTER_BODY
                self._after_body = False
            else:
                self._head_extra = _HEAD_BEGAN
            self._headers = []
            self._hsize = 0
            self._hosts = 0
            self._special = None
            # A keep-alive deadline running now becomes the head's header_timeout
            # at the next sweep (check_deadlines), not here: one step less per request.
        if len(url) > self.ctx.max_request_line:
            raise Reject(414, f"URI Too Long (limit {self.ctx.max_request_line} bytes)")
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            self._on_trailer(name, value)
            return
        ctx = self.ctx
        headers = self._headers
        self._hsize += len(name) + len(value)
        if self._hsize > ctx.max_header_size or len(headers) >= ctx.max_header_count:
            self._headers_too_large()
        name = name.lower()
        if value and value[-1] in (32, 9):
            value = value.rstrip(b" \t")  # OWS is not part of the value (llhttp keeps trailing OWS)
        headers.append((name, value))
        if name in _SPECIAL:
            if name == _H_HOST:
                self._hosts += 1
            elif self._special is None:
                self._special = [(name, value)]
            else:
                self._special.append((name, value))

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        # A trailer (after on_headers_complete) never reaches scope["headers"],
        # but counts against the same limits as the header fields before it.
        ctx = self.ctx
        self._ntrailers += 1
        self._hsize += len(name) + len(value)
        if self._hsize > ctx.max_header_size or len(self._headers) + self._ntrailers > ctx.max_header_count:
            self._headers_too_large()

    def _headers_too_large(self) -> None:
        ctx = self.ctx
        raise Reject(431, f"Request Header Fields Too Large (limits: {ctx.max_header_count} "
                          f"fields, {ctx.max_header_size} bytes)")

    def on_headers_complete(self) -> None:
        # Hot path.
        self._in_head = False  # further on_header calls are trailers
        ctx = self.ctx
        parser = self._parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        # close_keep_alive (an announced drain) turns every request into its connection's last.
        keep_alive = parser.should_keep_alive() and not ctx.close_keep_alive
        special = self._special
        plain = keep_alive and special is None and self._hosts == 1 and method != "CONNECT"
        if plain:
            # The common case: one Host, none of the headers that need checks.
            # llhttp keeps a connection alive by default only for HTTP/1.1 (the
            # only x.y with y > 0 it accepts) and no Connection header was sent:
            # skip get_http_version(), which formats a new string on every call.
            version = "1.1"
            body_expected = expect = False
        else:
            version, keep_alive, body_expected, expect = self._check_head(method, keep_alive)

        url = self._url
        rec = self._rec
        if rec >= 0 and self._cur is None and not self._queue:
            # Noted before the app runs: a worker that dies in it leaves the request behind for
            # the supervisor to log (corral.worker.inflight). A pipelined request is noted when
            # its turn comes (_next_or_idle).
            ctx.in_flight_pack(ctx.in_flight_buf, rec, 1, raw_method, url)  # type: ignore[misc]  # set with in_flight
        if url[0] == 47 and 35 not in url:  # "/" first, no "#" (int membership is a memchr)
            if 63 in url:  # "?"
                raw_path, _, query = url.partition(b"?")
            else:
                raw_path, query = url, b""
            serve_simple = ctx.serve_simple
            if (plain and serve_simple is not None and self._cur is None and not self._queue
                    and not self._stop and not self._read_paused and not ctx.draining):
                # A simple request on an idle connection: the interface answers it
                # right here, without a scope or a queued cycle (see serve_simple).
                ctx.stats.requests_total += 1
                serve_simple(self, method, raw_path, query, self._headers)
                return
        elif url == b"*":
            if method != "OPTIONS":
                raise Reject(400, "Bad Request: request target '*' is only valid with OPTIONS")
            raw_path, query = b"*", b""
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise Reject(400, "Bad Request: invalid request target") from None
            raw_path = parsed.path or b"/"
            query = parsed.query or b""

        if not keep_alive:
            self._last_request = True
        scope = self._scope(method, version, raw_path, query)
        if special is not None and self._trusted and any(n in _PROXY_HEADERS for n, _ in special):
            apply_proxy_headers(scope, ctx.trusted)
        if self._ws_handshake:
            cycle = self._websocket_cycle(scope)
        else:
            cycle = ctx.cycle_class(self, scope, keep_alive, expect, body_expected)
        ctx.stats.requests_total += 1
        if body_expected:
            self._parsing = cycle
        self._queue.append(cycle)
        self._deadline = 0.0  # no read deadline while the app runs (a body's is set when awaited)
        self._deadline_kind = _NONE

    def _websocket_cycle(self, scope: Scope) -> CycleHooks:
        """The cycle of a WebSocket handshake (_check_head found one: ctx.websocket_class is set)."""
        websocket_class = self.ctx.websocket_class
        assert websocket_class is not None, "a WebSocket handshake is recognised only with websocket_class"
        # keep_alive False: the connection closes after any answer but a 101.
        return websocket_class(self, scope, False, False, False)

    def _scope(self, method: str, version: str, raw_path: bytes, query: bytes) -> Scope:
        """The ASGI scope of the request just parsed (hot path), before any proxy-header correction."""
        ctx = self.ctx
        if 37 in raw_path:  # "%"
            path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
        else:
            path = raw_path.decode("ascii")  # llhttp refuses non-ASCII bytes in a target
        root_path = ctx.root_path
        if root_path:
            path = root_path + path
            raw_path = ctx.root_path_bytes + raw_path
        state = ctx.state
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": version,
            "method": method,
            "scheme": self.scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": root_path,
            "headers": self._headers,
            "client": self.client,
            "server": self.server,
            "state": state.copy() if state else {},
        }
        if self.tls is not None:
            scope["extensions"] = {"tls": self.tls}
        return scope

    def _check_head(self, method: str, keep_alive: bool) -> tuple[str, bool, bool, bool]:
        """Checks a plain HTTP/1.1 request does not need: framing, Expect, Host, version, Upgrade.

        Returns (http_version, keep_alive, body_expected, expect_continue).
        """
        ctx = self.ctx
        parser = self._parser
        version = parser.get_http_version()
        body_expected = False
        expect = False
        upgrade = False
        self._ntrailers = 0
        special = self._special
        if special is not None:
            te = clen = expect_value = None
            for name, value in special:
                if name == _H_CL:
                    clen = value
                elif name == _H_TE:
                    te = value
                elif name == _H_EXPECT:
                    expect_value = value
                elif name == _H_UPGRADE:
                    upgrade = True
            if te is not None:
                if version == "1.0":
                    raise Reject(400, "Bad Request: Transfer-Encoding in an HTTP/1.0 request")
                body_expected = True  # llhttp refused any coding but a final "chunked"
            if clen is not None:
                length = int(clen)  # llhttp accepts digits only
                if ctx.max_body_size is not None and length > ctx.max_body_size:
                    raise Reject(413, f"Content Too Large (limit {ctx.max_body_size} bytes)")
                body_expected = length > 0
            if expect_value is not None and version != "1.0":  # 1.0 clients get no 1xx (RFC 9110 10.1.1)
                if expect_value.lower() != b"100-continue":
                    raise Reject(417, "Expectation Failed")
                expect = body_expected
        if version != "1.1":
            if version != "1.0":
                raise Reject(505, f"HTTP Version Not Supported (HTTP/{version}; use 1.0 or 1.1)")
            if self._hosts > 1:
                raise Reject(400, "Bad Request: more than one Host header")
        elif self._hosts != 1:
            raise Reject(400, "Bad Request: missing Host header" if not self._hosts
                         else "Bad Request: more than one Host header")
        if upgrade and special is not None and method != "CONNECT" and ctx.websocket_class is not None \
                and ctx.websocket_class.wants(special):
            # A WebSocket handshake: checked (400/426) and answered by the WebSocket cycle.
            if body_expected:
                raise Reject(400, "Bad Request: a WebSocket handshake must not have a body")
            self._ws_handshake = True
            return version, False, False, False  # closes after any answer but a 101
        if (upgrade or method == "CONNECT") and parser.should_upgrade():
            if method == "CONNECT":
                raise Reject(501, "Not Implemented: CONNECT")
            if body_expected:
                raise Reject(400, "Bad Request: an Upgrade request with a body is not supported")
            # Served as plain HTTP (no protocol switch is supported); the
            # connection closes after the response.
            self._upgrade = True
            keep_alive = False
        return version, keep_alive, body_expected, expect

    def on_body(self, body: bytes) -> None:
        # A body comes only after on_headers_complete made its cycle the parsing one.
        cycle: CycleHooks = self._parsing  # type: ignore[assignment]
        cycle.body_received += len(body)
        limit = self.ctx.max_body_size
        if limit is not None and cycle.body_received > limit:
            raise Reject(413, f"Content Too Large (limit {limit} bytes)")
        cycle.feed_body(body)
        if self._deadline_kind == _BODY:
            self._deadline = self.ctx.monotonic() + self.ctx.body_timeout

    def on_message_complete(self) -> None:
        cycle = self._parsing
        if cycle is not None:
            self._after_body = True  # for the head-size count of the next request
            self._parsing = None
            cycle.end_body()
            if self._deadline_kind == _BODY:
                self._deadline = 0.0
                self._deadline_kind = _NONE
        if self._last_request:
            # Bytes after a request that ends the connection are never answered.
            self._stop = True

    # ------------------------------------------------------------------ running requests

    def _drive(self) -> None:
        """Run queued requests, in order, one at a time (hot path)."""
        queue = self._queue
        self._driving = True
        try:
            while self._cur is None and queue:
                # A queued refusal (_ErrorCycle) is current only inside its run(), which clears it.
                cycle = self._cur = queue.popleft()  # type: ignore[assignment]
                cycle.run()
        finally:
            self._driving = False
        if queue and not self._read_paused and not self._closed:
            # Pipelined requests are waiting: read no more until they are answered.
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]  # set in connection_made

    def response_done(self, cycle: CycleHooks) -> None:
        """The cycle's response is complete (hot path): account, then next request or idle."""
        if cycle is not self._cur:
            return
        self._cur = None
        ctx = self.ctx
        if self._rec >= 0:
            ctx.in_flight_buf[self._rec] = 0  # no longer in flight
        # EngineStats.observe(), inlined (hot path).
        stats = ctx.stats
        now = ctx.monotonic()
        duration = now - cycle.start
        stats.responses[cycle.status // 100] += 1
        stats.duration_counts[_bisect(_BUCKETS, duration)] += 1
        stats.duration_sum += duration
        if ctx.access_log is not None:
            ctx.access_log(cycle)
        if (cycle.keep_alive and not self._queue and self._parsing is None and not self._in_head
                and not (self._closed or self._eof or self._read_paused)):
            # The usual keep-alive case: idle until the next request (hot path).
            self._deadline = now + ctx.keepalive_timeout
            self._deadline_kind = _KEEPALIVE
            ctx.idle.move_to_end(self)
            return
        self._next_or_idle(cycle)

    def switch_protocols(self, cycle: CycleHooks, protocol: asyncio.Protocol) -> None:
        """Hand the connection to ``protocol`` once ``cycle`` wrote a 101 (a WebSocket accepted).

        The 101 is accounted as the request's response (stats, access log). The
        connection then leaves the HTTP bookkeeping: ``protocol`` takes this
        object's place in ``ctx.connections`` and the transport calls it from now
        on. It answers the server's per-connection calls (``check_deadlines``,
        ``check_request_timeout``, ``drain_for_shutdown``, ``force_close``,
        ``evict``, ``_cur``) and, when the connection ends, takes it out of
        ``ctx.connections``, decrements ``stats.connections_open`` and calls
        ``ctx.connection_closed()``.
        """
        ctx = self.ctx
        self._cur = None
        self._closed = self._stop = True  # nothing here touches the transport again
        self._queue.clear()
        self._deadline = 0.0
        self._deadline_kind = _NONE
        ctx.idle.pop(self, None)
        if self._rec >= 0:
            ctx.in_flight.give_back(self._rec)  # type: ignore[union-attr]  # a slot is taken only from a recorder
            self._rec = -1
        ctx.stats.observe(cycle.status, ctx.monotonic() - cycle.start)
        if ctx.access_log is not None:
            ctx.access_log(cycle)
        ctx.connections.discard(self)
        # It answers the server's per-connection calls (above): a ServedConnection.
        ctx.connections.add(cast(ServedConnection, protocol))
        self.transport.set_protocol(protocol)  # type: ignore[union-attr]  # set in connection_made

    def finish_simple(self, head: bytes, body: bytes, add_length: bool, status: int, start: float) -> None:
        """Answer the simple request being served with one whole response, then idle (hot path).

        For ``serve_simple``: ``head`` is the status line and the app's header
        lines, each ending in CRLF, with no Connection, Date or Server line;
        ``add_length`` adds a Content-Length for ``body`` (else ``head`` has one
        that matches it). The response keeps the connection alive; it is
        accounted as response_done() accounts a cycle's.
        """
        ctx = self.ctx
        if add_length:
            head += b"content-length: %d\r\n" % len(body)
        self.transport.write(b"".join((head, ctx.default_headers, b"\r\n", body)))  # type: ignore[union-attr]  # set in connection_made
        if self._rec >= 0:
            ctx.in_flight_buf[self._rec] = 0  # no longer in flight
        # As in response_done(): EngineStats.observe(), inlined (a call costs ~2% here).
        stats = ctx.stats
        now = ctx.monotonic()
        duration = now - start
        stats.responses[status // 100] += 1
        stats.duration_counts[_bisect(_BUCKETS, duration)] += 1
        stats.duration_sum += duration
        self._deadline = now + ctx.keepalive_timeout
        self._deadline_kind = _KEEPALIVE
        ctx.idle.move_to_end(self)

    def adopt(self, cycle: CycleHooks, method: str, raw_path: bytes, query: bytes) -> None:
        """Make a cycle that began in ``serve_simple`` this connection's current request.

        ``cycle`` is initialised in place as on_headers_complete would have
        created it for this plain request (its scope: HTTP/1.1, keep-alive, no
        body); from here on it is an ordinary cycle.
        """
        # Initialised in place: serve_simple made it bare (object.__new__), with no __init__ run.
        cycle.__init__(self, self._scope(method, "1.1", raw_path, query), True, False, False)  # type: ignore[misc]  # on purpose
        self._cur = cycle
        self._deadline = 0.0
        self._deadline_kind = _NONE

    def _next_or_idle(self, cycle: CycleHooks) -> None:
        """After a response, the cases response_done() does not handle inline."""
        ctx = self.ctx
        if not cycle.keep_alive or self._closed:
            self._close()
            return
        # Answered without reading the whole body: drop what is buffered, which also resumes
        # reading if the full buffer had paused it; while the body still arrives, the rest is
        # dropped as it comes (Cycle.feed_body). Also when the body is complete: it may have
        # arrived, over body_buffer_size, in the read that ended it, and reading would stay paused.
        cycle.take_body()
        if self._eof and not self._queue:
            self._close()
            return
        if self._queue:
            if self._rec >= 0:
                self._note_next()
            if not self._driving:
                # We may be inside the previous request's task (its last send()):
                # start the next request from a plain loop callback instead.
                self.loop.call_soon(self._drive)
            return
        if self._read_paused and not self._stop and not self._body_reader_paused:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]  # set in connection_made
        if not self._in_head:
            self._deadline = self.ctx.monotonic() + ctx.keepalive_timeout
            self._deadline_kind = _KEEPALIVE
            ctx.idle.move_to_end(self)
        elif self._deadline_kind != _HEADER:
            self._deadline = self.ctx.monotonic() + ctx.header_timeout
            self._deadline_kind = _HEADER

    def _note_next(self) -> None:
        """A pipelined request is about to run: note it in the in-flight table."""
        cycle = self._queue[0]
        if isinstance(cycle, _ErrorCycle):  # a queued refusal: no app runs for it
            return
        scope = cycle.scope
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        ctx = self.ctx
        ctx.in_flight_pack(ctx.in_flight_buf, self._rec, 1,  # type: ignore[misc]  # set with in_flight
                           scope["method"].encode("latin-1"), target)

    # ------------------------------------------------------------------ refusing requests

    def _reject(self, status: int, message: str) -> None:
        """Refuse the request being parsed: answer ``status`` after earlier requests, then close."""
        self._stop = True
        self._in_head = False
        ctx = self.ctx
        parsing = self._parsing
        if status != 500:
            log.info("refused request from %s: %d %s", self._peer_text(), status, message)
        if parsing is not None:
            # The refused request already has a cycle (body too large, bad chunk, bad trailer).
            self._parsing = None
            parsing.keep_alive = False
            if parsing is self._cur:
                parsing.on_disconnect()  # the app gets http.disconnect; its sends fail
                if parsing.head_sent:
                    self._close()
                    return
                parsing.head_sent = parsing.response_started = parsing.response_complete = True
                parsing.status = status
                self._cur = None
                self._write_error(status, message)
                return
            if parsing not in self._queue:
                return  # already answered; the connection closes after that response
            self._queue.remove(parsing)
        else:
            ctx.stats.requests_total += 1
        self._queue.append(_ErrorCycle(self, status, message))
        if self._cur is None and not self._driving:
            self._drive()

    def _write_error(self, status: int, message: str) -> None:
        """Write a refusal and close gracefully: half-close, then drain the client's input briefly."""
        ctx = self.ctx
        transport = self.transport
        if self._closed or transport is None or transport.is_closing():
            return
        transport.write(error_response(status, message, ctx.default_headers))
        if self._rec >= 0:
            ctx.in_flight_buf[self._rec] = 0  # refused: no app runs for it any more
        ctx.stats.observe(status, 0.0)
        # Lingering close: a client still sending (say, a large upload) would get
        # a TCP reset that can destroy our response before it reads it.
        self._stop = True
        self._deadline = self.ctx.monotonic() + _LINGER_SECONDS
        self._deadline_kind = _LINGER
        self._linger_budget = _LINGER_BYTES
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                self._close()
        else:
            self._close()

    def _peer_text(self) -> str:
        if self.client is None:
            return "unix socket"
        return f"{self.client[0]}:{self.client[1]}"

    # ------------------------------------------------------------------ output and flow control

    def write(self, data: bytes) -> None:
        # Hot path.
        self.transport.write(data)  # type: ignore[union-attr]  # set in connection_made

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_deadline = self.ctx.monotonic() + self.ctx.write_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        self._write_deadline = 0.0
        self._wake_drain(None)

    def drain_waiter(self) -> asyncio.Future[None] | None:
        if self._closed:
            fut = self.loop.create_future()
            fut.set_exception(ClientDisconnected("the client closed the connection"))
            return fut
        if not self.write_paused:
            return None
        fut = self.loop.create_future()
        self._drain_waiters.append(fut)
        return fut

    def _wake_drain(self, exc: BaseException | None) -> None:
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = []
            for fut in waiters:
                if not fut.done():
                    if exc is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(exc)
        cur = self._cur
        if cur is not None:
            cur.on_drain()

    def pause_reading_for(self, cycle: CycleHooks) -> None:
        """The cycle's body buffer is full."""
        self._body_reader_paused = True
        if not self._read_paused and not self._closed:
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]  # set in connection_made

    def resume_reading_for(self, cycle: CycleHooks) -> None:
        """The app took the buffered body."""
        self._body_reader_paused = False
        if self._read_paused and not self._queue and not self._closed and not self._stop:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]  # set in connection_made

    def waiting_for_body(self, cycle: CycleHooks, waiting: bool) -> None:
        """Arm (or disarm) the body-read idle timeout while the app waits for body bytes."""
        if waiting:
            if not cycle.body_complete:
                self._deadline = self.ctx.monotonic() + self.ctx.body_timeout
                self._deadline_kind = _BODY
                if self._read_paused and not self._queue and not self._stop and not self._closed:
                    self._read_paused = False
                    self._body_reader_paused = False
                    self.transport.resume_reading()  # type: ignore[union-attr]  # set in connection_made
        elif self._deadline_kind == _BODY:
            self._deadline = 0.0
            self._deadline_kind = _NONE

    # ------------------------------------------------------------------ timeouts and shutdown

    def check_deadlines(self, now: float) -> None:
        """Called by the server about twice a second with ``time.monotonic()``."""
        if self._closed:
            return
        if self._write_deadline and self._write_deadline <= now:
            log.info("closing connection from %s: the client did not read the response for %.0fs "
                     "(write_timeout)", self._peer_text(), self.ctx.write_timeout)
            self._abort()
            return
        kind = self._deadline_kind
        if kind == _KEEPALIVE and self._in_head:
            # A request head began while the keep-alive deadline ran (on_url leaves
            # the switch to us): header_timeout counts from this sweep, at most a
            # tick late, and an idle deadline never cuts a request short.
            self._deadline = now + self.ctx.header_timeout
            self._deadline_kind = _HEADER
            return
        if not self._deadline or self._deadline > now:
            return
        self._deadline = 0.0
        self._deadline_kind = _NONE
        if kind == _KEEPALIVE:
            self._close()
        elif kind == _HEADER:
            if self._in_head:
                log.info("closing connection from %s: request headers not received within %.0fs "
                         "(header_timeout)", self._peer_text(), self.ctx.header_timeout)
                self._in_head = False
                self._stop = True
                self.ctx.stats.requests_total += 1
                self._write_error(408, "Request Timeout")
                self._close()
            else:
                self._close()
        elif kind == _BODY:
            log.info("closing connection from %s: no request body bytes for %.0fs (body_timeout)",
                     self._peer_text(), self.ctx.body_timeout)
            cur = self._cur
            self._stop = True
            if cur is not None and not cur.head_sent:
                cur.abort_response(408, "Request Timeout")
            self._close()
        else:  # _LINGER
            self._abort()

    def check_request_timeout(self, now_monotonic: float, limit: float) -> None:
        cur = self._cur
        if cur is not None and cur.start and now_monotonic - cur.start > limit and not cur.response_complete:
            cur.on_request_timeout()

    def is_idle(self) -> bool:
        return (self._cur is None and not self._queue and self._parsing is None and not self._in_head)

    def evict(self) -> bool:
        """Close this connection to make room for a new one, if it is idle; False if it is not.

        Idle: between requests (kept alive) or silent since it connected, with
        nothing left to send. A connection still sending its last response is
        not closed: the client is reading it (write_timeout deals with one that
        is not).
        """
        transport = self.transport
        if (self._evicted or self._closed or not self.is_idle() or transport is None
                or transport.get_write_buffer_size()):
            return False
        self._evicted = True
        self.ctx.closing += 1
        self._close()
        return True

    def drain_for_shutdown(self) -> None:
        """Graceful shutdown: close now if idle, else close after the current response."""
        if self._closed:
            return
        if self.is_idle():
            self._close()
            return
        self._last_request = True
        for cycle in (self._cur, self._parsing):
            if cycle is not None:
                cycle.keep_alive = False
        if self._cur is not None and not self._in_head:
            # Pipelined requests after the current one will not be answered.
            self._queue.clear()
            self._stop = True

    def _close(self) -> None:
        self._stop = True
        self._queue.clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()

    def force_close(self) -> None:
        self._abort()

