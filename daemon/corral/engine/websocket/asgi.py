"""The ASGI ``websocket`` protocol (spec 2.4): one handshake, the app, and the connection after it.

The HTTP protocol creates a :class:`WebSocketCycle` instead of an HTTP cycle
for a request whose ``Upgrade`` header offers ``websocket``. When its turn
comes, the cycle checks the handshake (``handshake.check``: 400/426 without
calling the app), then runs ``app(scope, receive, send)`` with a ``websocket``
scope. Until the app accepts, the cycle is an HTTP exchange like any other (its
refusals are HTTP responses: 403 for ``websocket.close``, any status through
the ``websocket.http.response`` extension, 500 for an exception). On
``websocket.accept`` it writes the 101 and hands the transport to a
:class:`~corral.engine.websocket.connection.WebSocketConnection`.

After the accept: an exception in the app closes the connection with 1011, an
app that returns closes it with 1000, and ``send()`` once the connection is
closed raises ``ClientDisconnected`` (an ``OSError``, as the spec asks).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

from corral.engine.cycle import ClientDisconnected, Cycle
from corral.engine.websocket import handshake
from corral.engine.websocket.connection import ABNORMAL, WebSocketConnection
from corral.engine.wire import InvalidResponse

log = logging.getLogger("corral.engine")

_ASGI = {"version": "3.0", "spec_version": "2.4"}
# Close codes an endpoint may send (RFC 6455 section 7.4; 1004-1006 and 1015 are never sent).
_SENDABLE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))
# Exceptions that mean "the peer left", by class name (the engine imports no framework):
# ours, Starlette's (FastAPI's) WebSocketDisconnect, and its HTTP ClientDisconnect.
_DISCONNECT_NAMES = frozenset(("ClientDisconnected", "WebSocketDisconnect", "ClientDisconnect"))


class Outcome(enum.Enum):
    """What became of a handshake (the ``ws.handshakes`` counters)."""

    ACCEPTED = "accepted"
    DENIED = "denied"  # the app refused: websocket.close before accept, or websocket.http.response
    FAILED = "failed"  # no 101 for another reason: malformed, an app error, draining, client gone


class Phase(enum.IntEnum):
    HANDSHAKE = 0  # the app decides: accept, refuse (403), or answer over HTTP
    RESPONSE = 1  # the app answers with websocket.http.response.*
    ACCEPTED = 2  # 101 sent: frames both ways
    DONE = 3  # refused, answered over HTTP, or gone before the app answered


def _caused_by_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_caused_by_disconnect(e) for e in exc.exceptions)
    node: BaseException | None = exc
    for _ in range(16):
        if node is None:
            return False
        if type(node).__name__ in _DISCONNECT_NAMES:
            return True
        node = node.__cause__ or node.__context__
    return False


def _check_close(message: dict[str, Any]) -> tuple[int, str]:
    code = message.get("code", 1000)
    reason = message.get("reason") or ""
    if type(code) is not int or not (code in _SENDABLE or 3000 <= code <= 4999):
        raise InvalidResponse(f"websocket.close code {code!r} cannot be sent: use 1000-1003, 1007-1014 "
                              "or 3000-4999 (RFC 6455 section 7.4)")
    if not isinstance(reason, str) or len(reason.encode()) > 123:
        raise InvalidResponse("websocket.close reason must be a string of at most 123 bytes in UTF-8 "
                              "(a close frame's payload is at most 125 bytes)")
    return code, reason


class WebSocketCycle(Cycle):
    """One WebSocket handshake and, once accepted, its connection (see the module docstring)."""

    __slots__ = ("phase", "handshake", "ws", "ws_scope", "task", "_connect_sent", "_early", "_timed_out",
                 "_counted")

    def __init__(self, conn: Any, scope: dict[str, Any], keep_alive: bool,
                 expect_continue: bool, body_expected: bool) -> None:
        # keep_alive is False: the connection closes after any answer but a 101.
        Cycle.__init__(self, conn, scope, keep_alive, expect_continue, body_expected)
        self.phase = Phase.HANDSHAKE
        self.handshake: handshake.Handshake | None = None
        self.ws: WebSocketConnection | None = None
        self.ws_scope: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self._connect_sent = False
        self._early = b""
        self._timed_out = False
        self._counted = False  # the handshake's outcome is in the stats

    @staticmethod
    def wants(headers: Any) -> bool:
        """For the HTTP protocol: whether a request with an Upgrade header is a WebSocket handshake."""
        return handshake.wants_websocket(headers)

    def on_upgrade_data(self, data: bytes) -> None:
        """Bytes that came right behind the handshake: the client's first frames."""
        self._early = data

    # ------------------------------------------------------------------ the handshake

    def run(self) -> None:
        ctx = self.ctx
        self.start = ctx.monotonic()
        scope = self.scope
        if ctx.draining:
            # A client that reconnects lands on a worker that will keep it.
            self._count(Outcome.FAILED)
            self.abort_response(503, "Service Unavailable: the server is shutting down")
            return
        result = handshake.check(scope["method"], scope["http_version"], scope["headers"], ctx.settings)
        if isinstance(result, handshake.Refusal):
            log.info("refused WebSocket handshake from %s for %s: %d %s", self._peer(), scope["path"],
                     result.status, result.message)
            self.phase = Phase.DONE
            self._count(Outcome.FAILED)
            self.start_response(result.status, ((b"content-type", b"text/plain; charset=utf-8"),
                                                *result.headers))
            self.write_body((result.message + "\n").encode(), False)
            return
        self.handshake = result
        self.ws_scope = {
            "type": "websocket",
            "asgi": _ASGI,
            "http_version": scope["http_version"],
            "scheme": "wss" if scope["scheme"] == "https" else "ws",  # after trusted proxy headers
            "path": scope["path"],
            "raw_path": scope["raw_path"],
            "query_string": scope["query_string"],
            "root_path": scope["root_path"],
            "headers": scope["headers"],
            "client": scope["client"],
            "server": scope["server"],
            "subprotocols": list(result.subprotocols),
            "state": scope["state"],
            "extensions": {"websocket.http.response": {}, **scope.get("extensions", {})},  # "tls" on TLS
        }
        task = self.task = ctx.loop.create_task(self._main())
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)

    def _count(self, outcome: Outcome) -> None:
        """Count the handshake's outcome once (accepted, denied by the app, or failed)."""
        if self._counted:
            return
        self._counted = True
        stats = self.ctx.stats.ws
        if outcome is Outcome.ACCEPTED:
            stats.accepted += 1
        elif outcome is Outcome.DENIED:
            stats.denied += 1
        else:
            stats.failed += 1

    def _peer(self) -> str:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else "unix socket"

    async def _main(self) -> None:
        scope = self.ws_scope
        try:
            await self.ctx.app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._app_cancelled()
        # App code may raise anything, SystemExit too: none of it may stop the worker's loop.
        except BaseException as exc:  # noqa: BLE001 - app code may raise anything
            self._app_failed(exc)
        else:
            self._app_returned()
        self._count(Outcome.FAILED)  # ended with no answer of its own: the engine answered

    # ------------------------------------------------------------------ the app's outcome

    def _app_returned(self) -> None:
        phase = self.phase
        if phase is Phase.ACCEPTED:
            self.ws.close(1000)  # type: ignore[union-attr]
        elif phase is Phase.HANDSHAKE and not self.disconnected:
            log.error("ASGI app returned without accepting or refusing the WebSocket %s; answering 500",
                      self.scope["path"])
            self.abort_response(500, "Internal Server Error")
        elif phase is Phase.RESPONSE and not self.response_complete:
            log.error("ASGI app returned before finishing its websocket.http.response for %s; "
                      "closing the connection", self.scope["path"])
            self.abort_response()
        if phase is not Phase.ACCEPTED:
            self.phase = Phase.DONE

    def _app_failed(self, exc: BaseException) -> None:
        ws = self.ws
        gone = self.disconnected if ws is None else ws.ended
        if gone and _caused_by_disconnect(exc):
            log.debug("WebSocket %s: the client left; the app ended with %s", self.scope["path"],
                      type(exc).__name__)
        elif self.phase is Phase.ACCEPTED:
            log.error("Exception in ASGI application (WebSocket %s); closing it with 1011",
                      self.scope["path"], exc_info=exc)
        else:
            log.error("Exception in ASGI application (WebSocket handshake %s)", self.scope["path"],
                      exc_info=exc)
        if ws is not None:
            ws.close(1011)
        else:
            self.abort_response(500, "Internal Server Error")

    def _app_cancelled(self) -> None:
        if self.ws is not None:
            self.ws.close(1001)
        elif self._timed_out:
            self.abort_response(504, "Gateway Timeout: the WebSocket handshake took longer than "
                                     "request_timeout")
        else:
            self.abort_response(503, "Service Unavailable: the server is shutting down")

    def on_request_timeout(self) -> None:
        """``request_timeout`` applies until the app accepts or refuses, not to the connection after."""
        task = self.task
        if self.phase is not Phase.HANDSHAKE or task is None or task.done():
            return
        if self._timed_out:  # the app swallowed the cancellation
            self.abort_response(504, "Gateway Timeout")
            return
        self._timed_out = True
        log.warning("WebSocket handshake %s exceeded request_timeout (%ss); cancelling it",
                    self.scope["path"], self.ctx.request_timeout)
        task.cancel()

    # ------------------------------------------------------------------ receive

    async def receive(self) -> dict[str, Any]:
        ws = self.ws
        if ws is not None:
            # Hot path: a message for an accepted WebSocket.
            message = ws.next_message()
            if message is None:
                if ws.code is None:
                    message = await ws.wait_message()
                if message is None:
                    return {"type": "websocket.disconnect", "code": ws.code or ABNORMAL, "reason": ws.reason}
            if type(message) is str:
                return {"type": "websocket.receive", "text": message}
            return {"type": "websocket.receive", "bytes": message}
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        # Not accepted: nothing comes but the client leaving (or the end of a refusal).
        while not self.disconnected and self.phase is Phase.HANDSHAKE:
            waiter = self._waiter = self.ctx.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return {"type": "websocket.disconnect", "code": ABNORMAL, "reason": ""}

    # ------------------------------------------------------------------ send

    async def send(self, message: dict[str, Any]) -> None:
        mtype = message["type"]
        if mtype == "websocket.send":
            # Hot path.
            ws = self.ws
            if ws is None:
                raise InvalidResponse("websocket.send before websocket.accept")
            text = message.get("text")
            if text is not None:
                if type(text) is not str or message.get("bytes") is not None:
                    raise InvalidResponse("websocket.send needs exactly one of 'text' (str) or 'bytes'")
                ws.send(text)
            else:
                data = message.get("bytes")
                if data is None or isinstance(data, str):
                    raise InvalidResponse("websocket.send needs exactly one of 'text' (str) or 'bytes'")
                ws.send(data)
            if ws.write_paused:
                await ws.drained()  # the peer reads slower than the app sends
            return
        if mtype == "websocket.accept":
            self._accept(message)
        elif mtype == "websocket.close":
            self._close(message)
        elif mtype == "websocket.http.response.start":
            if self.phase is not Phase.HANDSHAKE:
                raise InvalidResponse(f"websocket.http.response.start is only valid before websocket.accept "
                                      f"(the WebSocket is {self.phase.name.lower()})")
            if self.disconnected:
                raise ClientDisconnected("the client closed the connection")
            self.start_response(message["status"], message.get("headers", ()))
            self.phase = Phase.RESPONSE
            self._count(Outcome.DENIED)
        elif mtype == "websocket.http.response.body":
            if self.phase is not Phase.RESPONSE:
                raise InvalidResponse("websocket.http.response.body before websocket.http.response.start")
            more = message.get("more_body", False)
            self.write_body(message.get("body", b""), more)
            if not more:
                self.phase = Phase.DONE
            else:
                waiter = self.drain()
                if waiter is not None:
                    await waiter
        else:
            raise InvalidResponse(f"unexpected ASGI message type {mtype!r} for a WebSocket; expected "
                                  "websocket.accept, websocket.send, websocket.close or "
                                  "websocket.http.response.start/body")

    def _accept(self, message: dict[str, Any]) -> None:
        if self.phase is not Phase.HANDSHAKE:
            raise InvalidResponse(f"websocket.accept is only valid once, before any response "
                                  f"(the WebSocket is {self.phase.name.lower()})")
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection before the WebSocket was accepted")
        hs = self.handshake
        assert hs is not None
        ctx = self.ctx
        conn = self.conn
        head = handshake.accept_head(hs, message.get("subprotocol"), message.get("headers"),
                                     ctx.default_headers)
        transport = conn.transport
        assert transport is not None  # the connection is open: self.disconnected was checked above
        transport.write(head)
        self.status = 101
        self.response_started = self.head_sent = self.response_complete = True
        self.phase = Phase.ACCEPTED
        self._count(Outcome.ACCEPTED)
        ws = self.ws = WebSocketConnection(ctx, transport, handshake.opened(hs, message.get("subprotocol")),
                                           self._peer(), self._on_closed)
        self.handshake = None
        conn.switch_protocols(self, ws)
        # The HTTP protocol (and its parser) is done with: let it go, since an
        # idle WebSocket may live for days and there may be thousands.
        self.conn = None  # type: ignore[assignment]
        early, self._early = self._early, b""
        ws.start(early)

    def _close(self, message: dict[str, Any]) -> None:
        phase = self.phase
        if phase is Phase.ACCEPTED:
            code, reason = _check_close(message)
            self.ws.close(code, reason)  # type: ignore[union-attr]
        elif phase is Phase.HANDSHAKE:
            # Refused before the accept (ASGI spec): 403, and no upgrade.
            self.phase = Phase.DONE
            self._count(Outcome.DENIED)
            self.abort_response(403, "Forbidden")
            self.on_body_event()  # a receive() waiting since the connect now gets the disconnect
        elif phase is Phase.RESPONSE:
            raise InvalidResponse("websocket.close after websocket.http.response.start: finish the "
                                  "response with websocket.http.response.body instead")
        # DONE: refused or answered already; the close changes nothing.

    def _on_closed(self) -> None:
        """The accepted connection is gone: its access-log line, with its close code and duration."""
        access_log = self.ctx.access_log
        ws = self.ws
        if access_log is not None and ws is not None:
            # The handshake's line said 101; this one has the close code where the status goes
            # (1000-4999: never an HTTP status), the bytes sent, and the whole duration.
            self.status = ws.code or ABNORMAL
            self.bytes_sent = ws.bytes_out
            access_log(self)
