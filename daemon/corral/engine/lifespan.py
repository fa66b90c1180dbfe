"""The ASGI lifespan protocol: startup before serving, shutdown after draining.

Modes: ``on`` (the app must support it), ``off`` (never sent), ``auto`` (used if
the app supports it: an app that raises on the lifespan scope, as Django's
ASGI handler does, is served without it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("corral.engine")


class LifespanError(Exception):
    """Lifespan startup failed; the message is the app's own."""


class Lifespan:
    def __init__(self, app: Any, mode: str, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        # The app receives lifespan.startup, then lifespan.shutdown once this is set (shutdown()).
        # A future, not an asyncio.Queue: a forked worker then runs (and copies the pages of) no
        # queue or event code that serving never runs.
        self._shutdown_asked: asyncio.Future[None] | None = None
        self._received = 0
        self._task: asyncio.Task[None] | None = None
        self._startup_done: asyncio.Future[tuple[bool, str]] | None = None
        self._shutdown_done: asyncio.Future[tuple[bool, str]] | None = None
        self._unsupported = False
        self._shutdown_requested = False
        self._error: BaseException | None = None
        self.started = False

    async def startup(self) -> None:
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._shutdown_asked = loop.create_future()
        self._startup_done = loop.create_future()
        self._shutdown_done = loop.create_future()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        self._task = loop.create_task(self._main(scope))
        ok, message = await self._startup_done
        if ok:
            self.started = True
            return
        if self._unsupported:
            if self.mode == "on":
                raise LifespanError(f"the app does not support the ASGI lifespan protocol "
                                    f"(lifespan: on): {message}")
            log.info("ASGI lifespan not supported by the app (%s); serving without it", message)
            return
        raise LifespanError(message or "lifespan startup failed")

    async def _main(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            # shutdown() cancels the task once the app answered, or after its deadline (it says
            # so); a cancelled loop cancels it too. Not the app's error, and never swallowed:
            # the task must end cancelled, so that whoever cancelled it sees that.
            log.debug("ASGI lifespan task cancelled")
            if self._startup_done is not None and not self._startup_done.done():
                self._unsupported = True
                self._startup_done.set_result((False, "the lifespan task was cancelled before the app "
                                                      "answered lifespan.startup"))
            raise
        except BaseException as exc:  # app code may raise anything: logged below
            self._error = exc
            if self._startup_done is not None and not self._startup_done.done():
                # Raised before answering startup: the app does not speak lifespan
                # (auto) or its startup blew up (its message is what the user needs).
                self._unsupported = True
                self._startup_done.set_result((False, f"{type(exc).__name__}: {exc}"))
                if self.mode == "on":
                    log.error("ASGI lifespan startup raised", exc_info=exc)
            elif self._shutdown_requested:
                log.error("ASGI lifespan raised during shutdown", exc_info=exc)
                if self._shutdown_done is not None and not self._shutdown_done.done():
                    self._shutdown_done.set_result((False, f"{type(exc).__name__}: {exc}"))
            elif self.started:
                log.error("ASGI lifespan task raised while serving", exc_info=exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            if self._startup_done is not None and not self._startup_done.done():
                self._unsupported = True
                self._startup_done.set_result((False, "the app returned without answering lifespan.startup"))
            if self._shutdown_done is not None and not self._shutdown_done.done():
                self._shutdown_done.set_result((True, ""))

    async def _receive(self) -> dict[str, Any]:
        assert self._shutdown_asked is not None
        self._received += 1
        if self._received == 1:
            return {"type": "lifespan.startup"}
        if self._received == 2:
            await self._shutdown_asked
            return {"type": "lifespan.shutdown"}
        # Nothing follows lifespan.shutdown: a further receive() waits until the task is cancelled.
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable: the future above is never resolved")

    async def _send(self, message: dict[str, Any]) -> None:
        mtype = message.get("type")
        if mtype == "lifespan.startup.complete":
            if self._startup_done is not None and not self._startup_done.done():
                self._startup_done.set_result((True, ""))
        elif mtype == "lifespan.startup.failed":
            if self._startup_done is not None and not self._startup_done.done():
                self._startup_done.set_result((False, str(message.get("message", ""))))
        elif mtype == "lifespan.shutdown.complete":
            if self._shutdown_done is not None and not self._shutdown_done.done():
                self._shutdown_done.set_result((True, ""))
        elif mtype == "lifespan.shutdown.failed":
            if self._shutdown_done is not None and not self._shutdown_done.done():
                self._shutdown_done.set_result((False, str(message.get("message", ""))))
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message type {mtype!r}")

    async def shutdown(self, timeout: float | None = None) -> None:
        """Send lifespan.shutdown and wait for the answer (at most ``timeout`` seconds)."""
        if not self.started or self._shutdown_asked is None or self._shutdown_done is None:
            return
        self._shutdown_requested = True
        if not self._shutdown_asked.done():
            self._shutdown_asked.set_result(None)
        try:
            ok, message = await asyncio.wait_for(asyncio.shield(self._shutdown_done), timeout)
        except TimeoutError:
            log.error("ASGI lifespan shutdown did not finish within %ss; cancelling it", timeout)
            ok, message = True, ""
        if not ok:
            log.error("ASGI lifespan shutdown failed: %s", message)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # our caller is being cancelled, not just the task we cancelled
                log.debug("ASGI lifespan task ended (cancelled after lifespan.shutdown)")
