"""Accept balance, worker side: pause accepting while holding more than a fair share.

Every check publishes this worker's open-connection count to its cell of the
shared table (``corral.worker.balance``) and compares it with the mean of the
workers that accept. Above ``mean * SLACK`` (and a few connections over it, so
small numbers never flap) the worker pauses accepting; back at or under the
mean it resumes. Not every worker can be above the mean, so some worker always
accepts.

The check runs after every accepted connection (``Server.on_accept``), because a
burst of connects is shared out within milliseconds, and on a short timer, which
keeps this worker's cell fresh and resumes accepting once the others caught up.
"""

from __future__ import annotations

import asyncio
from typing import Any

from corral.worker.balance import BalanceTable

CHECK_INTERVAL = 0.01
SLACK = 1.15
MARGIN = 1


class AcceptBalancer:
    def __init__(self, server: Any, fd: int, cell: int) -> None:
        self.server = server
        self.table = BalanceTable(fd)
        self.cell = cell
        self.paused = False
        self.pauses = 0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    def start(self) -> None:
        if self.cell < 0:
            return
        self._loop = asyncio.get_running_loop()
        self._running = True
        if hasattr(self.server, "on_accept"):
            self.server.on_accept = self.check
        self._tick()

    def _tick(self) -> None:
        if not self._running or self._loop is None:  # the loop is set by start(), before running
            return
        self.check()
        self._handle = self._loop.call_later(CHECK_INTERVAL, self._tick)

    def check(self) -> None:
        """Publish our count and pause or resume accepting (cheap: a scan of a few cells)."""
        if not self._running:
            return
        server = self.server
        mine = server.connection_count if hasattr(server, "connection_count") else server.stats.connections_open
        self.table.set(self.cell, True, mine)
        active, total = self.table.fair_share()
        if active <= 1:
            self._resume()
            return
        mean = total / active
        if not self.paused:
            if mine > mean * SLACK and mine > mean + MARGIN:
                self.paused = True
                self.pauses += 1
                server.pause_accepting()
        elif mine <= mean:
            self._resume()

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            self.server.resume_accepting()

    def stop(self) -> None:
        """Draining: leave the table (so the others stop counting us) and stop checking."""
        self._running = False
        if self._handle is not None:
            self._handle.cancel()
        self.table.set(self.cell, False, 0)
        if getattr(self.server, "on_accept", None) == self.check:
            self.server.on_accept = None
        self.paused = False
