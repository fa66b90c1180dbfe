"""The WSGI adapter the engine's :class:`~corral.engine.server.Server` uses for ``interface="wsgi"``.

It owns what all requests of one worker share: the app, the execution mode
(``threads: 0`` inline on the loop, ``threads: N`` a pool of N threads), the
environ bases, the backpressure accounting, the request-deadline watch, and
(inline mode) the spool budget that caps the request bodies held at once.

Backpressure (threads mode): the number of requests handed to the pool and
not yet finished is counted on the loop. When it reaches the pool size every
thread is busy, and the worker stops accepting new connections (the
engine's ``set_saturated`` hook) until a thread frees up; connections then
wait in the kernel backlog, where a sibling worker can take them. Requests
on connections already open still queue for a thread, at most one per
connection (HTTP/1.1 answers in order), so the queue is bounded by
``max_connections``.

Recycle requests: a WSGI call cannot be cancelled. When one runs past
``request_timeout`` the stuck thread's stack is logged and
``stats.wants_recycle`` is set to the reason; the worker reports it in its
heartbeat and the supervisor replaces the worker gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from corral.engine.settings import EngineSettings
from corral.engine.wsgi.body import SpoolBudget
from corral.engine.wsgi.cycle import InlineCycle, ThreadedCycle, WSGICycle
from corral.engine.wsgi.environ import environ_base, script_name_for
from corral.engine.wsgi.filewrapper import FileWrapper
from corral.engine.wsgi.pool import DeadlineWatch, ThreadPool

log = logging.getLogger("corral.engine.wsgi")

_BASES_LIMIT = 4096


class WSGIInterface:
    """The WSGI adapter (``corral.engine.contracts.InterfaceAdapter``)."""

    websocket_class = None  # WSGI has no WebSockets: an Upgrade: websocket request is plain HTTP

    def __init__(self, app: Any, settings: EngineSettings) -> None:
        if not callable(app):
            raise TypeError(f"WSGI app {app!r} is not callable")
        self.app = app
        self.settings = settings
        self.state: dict[str, Any] = {}  # WSGI has no lifespan: nothing to share
        self.threads: int = settings.threads
        self.spool_threshold: int = settings.wsgi_spool_threshold
        # Inline mode: what all unfinished request bodies of this worker may hold.
        self.spool_budget = SpoolBudget(settings.wsgi_spool_max)
        self.script_name = script_name_for(settings.root_path)
        base_class: type[WSGICycle] = ThreadedCycle if self.threads else InlineCycle
        # A subclass per interface: the cycle finds its interface as a class attribute.
        self.cycle_class = cast("type[WSGICycle]",
                                type(base_class.__name__, (base_class,), {"__slots__": (), "iface": self}))
        # Inline mode answers simple requests without a full cycle (the engine's shortcut).
        self.serve_simple = None if self.threads else cast("type[InlineCycle]", self.cycle_class).serve_simple
        self.bases: dict[tuple[Any, Any, str], dict[str, Any]] = {}
        self.pool: ThreadPool | None = None
        self.watch: DeadlineWatch | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.call_soon_threadsafe: Callable[..., Any] = _not_started
        self.active = 0  # requests handed to the pool and not finished (loop thread only)
        self.saturated = False
        self.inline_current: WSGICycle | None = None  # the request an inline app is running now
        self.loop_ident = 0  # the event loop's thread (where inline apps run)

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.loop_ident = threading.get_ident()
        self.call_soon_threadsafe = loop.call_soon_threadsafe
        if self.threads:
            self.pool = ThreadPool(self.threads)
        elif self.settings.request_timeout is not None:
            # An inline app blocks the loop, so the engine's own deadline sweep
            # cannot run: a separate thread watches the running request.
            self.watch = DeadlineWatch(self.settings.request_timeout, self._inline_sample, self._inline_stuck)
        log.debug("WSGI app %r: %s", self.app,
                  f"{self.threads} thread(s)" if self.threads else "inline on the event loop")

    async def shutdown(self, timeout: float | None = None) -> None:
        if self.watch is not None:
            self.watch.stop()
        pool = self.pool
        if pool is not None:
            self.pool = None
            # By now the engine has drained the connections; a thread still busy
            # is stuck in the app. Its threads are daemons: they do not hold the exit.
            busy = await asyncio.to_thread(pool.shutdown, min(timeout or 5.0, 5.0))
            if busy:
                log.warning("WSGI threads still inside the app at shutdown: %s", ", ".join(busy))

    # ------------------------------------------------------------------ environ bases

    def base_for(self, client: Any, server: Any, scheme: str) -> dict[str, Any]:
        """The per-(client, server, scheme) part of the environ, built once and reused."""
        key = (client, server, scheme)
        base = self.bases.get(key)
        if base is None:
            if server is not None and server[1] is None:
                server = None  # a unix socket: SERVER_NAME/PORT come from the Host header
            base = environ_base(client, server, scheme, self.script_name, bool(self.threads), True, FileWrapper)
            bases = self.bases
            if len(bases) >= _BASES_LIMIT:
                bases.clear()
            bases[key] = base
        return base

    # ------------------------------------------------------------------ threads mode

    def submit(self, cycle: ThreadedCycle, wsgi_input: Any) -> None:
        """Give a request to the pool (loop thread; hot path)."""
        self.active += 1
        if self.active >= self.threads and not self.saturated:
            self.saturated = True
            cycle.ctx.set_saturated(True)
        self.pool.submit(cycle.thread_main, wsgi_input)  # type: ignore[union-attr]  # threads mode: made by startup()

    def job_done(self, ctx: Any) -> None:
        """A pool thread finished a request (loop thread; hot path)."""
        self.active -= 1
        if self.saturated and self.active < self.threads:
            self.saturated = False
            ctx.set_saturated(False)

    # ------------------------------------------------------------------ deadlines

    def request_recycle(self, ctx: Any, reason: str) -> None:
        """Ask (through the stats the worker reports) for this worker to be replaced gracefully."""
        stats = ctx.stats
        if getattr(stats, "wants_recycle", None) is None:
            stats.wants_recycle = reason

    def _inline_sample(self) -> list[tuple[Any, int, float, Any]]:
        cycle = self.inline_current
        if cycle is None:
            return []
        return [((id(cycle), cycle.start), self.loop_ident, cycle.start, cycle)]

    def _inline_stuck(self, cycle: WSGICycle, elapsed: float, stack: str) -> None:
        cycle.timed_out(elapsed, stack)


def _not_started(*_args: Any) -> None:
    raise RuntimeError("the WSGI interface was used before Server.startup()")
