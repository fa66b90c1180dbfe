"""The ASGI 3 request cycle: runs ``app(scope, receive, send)`` for one HTTP request.

Hot path: the app coroutine is first stepped directly (``coro.send(None)``)
inside a copy of the context. Most handlers of a simple app finish without
ever suspending, and then no Task is created at all. Only when the app really
waits on something does the rest of it run in a Task, which picks up the
coroutine where it stopped (see ``_Resume``).
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import copy_context
from typing import Any, Generator

from corral.engine.cycle import ClientDisconnected, Cycle
from corral.engine.wire import InvalidResponse

log = logging.getLogger("corral.engine")


class _Resume:
    """Awaitable that continues a coroutine which already yielded ``first`` to its driver.

    A Task that awaits this sees exactly what it would have seen had it run
    the coroutine from the start: the yielded future, then the values and
    exceptions (cancellation included) are passed through.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        value = self.first
        self.first = None
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the Task (CancelledError, ...)
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _continue(cycle: "ASGICycle", coro: Any, first: Any) -> None:
    try:
        await _Resume(coro, first)
    except asyncio.CancelledError:
        cycle.app_cancelled()
    except Exception as exc:
        cycle.app_failed(exc)
    else:
        cycle.app_returned()


class ASGICycle(Cycle):
    __slots__ = ("task", "_waiter", "_body_done", "_timed_out")

    def __init__(self, conn: Any, scope: dict[str, Any], keep_alive: bool,
                 expect_continue: bool, body_expected: bool) -> None:
        Cycle.__init__(self, conn, scope, keep_alive, expect_continue, body_expected)
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._body_done = False  # the final http.request (more_body False) was delivered
        self._timed_out = False

    def run(self) -> None:
        # Hot path.
        ctx = self.ctx
        self.start = ctx.monotonic()
        context = copy_context()
        try:
            coro = ctx.app(self.scope, self.receive, self.send)
            first = context.run(coro.send, None)
        except StopIteration:
            self.app_returned()
            return
        except Exception as exc:
            self.app_failed(exc)
            return
        # The app is waiting on something: let a Task carry on from here.
        task = ctx.loop.create_task(_continue(self, coro, first), context=context)
        self.task = task
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)

    # ------------------------------------------------------------------ app outcome

    def app_returned(self) -> None:
        if self.response_complete or self.disconnected:
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
        if isinstance(exc, ClientDisconnected) and self.disconnected:
            log.debug("client went away during %s %s", self.scope["method"], self.scope["path"])
        elif not getattr(exc, "logged", False):
            log.error("Exception in ASGI application (%s %s)", self.scope["method"], self.scope["path"],
                      exc_info=exc)
        self.abort_response(500, "Internal Server Error")

    def app_cancelled(self) -> None:
        if self._timed_out:
            self.abort_response(504, "Gateway Timeout: the request took longer than request_timeout")
        else:
            self.abort_response(503, "Service Unavailable: the server is shutting down")

    def on_request_timeout(self) -> None:
        task = self.task
        if self._timed_out or task is None or task.done():
            return
        self._timed_out = True
        log.warning("request %s %s exceeded request_timeout (%ss); cancelling it",
                    self.scope["method"], self.scope["path"], self.ctx.request_timeout)
        task.cancel()

    # ------------------------------------------------------------------ receive

    def on_body_event(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
            self.write_body(message.get("body", b""), more)
            if more and self.conn._write_paused:
                waiter = self.drain()
                if waiter is not None:
                    await waiter
            return
        if mtype == "http.response.start":
            if self.disconnected:
                raise ClientDisconnected("the client closed the connection")
            self.start_response(message["status"], message.get("headers", ()))
            return
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection")
        raise InvalidResponse(f"unexpected ASGI message type {mtype!r} for an HTTP request; "
                              "expected http.response.start or http.response.body")


class ASGIInterface:
    """The ASGI adapter the server uses: cycle class, lifespan, shared state."""

    cycle_class = ASGICycle

    def __init__(self, app: Any, settings: Any) -> None:
        from corral.engine.lifespan import Lifespan
        self.app = app
        self.state: dict[str, Any] = {}
        self.lifespan = Lifespan(app, settings.lifespan, self.state)

    async def startup(self) -> None:
        await self.lifespan.startup()

    async def shutdown(self, timeout: float | None = None) -> None:
        await self.lifespan.shutdown(timeout)
