"""The ASGI 3 request cycle: runs ``app(scope, receive, send)`` for one HTTP request.

Hot path: each request runs in an *eagerly started* task. The app's first
step runs at once, inside the data_received callback that parsed the request,
so a handler that never waits writes its response in the same loop iteration
and no task is ever scheduled. The task exists from the first instruction, so
``asyncio.current_task()`` works as the app expects (anyio cancel scopes,
``asyncio.timeout``, thread offloading all need it) and does not change when
the app later suspends.

* Python >= 3.12: a C ``asyncio.Task`` with ``eager_start=True``.
* Python 3.11: ``corral.engine.eagertask``, the stdlib's pure-Python Task with
  the first step run by us instead of scheduled, and registered in
  ``all_tasks()`` only if it suspends. Same semantics; a little slower per step
  once suspended. It relies on CPython internals, checked at start-up
  (:func:`select_task_path`): where they differ, requests run as standard
  asyncio tasks (first step one loop iteration later), and one info line says why.

The task runs the app's coroutine itself (no wrapper on 3.11): the outcome
reaches the cycle directly when the app finishes in its first step, else
through a done callback (``task_done``).

Whatever an app raises is an application error: 500 if the response has not
started, else the connection is closed; the worker serves on. That includes a
plain (not async) ``__call__`` that raises before any coroutine exists, and
``SystemExit`` or ``KeyboardInterrupt`` (``sys.exit()`` in a handler): a task
would re-raise those two into the event loop and stop the worker with every
other request on it. corral's workers stop on signals, which the loop handles,
so an exit that reaches the engine comes from the app. On 3.11 ``_EagerTask``
catches them in its step; on 3.12+ (a C task) the app's coroutine runs inside
``_guarded``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
from asyncio import tasks as _tasks
from contextvars import copy_context
from typing import TYPE_CHECKING, Any

from corral.engine import eagertask
from corral.engine.contracts import Connection, Scope
from corral.engine.cycle import ClientDisconnected, Cycle
from corral.engine.lifespan import Lifespan
from corral.engine.wire import InvalidResponse

if TYPE_CHECKING:
    from corral.engine.contracts import WebSocketFactory
    from corral.engine.settings import EngineSettings

# After the client left, a response with at most this many bytes still due by its Content-Length
# is finished quietly (ASGICycle._body_after_disconnect): a page, a script, an image.
QUIET_REST = 1 << 20

log = logging.getLogger("corral.engine")

_EAGER_C_TASK = sys.version_info >= (3, 12)
_FINISHED = "FINISHED"
_PENDING = "PENDING"
_enter_task = _tasks._enter_task
_leave_task = _tasks._leave_task


class TaskPath(enum.Enum):
    """How an ASGI request's task starts (see the module docstring)."""

    EAGER_C = "eager C tasks (Python >= 3.12)"
    EAGER_PY = "corral's eager tasks (Python 3.11 internals)"
    STANDARD = "standard asyncio tasks"


# Decided by select_task_path(), when this module is imported (as a worker starts).
_path = TaskPath.STANDARD
_EagerTask: Any = None  # the 3.11 eager Task class while _path is EAGER_PY, else None (read per request)
_why_standard: str | None = None  # why the eager task does not fit this interpreter (STANDARD on 3.11)
_reported = False  # that reason was logged


def select_task_path() -> TaskPath:
    """Decide how requests' tasks start: the eager task where the interpreter allows it."""
    global _EagerTask, _path, _why_standard
    _EagerTask = _why_standard = None
    if _EAGER_C_TASK:
        _path = TaskPath.EAGER_C
    else:
        _why_standard = eagertask.internals_problem()
        if _why_standard is None:
            _EagerTask = eagertask.build()
            _path = TaskPath.EAGER_PY
        else:
            _path = TaskPath.STANDARD
    return _path


def task_path() -> TaskPath:
    """How requests' tasks start in this process."""
    return _path


def _report_task_path() -> None:
    """Once per process, at the first interface: say at info why the eager task is off, if it is."""
    global _reported
    if _why_standard is not None and not _reported:
        _reported = True
        log.info("ASGI requests run as standard asyncio tasks, their first step one loop iteration later "
                 "(a little slower, otherwise the same): corral's eager task does not fit this "
                 "interpreter: %s", _why_standard)


_NOT_A_COROUTINE = ("the ASGI app returned {!r} instead of a coroutine: an ASGI 3 app is an "
                    "`async def app(scope, receive, send)`, or an object whose __call__ is async "
                    "(a WSGI app needs `--interface wsgi`)")


_UNCALLED = object()  # ASGICycle.run() on 3.11: the app was not called (its __call__ raised)


class _AppExit(Exception):
    """The app raised SystemExit or KeyboardInterrupt, carried as ``__cause__`` (C or standard tasks)."""


