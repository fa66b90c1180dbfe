"""State shared by all connections of one engine: settings as plain attributes, stats, caches.

Protocols read these on every request, so the settings they need are copied
here as plain attributes (one attribute load instead of two).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from corral.engine.accesslog import make_access_logger
from corral.engine.contracts import CycleFactory, Exchange, ServedConnection, SimpleServer, WebSocketFactory
from corral.engine.proxy import trusted_peers
from corral.engine.settings import EngineSettings
from corral.engine.stats import EngineStats
from corral.engine.wire import default_headers


class InFlightRecorder(Protocol):
    """Where the engine notes the request each connection is serving, so that someone else
    can tell what a worker was doing when it died (``corral.worker.inflight`` implements it).

    ``take(client)`` gives a connection a byte offset in ``buf`` (-1: none free) and
    ``give_back(offset)`` returns it. Per request the engine calls
    ``pack_into(buf, offset, 1, method, target)`` before the app runs and sets
    ``buf[offset] = 0`` once the response is complete.
    """

    buf: Any
    pack_into: Callable[[Any, int, int, bytes, bytes], None]

    def take(self, client: tuple[str, int] | None) -> int: ...

    def give_back(self, offset: int) -> None: ...


class EngineContext:
    """What every connection of one engine shares (one per Server)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: Any, settings: EngineSettings,
                 cycle_class: CycleFactory, state: dict[str, Any]) -> None:
        self.loop = loop
        self.app = app
        self.settings = settings
        self.cycle_class = cycle_class
        self.state = state  # lifespan state; each request gets a shallow copy
        self.connections: set[ServedConnection] = set()
        # Every HTTP connection, in the order it last went idle (connected, or
        # finished a response): at max_connections the server closes the first
        # one that is idle now, to make room. One move_to_end() per response
        # (hot path) is a third of what a dict's pop and insert cost.
        self.idle: OrderedDict[ServedConnection, None] = OrderedDict()
        self.closing = 0  # connections closed to make room that are not gone yet
        self.tasks: set[asyncio.Task[Any]] = set()  # app tasks of requests that suspended
        self.draining = False
        # Announced drain (the supervisor's drain_delay): still accepting and serving, but every
        # response closes its connection, so clients reconnect through the load balancer to
        # another host. Read once per request head (protocol.on_headers_complete).
        self.close_keep_alive = False
        self.monotonic = time.monotonic
        self.stats = EngineStats(self._live_cycles)
        self.on_connection_closed: Callable[[], None] | None = None
        # Set by the Server: an interface calls set_saturated(True) when it cannot
        # run more requests (WSGI pool busy) and False when it can again.
        self.set_saturated: Callable[[bool], None] = lambda busy: None
        # Set by the Server when the interface answers simple requests itself
        # (contracts.SimpleServer; WSGI inline mode does).
        self.serve_simple: SimpleServer | None = None
        # Set by the Server: the cycle class of WebSocket handshakes (corral.engine.websocket),
        # or None to serve an Upgrade: websocket request as a plain HTTP request.
        self.websocket_class: WebSocketFactory | None = None
        # The close code of WebSockets open at shutdown: 1001 (Going Away), or 1012
        # (Service Restart) when Server.shutdown(restart=True).
        self.ws_close_code = 1001
        # Set by Server.record_in_flight(); read per request by the protocol (hot path).
        self.in_flight: InFlightRecorder | None = None
        self.in_flight_buf: Any = None
        self.in_flight_pack: Callable[[Any, int, int, bytes, bytes], None] | None = None

        s = settings
        self.max_request_line = s.max_request_line
        self.max_header_count = s.max_header_count
        self.max_header_size = s.max_header_size
        # What httptools may buffer for one request head before we give up on it.
        self.max_head_bytes = s.max_request_line + s.max_header_size + 4 * s.max_header_count + 1024
        self.max_body_size = s.max_body_size
        self.header_timeout = s.header_timeout
        self.keepalive_timeout = s.keepalive_timeout
        self.body_timeout = s.body_timeout
        self.write_timeout = s.write_timeout
        self.request_timeout = s.request_timeout
        self.body_buffer_size = s.body_buffer_size
        self.write_buffer_size = s.write_buffer_size
        self.root_path = s.root_path
        self.root_path_bytes = s.root_path.encode("utf-8")
        self.trusted = trusted_peers(s.forwarded_allow_ips, s.forwarded_headers)  # parsed when s was validated
        self.access_log: Callable[[Exchange], None] | None = None
        if s.access_log:
            self.access_log = make_access_logger(s.access_log_format)

        self.default_headers = b""
        self.date_line = b""
        self.server_line = b""
        self._date_second = -1
        self.refresh_headers()

    def refresh_headers(self) -> None:
        """Rebuild the cached Date/Server lines when the wall-clock second changed."""
        now = time.time()
        second = int(now)
        if second == self._date_second:
            return
        self._date_second = second
        s = self.settings
        self.date_line = default_headers(None, s.date_header, now)
        self.server_line = default_headers(s.server_header, False)
        self.default_headers = self.date_line + self.server_line

    def set_in_flight(self, recorder: InFlightRecorder | None) -> None:
        self.in_flight = recorder
        self.in_flight_buf = recorder.buf if recorder is not None else None
        self.in_flight_pack = recorder.pack_into if recorder is not None else None

    def connection_closed(self) -> None:
        if self.on_connection_closed is not None:
            self.on_connection_closed()

    def _live_cycles(self) -> list[Exchange]:
        live = []
        for conn in self.connections:
            cur = conn._cur
            if cur is not None and not cur.response_complete:
                live.append(cur)
        return live
