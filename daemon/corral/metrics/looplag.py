"""Event-loop lag of the supervisor: how late a timer fires.

A supervisor whose loop stalls (a blocking call, swapping, CPU starvation) misses
heartbeats and watchdog pings; this figure tells an operator that it happened
before systemd's watchdog does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    """Schedules a timer every ``interval`` seconds and reports how late each one ran.

    A plain ``call_later`` chain, no task: one timer callback per interval.
    """

    def __init__(self, on_lag: Callable[[float], None], interval: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError(f"loop-lag interval must be positive, got {interval}")
        self._on_lag = on_lag
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start measuring on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self._interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        self._on_lag(max(0.0, self._loop.time() - self._due))
        self._schedule()
