"""The ASGI lifespan in process: cancellation reaches whoever is cancelled, and is never swallowed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from corral.engine.lifespan import Lifespan

_DEADLINE = 30.0  # seconds: the machine is loaded


class SlowCleanupApp:
    """Answers startup and shutdown, then runs until cancelled, and takes its time to clean up."""

    def __init__(self) -> None:
        self.cleaning = asyncio.Event()
        self.cancelled_twice = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})
        try:
            await asyncio.sleep(3600)  # a background job that outlives its shutdown answer
        except asyncio.CancelledError:
            self.cleaning.set()
            try:
                await asyncio.sleep(3600)  # cleaning up after the first cancellation
            except asyncio.CancelledError:
                self.cancelled_twice = True
                raise


def test_cancelling_shutdown_propagates_cancelled_error() -> None:
    """shutdown() awaits the lifespan task it cancelled; cancelling shutdown() itself then must raise
    CancelledError in its caller (the old ``except BaseException: pass`` swallowed it)."""

    async def main() -> None:
        app = SlowCleanupApp()
        lifespan = Lifespan(app, "on", {})
        await lifespan.startup()
        assert lifespan.started
        closing = asyncio.create_task(lifespan.shutdown(timeout=_DEADLINE))
        await asyncio.wait_for(app.cleaning.wait(), _DEADLINE)  # shutdown() now waits for the task
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(closing, _DEADLINE)
        assert closing.cancelled()
        assert app.cancelled_twice, "the cancellation reached the app's cleanup"

    asyncio.run(main())


def test_shutdown_that_cancels_the_lifespan_task_returns(caplog: pytest.LogCaptureFixture) -> None:
    """The lifespan task ending cancelled because shutdown() cancelled it is the normal end: no error."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        await asyncio.sleep(3600)  # cancelled by shutdown()

    async def main() -> Lifespan:
        lifespan = Lifespan(app, "on", {})
        await lifespan.startup()
        await asyncio.wait_for(lifespan.shutdown(timeout=_DEADLINE), _DEADLINE)
        return lifespan

    with caplog.at_level(logging.DEBUG, logger="corral.engine"):
        lifespan = asyncio.run(main())
    assert lifespan._task is not None and lifespan._task.cancelled()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