async def _guarded(coro: Any) -> Any:
    """Run the app's coroutine in a task we did not build; its SystemExit or KeyboardInterrupt become an app error.

    A standard task re-raises those two into the event loop, which stops it;
    this frame turns them into an ordinary exception the task keeps.
    """
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _AppExit(type(exc).__name__) from exc
    except TypeError:
        if not hasattr(coro, "__await__"):
            raise TypeError(_NOT_A_COROUTINE.format(coro)) from None
        raise


_new_task = object.__new__


class ASGICycle(Cycle):
    __slots__ = ("task", "_body_done", "_timed_out")

    def __init__(self, conn: Connection, scope: Scope, keep_alive: bool,
                 expect_continue: bool, body_expected: bool) -> None:
        Cycle.__init__(self, conn, scope, keep_alive, expect_continue, body_expected)
        self.task: asyncio.Task[None] | None = None
        self._body_done = False  # the final http.request (more_body False) was delivered
        self._timed_out = False

    def run(self) -> None:
        # Hot path. On 3.11 nothing but the set-up may come before the first
        # step: every request's StopIteration gets a traceback entry for this
        # frame, whose line number 3.11 finds by scanning the code up to it.
        ctx = self.ctx
        self.start = ctx.monotonic()
        loop = ctx.loop
        context = copy_context()
        eager = _EagerTask
        if eager is not None:
            # Task.__step for a first step, inline (see corral.engine.eagertask); the app's
            # outcome goes straight to the cycle when it finishes here. The app
            # is called inside the try: a plain __call__ that raises is an app error.
            task = _new_task(eager)
            task._loop = loop
            task._callbacks = []
            task._context = context
            coro = _UNCALLED
            _enter_task(loop, task)
            try:
                coro = task._coro = ctx.app(self.scope, self.receive, self.send)
                result = context.run(coro.send, None)
            except StopIteration:
                _leave_task(loop, task)
                task._state = _FINISHED
                if task._must_cancel:  # the app cancelled its own task just before returning
                    self.app_cancelled()
                elif not self.response_complete:
                    self.app_returned()
                return
            except Exception as raised:  # noqa: BLE001  (app code may raise anything: a 500, the worker serves on)
                _leave_task(loop, task)
                task._state = _FINISHED
                if coro is not _UNCALLED and not hasattr(coro, "send"):  # the app returned no coroutine
                    self.app_failed(TypeError(_NOT_A_COROUTINE.format(coro)))
                else:
                    self.app_failed(raised)
                return
            except asyncio.CancelledError:
                _leave_task(loop, task)
                task._state = _FINISHED
                self.app_cancelled()
                return
            except BaseException as exc:  # noqa: BLE001  (SystemExit, KeyboardInterrupt from the app: an app error too)
                _leave_task(loop, task)
                task._state = _FINISHED
                self.app_failed(exc)
                return
            _leave_task(loop, task)
            task._callbacks.append((self.task_done, context))
            task.suspended(result)
        else:
            try:
                coro = ctx.app(self.scope, self.receive, self.send)
            except BaseException as exc:  # noqa: BLE001  (a plain __call__ (middleware) raised: no coroutine exists)
                self.app_failed(exc)
                return
            if _EAGER_C_TASK:
                task = asyncio.Task(_guarded(coro), loop=loop, context=context,  # type: ignore[call-arg]  # eager_start is 3.12+, absent from the 3.11 stubs
                                    eager_start=True)
                if task.done():
                    self.task_done(task)
                    return
            else:  # TaskPath.STANDARD: the first step runs in the next loop iteration
                task = loop.create_task(_guarded(coro), context=context)
            task.add_done_callback(self.task_done)
        # The app is waiting on something; its task carries on from there.
        self.task = task
        ctx.tasks.add(task)

    def task_done(self, task: asyncio.Task[None]) -> None:
        """The app's task ended: turn its outcome into a complete response."""
        self.ctx.tasks.discard(task)
        if task.cancelled():
            self.app_cancelled()
            return
        exc = task.exception()
        if exc is not None:
            self.app_failed(exc)
        elif not self.response_complete:
            self.app_returned()

    # ------------------------------------------------------------------ app outcome

    def app_returned(self) -> None:
        if self.response_complete or self.disconnected:
            return
        if self._timed_out:  # it returned after catching the request_timeout cancellation
            self.abort_response(504, "Gateway Timeout: the request took longer than request_timeout")
            return
        if not self.head_sent:
            log.error("ASGI app returned without completing the response to %s %s; answering 500",
                      self.scope["method"], self.scope["path"])
            self.abort_response(500, "Internal Server Error")
        else:
            log.error("ASGI app returned before finishing the response body of %s %s; "
                      "closing the connection", self.scope["method"], self.scope["path"])
            self.abort_response()

    def app_failed(self, exc: BaseException) -> None:
        scope = self.scope
        if isinstance(exc, _AppExit) and exc.__cause__ is not None:
            exc = exc.__cause__
        if self.disconnected and self.log_disconnect(exc):
            pass  # the client left, and the app stopped because of it: not an error
        elif isinstance(exc, (SystemExit, KeyboardInterrupt)):
            log.error("ASGI app raised %s during %s %s; answering 500 and serving on (stop a worker "
                      "with a signal, not from its app)", type(exc).__name__, scope["method"],
                      scope["path"], exc_info=exc)
        elif not getattr(exc, "logged", False):
            log.error("Exception in ASGI application (%s %s)", scope["method"], scope["path"], exc_info=exc)
        self.abort_response(500, "Internal Server Error")

    def app_cancelled(self) -> None:
        if self._timed_out:
            self.abort_response(504, "Gateway Timeout: the request took longer than request_timeout")
        else:
            self.abort_response(503, "Service Unavailable: the server is shutting down")

    def on_request_timeout(self) -> None:
        task = self.task
        if self._timed_out:
            # Called again a tick later and still not answered: the app swallowed
            # the cancellation. Answer (or close) without it.
            self.abort_response(504, "Gateway Timeout: the request took longer than request_timeout")
            return
        if task is None or task.done():
            return
        self._timed_out = True
        log.warning("request %s %s exceeded request_timeout (%ss); cancelling it",
                    self.scope["method"], self.scope["path"], self.ctx.request_timeout)
        task.cancel()

    # ------------------------------------------------------------------ receive

    def on_drain(self) -> None:
        pass  # writers wait on the protocol's drain futures

    async def receive(self) -> dict[str, Any]:
        while True:
            if self.disconnected:
                return {"type": "http.disconnect"}
            if self._buffered or (self.body_complete and not self._body_done):
                # Hot path for request bodies.
                body = self.take_body()
                more = not self.body_complete
                if not more:
                    self._body_done = True
                return {"type": "http.request", "body": body, "more_body": more}
            if self.response_complete:
                return {"type": "http.disconnect"}
            # Nothing to hand out: wait for body bytes, or (body done) for the disconnect.
            waiter = self.ctx.loop.create_future()
            self._waiter = waiter
            waiting_for_body = not self.body_complete
            if waiting_for_body:
                self.want_body()
            try:
                await waiter
            finally:
                self._waiter = None
                if waiting_for_body:
                    self.body_wait_over()

    # ------------------------------------------------------------------ send

    async def send(self, message: dict[str, Any]) -> None:
        # Hot path.
        mtype = message["type"]
        if mtype == "http.response.body":
            more = message.get("more_body", False)
            if self.disconnected:
                self._body_after_disconnect(message.get("body", b""), more)
                return
            self.write_body(message.get("body", b""), more)
            if more and self.conn.write_paused:
                waiter = self.drain()
                if waiter is not None:
                    await waiter
            return
        if mtype == "http.response.start":
            # Also after the client left: what the app sends next decides (_body_after_disconnect).
            self.start_response(message["status"], message.get("headers", ()))
            return
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection")
        raise InvalidResponse(f"unexpected ASGI message type {mtype!r} for an HTTP request; "
                              "expected http.response.start or http.response.body")

    def _body_after_disconnect(self, body: bytes, more: bool) -> None:
        """The client left: a stream is told so, a short finite rest goes quietly.

        ASGI 2.4 has send() raise an OSError after the client left, and that is how a stream
        (Server-Sent Events, a long download) learns to stop. But apps log that error as their
        own: Datasette prints a traceback for every script or icon a browser stops loading,
        and uvicorn, which most apps were written against, never raises. So the last body
        message, and a body whose declared rest is at most QUIET_REST bytes, are accepted and
        dropped; a body without a Content-Length, or with more left, raises ClientDisconnected.
        """
        rest = self.declared_rest()
        if more and (rest is None or rest > QUIET_REST):
            raise ClientDisconnected("the client closed the connection")
        self.drop_body(more)


class ASGIInterface:
    """The ASGI adapter the server uses (``contracts.InterfaceAdapter``): cycle class, lifespan, shared state."""

    cycle_class = ASGICycle
    serve_simple = None  # every ASGI request gets a scope and a cycle

    def __init__(self, app: Any, settings: EngineSettings) -> None:
        _report_task_path()
        self.app = app
        self.state: dict[str, Any] = {}
        self.lifespan = Lifespan(app, settings.lifespan, self.state)

    @property
    def websocket_class(self) -> WebSocketFactory:
        """The cycle of WebSocket handshakes (imported on first use: it loads ``websockets``)."""
        from corral.engine.websocket import WebSocketCycle
        return WebSocketCycle

    async def startup(self) -> None:
        await self.lifespan.startup()

    async def shutdown(self, timeout: float | None = None) -> None:
        await self.lifespan.shutdown(timeout)


select_task_path()  # at import: the worker imports this module as it starts
