"""The engine's public face: :class:`Server` accepts on listening sockets and serves an app.

The sockets are already bound and listening; the engine never calls bind() or
listen() on them (that would override systemd's ``Backlog=`` and trips SELinux
policies) and never closes them: whoever created them owns them. Accepting is
done with our own ``add_reader`` + ``accept()`` loop, which makes pausing and
resuming (accept balancing, the ``max_connections`` cap) a matter of adding or
removing a reader.

At ``max_connections`` a new connection takes the place of the one idle
longest (kept alive between requests, or silent since it connected), as nginx
does: idle connections from one client must not lock out the others. Only when
every connection is busy does the worker stop accepting, until one closes or
goes idle.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from corral.engine.context import EngineContext, InFlightRecorder
from corral.engine.contracts import InterfaceAdapter
from corral.engine.lifespan import LifespanError
from corral.engine.protocol import HttpProtocol
from corral.engine.settings import EngineSettings
from corral.engine.stats import EngineStats

log = logging.getLogger("corral.engine")

_TICK = 0.5  # seconds between deadline sweeps (and Date refreshes)
_ACCEPT_BATCH = 16  # connections accepted per readiness event, so one worker does not hog a burst
_ACCEPT_ERRORS_BACKOFF = 0.5  # pause after EMFILE/ENFILE/ENOBUFS/ENOMEM instead of spinning
_ROOM_TRIES = 32  # connections looked at (the longest idle first) to make room for one new one
_ROOM_LOG_INTERVAL = 60.0  # seconds between log lines about connections closed to make room

__all__ = ["LifespanError", "Server"]


def _make_interface(app: Any, settings: EngineSettings, interface: str) -> InterfaceAdapter:
    # Imported on demand: a worker loads only the interface it serves.
    if interface == "asgi":
        from corral.engine.asgi import ASGIInterface
        return ASGIInterface(app, settings)
    if interface == "wsgi":
        from corral.engine.wsgi import WSGIInterface
        return WSGIInterface(app, settings)
    raise ValueError(f"interface must be 'asgi' or 'wsgi', got {interface!r}")


class Server:
    """Serve ``app`` over HTTP/1.1 on sockets handed to :meth:`serve`.

    Usage (inside a running event loop, normally uvloop)::

        server = Server(app, EngineSettings(), interface="asgi")
        await server.startup()        # lifespan startup; raises LifespanError
        await server.serve([sock])    # returns at once; accepting runs in the loop
        ...
        await server.shutdown(30.0)   # graceful drain, then lifespan shutdown
    """

    def __init__(self, app: Any, settings: EngineSettings | None = None, interface: str = "asgi") -> None:
        self.app = app
        self.settings = settings if settings is not None else EngineSettings()
        self.interface = interface
        self._adapter = _make_interface(app, self.settings, interface)
        self._ctx: EngineContext | None = None
        self._sockets: list[socket.socket] = []
        self._reading: set[int] = set()
        self._paused_by_caller = False
        self._paused_by_capacity = False
        self._paused_by_interface = False  # WSGI: every pool thread is busy
        self._backoff: asyncio.TimerHandle | None = None
        self._pending = 0  # accepted sockets whose transports are being set up
        # ... of which TLS handshakes in progress: a drain waits for the others, never for a client
        # slow to finish its handshake (it has sent no request yet: it is as good as idle)
        self._handshakes = 0
        self._tls: dict[int, ssl.SSLContext] = {}  # listening fd -> context, for the TLS listeners
        self._ticker: asyncio.TimerHandle | None = None
        self._closed_event: asyncio.Event | None = None
        self._serving = False
        self._shut_down = False
        self._room_made = 0  # idle connections closed for new ones since the last log line
        self._room_log_at = 0.0  # monotonic time of the next such log line
        self._stats_placeholder = EngineStats()
        # Called after each accepted connection; may call pause_accepting() (accept balancing).
        self.on_accept: Callable[[], None] | None = None
        self._in_flight: InFlightRecorder | None = None

    # ------------------------------------------------------------------ properties

    @property
    def stats(self) -> EngineStats:
        """Counters for the worker's heartbeat (see ``corral.engine.stats``)."""
        return self._ctx.stats if self._ctx is not None else self._stats_placeholder

    @property
    def max_connections(self) -> int:
        return self.settings.max_connections

    @property
    def accepting(self) -> bool:
        return bool(self._reading)

    @property
    def connection_count(self) -> int:
        """Connections open or being set up (what accept balancing counts)."""
        return (len(self._ctx.connections) if self._ctx is not None else 0) + self._pending

    # ------------------------------------------------------------------ lifecycle

    def record_in_flight(self, recorder: InFlightRecorder | None) -> None:
        """Note each request in ``recorder`` while it is served (before serve(): connections
        opened earlier are not recorded)."""
        self._in_flight = recorder
        if self._ctx is not None:
            self._ctx.set_in_flight(recorder)

    async def startup(self) -> None:
        """Run the interface's startup (ASGI lifespan). Raises LifespanError with the app's message."""
        await self._adapter.startup()

    def _context(self) -> EngineContext:
        if self._ctx is None:
            loop = asyncio.get_running_loop()
            self._ctx = EngineContext(loop, self.app, self.settings, self._adapter.cycle_class,
                                      self._adapter.state)
            self._ctx.on_connection_closed = self._on_connection_closed
            self._ctx.set_in_flight(self._in_flight)
            self._ctx.set_saturated = self._set_saturated
            settings = self.settings
            if not settings.access_log and not settings.root_path:
                # The access log and root_path need the request's scope: no shortcut then.
                self._ctx.serve_simple = self._adapter.serve_simple
            if settings.ws:
                self._ctx.websocket_class = self._adapter.websocket_class
        return self._ctx

    async def serve(self, socks: list[socket.socket], tls: ssl.SSLContext | None = None) -> None:
        """Start accepting connections on already-listening sockets; returns immediately.

        With ``tls`` (``corral.engine.tls.build_context``) they speak HTTPS.
        """
        ctx = self._context()
        for sock in socks:
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"socket {sock!r} is not a stream socket")
            if tls is not None:
                self._tls[sock.fileno()] = tls
            # Accepting must never block the loop when another worker wins the race.
            sock.setblocking(False)
            self._sockets.append(sock)
        self._serving = True
        self._start_ticker(ctx)
        self._update_accepting()

    def serve_connection(self, conn: socket.socket) -> None:
        """Serve one connected stream socket as if it had just been accepted (plain HTTP).

        The worker's gate hands over its end of a socket pair this way (corral.worker.probe): a
        connection nobody else can reach, served by the same protocol, app and deadlines as
        traffic. Returns at once; ``shutdown()`` closes it with the others.
        """
        ctx = self._context()
        self._start_ticker(ctx)
        conn.setblocking(False)
        self._start_connection(ctx, conn, None)

    def _start_ticker(self, ctx: EngineContext) -> None:
        if self._ticker is None:
            self._ticker = ctx.loop.call_later(_TICK, self._tick)

    async def begin_drain(self) -> None:
        """Start a graceful drain without closing idle connections yet (then call shutdown()).

        Stops accepting and, once the connections accepted just before are set up,
        answers every further response with ``Connection: close``. A client about to
        reuse a keep-alive connection gets one last answer instead of a close racing
        its request; ``shutdown()`` later closes what stayed idle.
        """
        self._serving = False
        self._stop_reading()
        self._close_listeners()
        while self._pending > self._handshakes:
            await asyncio.sleep(0)
        if self._ctx is not None:
            self._ctx.draining = True

    def set_close_keep_alive(self, on: bool) -> None:
        """On: keep accepting and serving, but answer every further request with ``Connection: close``
        (the supervisor's ``drain_delay``: clients reconnect elsewhere before this host stops). Off
        undoes it (an in-place upgrade that went on serving)."""
        self._context().close_keep_alive = on

    def pause_accepting(self) -> None:
        """Stop accepting new connections (existing ones are served as usual)."""
        self._paused_by_caller = True
        self._update_accepting()

    def resume_accepting(self) -> None:
        self._paused_by_caller = False
        self._update_accepting()

    async def shutdown(self, timeout: float | None = 30.0, restart: bool = False) -> None:
        """Graceful drain, then the interface's shutdown (ASGI lifespan). Returns when done.

        Stops accepting; closes idle connections at once; busy ones finish their
        current response (sent with ``Connection: close``); after ``timeout``
        seconds what is left is closed and its app tasks cancelled. Open
        WebSockets run for up to ``ws_drain_timeout``, then are closed with 1012
        (Service Restart) if ``restart`` (a reload or recycle: the service goes
        on), else 1001 (Going Away).
        """
        if self._shut_down:
            return
        self._shut_down = True
        if self._ctx is not None and restart:
            self._ctx.ws_close_code = 1012
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else 1e9)
        self._serving = False
        self._stop_reading()
        self._close_listeners()
        ctx = self._ctx
        if ctx is not None:
            ctx.draining = True
            # Let data that already arrived be parsed first, so a request that is
            # on its way is answered instead of reset (uvicorn discussion #2315).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            for conn in list(ctx.connections):
                conn.drain_for_shutdown()
            await self._wait_idle(ctx, deadline)
            if ctx.connections:
                log.warning("shutdown: closing %d connection(s) still busy after %ss",
                            len(ctx.connections), timeout)
                for conn in list(ctx.connections):
                    conn.force_close()
            tasks = [t for t in ctx.tasks if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                _done, stuck = await asyncio.wait(tasks, timeout=5.0)
                if stuck:
                    log.warning("shutdown: %d request task(s) ignored cancellation and are still running",
                                len(stuck))
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
        remaining = max(deadline - loop.time(), 5.0)
        await self._adapter.shutdown(remaining)

    async def _wait_idle(self, ctx: EngineContext, deadline: float) -> None:
        loop = ctx.loop
        while ctx.connections or self._pending > self._handshakes:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._closed_event = asyncio.Event()
            try:
                await asyncio.wait_for(self._closed_event.wait(), min(left, _TICK))
            except TimeoutError:
                pass  # a tick without a close: look at the connections and the deadline again
            finally:
                self._closed_event = None

    # ------------------------------------------------------------------ accepting

    def _update_accepting(self) -> None:
        want = self._serving and not self._paused_by_caller and not self._paused_by_capacity \
            and not self._paused_by_interface and self._backoff is None
        if want:
            self._start_reading()
        else:
            self._stop_reading()

    def _start_reading(self) -> None:
        loop = self._context().loop
        for sock in self._sockets:
            fd = sock.fileno()
            if fd >= 0 and fd not in self._reading:
                loop.add_reader(fd, self._accept, sock)
                self._reading.add(fd)

    def _close_listeners(self) -> None:
        """A drain: accept what is already queued (it is answered, with ``Connection: close``), then
        close this process's copies of the listening sockets. Once every process holding a socket
        has closed it, the kernel refuses new connections at once, where it would otherwise queue
        them until corral exits and then reset them. Another holder keeps the socket open: the
        supervisor and a new generation across a reload or recycle, systemd for a socket unit."""
        if self._ctx is None:
            return
        for sock in self._sockets:
            if sock.fileno() < 0:
                continue
            while True:  # _accept() takes a batch at a time; it stops at EAGAIN or at the limit
                pending = self._pending
                self._accept(sock)
                if self._pending == pending:
                    break
            sock.close()

    def _stop_reading(self) -> None:
        if self._ctx is None:
            return
        loop = self._ctx.loop
        for fd in list(self._reading):
            try:
                loop.remove_reader(fd)
            except (ValueError, OSError):
                pass  # the caller closed the socket already (it owns it): no reader is left to remove
        self._reading.clear()

    def _accept(self, lsock: socket.socket) -> None:
        ctx = self._ctx
        assert ctx is not None
        limit = self.settings.max_connections
        tls = self._tls.get(lsock.fileno()) if self._tls else None
        for i in range(_ACCEPT_BATCH):
            if len(ctx.connections) - ctx.closing + self._pending >= limit:
                # At the limit. A readiness event means a connection waits (unless
                # another worker took it): make room for it. Later in the batch
                # maybe nobody waits; the reader is level-triggered, so the next
                # event tells.
                if i:
                    return
                if not self._make_room(ctx):  # every connection is busy
                    self._paused_by_capacity = True
                    self._update_accepting()
                    return
            try:
                conn, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept() failed: %s; pausing accepting for %.1fs (raise LimitNOFILE= "
                              "or lower max_connections)", exc, _ACCEPT_ERRORS_BACKOFF)
                    self._backoff = ctx.loop.call_later(_ACCEPT_ERRORS_BACKOFF, self._end_backoff)
                    self._update_accepting()
                    return
                raise
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass  # the client reset it already: its transport set-up reports that, once
            self._start_connection(ctx, conn, tls)
            if self.on_accept is not None:
                # Accept balancing decides per connection: a burst of connects is
                # shared out within one readiness event.
                self.on_accept()
                if self._paused_by_caller:
                    return

    def _start_connection(self, ctx: EngineContext, conn: socket.socket, tls: ssl.SSLContext | None) -> None:
        """Set up the transport and protocol of a new connection (a task: TLS has a handshake first)."""
        self._pending += 1
        task = ctx.loop.create_task(self._connect(ctx, conn) if tls is None
                                    else self._connect_tls(ctx, conn, tls))
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)

    def _make_room(self, ctx: EngineContext) -> bool:
        """At max_connections: close the connection idle longest; False if none is idle.

        ``ctx.idle`` holds every connection, in the order it last went idle; a
        busy one (or one still sending its last response) goes to the back, to
        be looked at again after the others.
        """
        idle = ctx.idle
        for _ in range(min(len(idle), _ROOM_TRIES)):
            conn, _ = idle.popitem(last=False)
            if conn.evict():
                self._room_made += 1
                now = ctx.monotonic()
                if now >= self._room_log_at:
                    self._log_room_made(now)
                return True
            idle[conn] = None
        return False

    def _log_room_made(self, now: float) -> None:
        """One warning at most every _ROOM_LOG_INTERVAL: an attack closes thousands."""
        since = "" if not self._room_log_at else \
            f" in the last {now - self._room_log_at + _ROOM_LOG_INTERVAL:.0f}s"
        log.warning("max_connections (%d) reached: closed %d idle connection(s), the longest idle first, "
                    "to accept new ones%s; raise max_connections if clients need more connections open",
                    self.settings.max_connections, self._room_made, since)
        self._room_made = 0
        self._room_log_at = now + _ROOM_LOG_INTERVAL

    async def _connect(self, ctx: EngineContext, conn: socket.socket) -> None:
        try:
            await ctx.loop.connect_accepted_socket(lambda: HttpProtocol(ctx), conn)
        except OSError as exc:
            log.debug("connection set-up failed: %s", exc)
            conn.close()
        finally:
            self._pending -= 1

    async def _connect_tls(self, ctx: EngineContext, conn: socket.socket, tls: ssl.SSLContext) -> None:
        """Set up a TLS connection: the protocol sees it once the handshake is done.

        The handshake must finish within header_timeout; a closing connection
        flushes and exchanges close_notify within write_timeout. Shutdown does not
        wait for handshakes in progress: it cancels them with the other tasks.
        """
        transport_made = False

        def protocol() -> HttpProtocol:
            # Called by connect_accepted_socket before the handshake starts.
            nonlocal transport_made
            transport_made = True
            self._handshakes += 1
            return HttpProtocol(ctx)

        try:
            await ctx.loop.connect_accepted_socket(
                protocol, conn, ssl=tls, ssl_handshake_timeout=self.settings.header_timeout,
                ssl_shutdown_timeout=self.settings.write_timeout)
        except OSError as exc:  # ssl.SSLError, a reset, the handshake timeout: scanners, old clients
            log.debug("TLS handshake failed: %s", exc)
            if not transport_made:
                conn.close()  # else the transport closed it
        finally:
            self._pending -= 1
            if transport_made:
                self._handshakes -= 1
            self._on_connection_closed()  # one set-up fewer: below max_connections, accept again

    def _set_saturated(self, busy: bool) -> None:
        """The interface cannot run more requests now (WSGI pool full): stop accepting until it can."""
        self._paused_by_interface = busy
        self._update_accepting()

    def _end_backoff(self) -> None:
        self._backoff = None
        self._update_accepting()

    def _on_connection_closed(self) -> None:
        if self._paused_by_capacity and self._ctx is not None \
                and len(self._ctx.connections) - self._ctx.closing + self._pending < self.settings.max_connections:
            self._paused_by_capacity = False
            self._update_accepting()
        if self._closed_event is not None and self._ctx is not None and not self._ctx.connections:
            self._closed_event.set()

    # ------------------------------------------------------------------ housekeeping

    def _tick(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        self._ticker = ctx.loop.call_later(_TICK, self._tick)
        ctx.refresh_headers()
        if self._paused_by_capacity:
            # Every connection was busy: see again whether one is idle and can make room.
            self._paused_by_capacity = False
            self._update_accepting()
        now = ctx.monotonic()  # the clock of every connection deadline
        for conn in list(ctx.connections):
            conn.check_deadlines(now)
        limit = ctx.request_timeout
        if limit is not None:
            for conn in list(ctx.connections):
                conn.check_request_timeout(now, limit)
