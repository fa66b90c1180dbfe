"""Accept balance: a table shared by the supervisor and its workers.

Workers that all wait on one listening socket with epoll do not share connections
evenly: the worker that re-armed last wins the wake-ups, and a worker that wakes
accepts everything queued. Here each worker publishes how many connections it has
open in its own cell of a small shared-memory table (a memfd the supervisor
creates and passes to every worker), and a worker holding clearly more than its
share pauses accepting until it is back under it. No locks: each cell has one
writer, and a slightly stale read only delays a decision by one connection.

Cell layout (three signed 64-bit words): ``[active, open_connections,
updated_ms]``. ``active`` is 1 while the worker accepts (ready and not
draining); the supervisor zeroes a cell when its worker exits. ``updated_ms``
(CLOCK_MONOTONIC, shared by all processes) lets readers ignore a worker whose
loop is blocked: a hung worker with few connections must not make every other
worker pause. Cell 0 is the header: ``[cells in use, 0, 0]`` bounds the scan,
which runs on every accept decision and must stay short.

Standard library only: the supervisor imports this module.
"""

from __future__ import annotations

import mmap
import os
import time

CELLS = 512
WORDS_PER_CELL = 3
STALE_MS = 500  # a cell not refreshed for this long is ignored
_SIZE = CELLS * WORDS_PER_CELL * 8


class BalanceTable:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = memoryview(self._map).cast("q")

    @classmethod
    def create(cls) -> BalanceTable:
        fd = os.memfd_create("corral-balance", os.MFD_CLOEXEC)
        os.ftruncate(fd, _SIZE)
        return cls(fd)

    def set_limit(self, limit: int) -> None:
        """Cells 1..limit-1 may be in use (supervisor side)."""
        self.words[0] = limit

    def clear(self, cell: int) -> None:
        base = cell * WORDS_PER_CELL
        self.words[base] = 0
        self.words[base + 1] = 0
        self.words[base + 2] = 0

    def set(self, cell: int, active: bool, open_connections: int) -> None:
        base = cell * WORDS_PER_CELL
        words = self.words
        words[base + 1] = open_connections
        words[base + 2] = time.monotonic_ns() // 1_000_000
        words[base] = 1 if active else 0

    def fair_share(self) -> tuple[int, int]:
        """(number of live active workers, connections they hold in total). Hot path: per accept."""
        words = self.words
        active = total = 0
        limit = min(max(words[0], 1), CELLS)
        oldest = time.monotonic_ns() // 1_000_000 - STALE_MS
        for base in range(WORDS_PER_CELL, limit * WORDS_PER_CELL, WORDS_PER_CELL):
            if words[base] and words[base + 2] >= oldest:
                active += 1
                total += words[base + 1]
        return active, total

    def close(self) -> None:
        self.words.release()
        self._map.close()
        os.close(self.fd)


class CellAllocator:
    """Hands out free cells, lowest first, and keeps the header's scan limit (supervisor side)."""

    def __init__(self, table: BalanceTable) -> None:
        self.table = table
        self._used: set[int] = set()

    def take(self) -> int:
        for cell in range(1, CELLS):
            if cell not in self._used:
                self._used.add(cell)
                self.table.clear(cell)
                self.table.set_limit(max(self._used) + 1)
                return cell
        return -1

    def adopt(self, cell: int) -> None:
        """Mark a cell in use by a worker this allocator did not start (after an in-place re-exec)."""
        if 0 < cell < CELLS:
            self._used.add(cell)
            self.table.set_limit(max(self._used) + 1)

    def give_back(self, cell: int) -> None:
        if cell in self._used:
            self._used.discard(cell)
            self.table.clear(cell)
            self.table.set_limit(max(self._used, default=0) + 1)
