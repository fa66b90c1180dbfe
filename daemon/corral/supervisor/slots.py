"""Generations of worker slots, and the per-slot restart backoff.

A *generation* is the set of workers started from one config and one copy of
the code. A *slot* is one seat in a generation: it holds the worker serving
there and, during a recycle, the successor booting to replace it. A reload
starts a new generation, waits until every slot of it is ready, then drains the
old one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from corral.config import Config
from corral.supervisor.worker_process import READY, WorkerProcess

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
# A worker that served this long before dying was healthy: its slot's backoff restarts from the start.
BACKOFF_RESET_AFTER = 10.0


@dataclass
class Slot:
    index: int
    worker: WorkerProcess | None = None
    successor: WorkerProcess | None = None
    failures: int = 0  # consecutive crashes or failed boots
    restart_at: float | None = None  # spawn a worker here at this time (backoff), None: not scheduled
    last_error: str | None = None

    def backoff(self) -> float:
        """Delay before the next start: 0.1 s, doubling per consecutive failure, at most 30 s."""
        if self.failures <= 0:
            return 0.0
        return min(BACKOFF_FIRST * 2 ** (self.failures - 1), BACKOFF_MAX)

    def note_exit(self, worker: WorkerProcess, now: float) -> None:
        """Count a failure, unless the worker had served long enough to count as healthy."""
        if worker.ready_at is not None and now - worker.ready_at >= BACKOFF_RESET_AFTER:
            self.failures = 1
        else:
            self.failures += 1
        self.restart_at = now + self.backoff()

    def workers(self) -> list[WorkerProcess]:
        return [w for w in (self.worker, self.successor) if w is not None]


@dataclass
class Generation:
    number: int
    config: Config
    slots: list[Slot] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)

    def workers(self) -> list[WorkerProcess]:
        return [w for slot in self.slots for w in slot.workers()]

    def serving(self) -> list[WorkerProcess]:
        return [slot.worker for slot in self.slots if slot.worker is not None and slot.worker.state == READY]

    def all_ready(self) -> bool:
        return bool(self.slots) and all(s.worker is not None and s.worker.state == READY for s in self.slots)

    def slot_of(self, worker: WorkerProcess) -> Slot | None:
        for slot in self.slots:
            if slot.worker is worker or slot.successor is worker:
                return slot
        return None
