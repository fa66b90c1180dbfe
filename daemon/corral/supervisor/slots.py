"""Generations of worker slots, the per-slot restart backoff and the global respawn budget.

A *generation* is the set of workers started from one config and one copy of
the code. A *slot* is one seat in a generation: it holds the worker serving
there and, during a recycle, the successor booting to replace it. A reload
starts a new generation, waits until every slot of it is ready, then drains the
old one.

When a worker dies its slot is refilled. How soon depends on what the worker
proved (``ExitVerdict``):

* it became ready and served (or stayed up ``BACKOFF_RESET_AFTER``): the app
  boots fine and something at run time killed it, say one request that crashes
  whichever worker serves it. The replacement starts at once, as gunicorn and
  uvicorn do, so that a query of death cannot empty the service.
* it never became ready, or died before serving anything: it cannot boot, and
  another try right away would fail the same way. The slot backs off, 0.1 s
  doubling up to 30 s.

Every replacement also draws from one ``RespawnBudget`` shared by all slots, so a
storm of crashes costs at most about one interpreter start per slot per second.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from corral.config import Config
from corral.supervisor.worker_process import READY, STANDBY, WorkerProcess

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
# A worker ready this long before dying was healthy even if it served nothing.
BACKOFF_RESET_AFTER = 10.0
# The respawn budget: sustained replacements per second and burst, per slot.
RESPAWNS_PER_SLOT = 1.0
RESPAWN_BURST_PER_SLOT = 2.0


class ExitVerdict(enum.Enum):
    """What a worker's death says about its slot's next start."""

    SERVED = "served"  # it became ready and served: replace it at once
    BOOT_FAILURE = "boot failure"  # it never became ready, or died before serving: back off


@dataclass
class Slot:
    index: int
    worker: WorkerProcess | None = None
    successor: WorkerProcess | None = None
    failures: int = 0  # consecutive workers that died without serving (crashed boots)
    restart_at: float | None = None  # spawn a worker here at this time (backoff), None: not scheduled
    last_error: str | None = None
    replaces: str | None = None  # the worker the next start replaces and why, for its log line
    waiting: bool = False  # its next worker waits for the generation's zygote to finish importing

    def backoff(self) -> float:
        """Delay before the next start: 0.1 s, doubling per consecutive failure, at most 30 s."""
        if self.failures <= 0:
            return 0.0
        return min(BACKOFF_FIRST * 2.0 ** (self.failures - 1), BACKOFF_MAX)

    def note_exit(self, worker: WorkerProcess, now: float, served: bool = False) -> ExitVerdict:
        """Schedule the slot's next start after ``worker`` died; ``served``: it answered (or was
        answering) at least one request."""
        if worker.ready_at is not None and (served or now - worker.ready_at >= BACKOFF_RESET_AFTER):
            self.failures = 0
            self.restart_at = now
            return ExitVerdict.SERVED
        self.failures += 1
        self.restart_at = now + self.backoff()
        return ExitVerdict.BOOT_FAILURE

    def workers(self) -> list[WorkerProcess]:
        return [w for w in (self.worker, self.successor) if w is not None]


@dataclass
class RespawnBudget:
    """A token bucket over every replacement of a dead worker, shared by all slots.

    While tokens last a replacement starts when its slot says; past them, one
    every ``1 / rate`` seconds. It bounds the CPU a crash storm burns on
    interpreter starts without ever parking a slot for long.
    """

    rate: float = RESPAWNS_PER_SLOT
    burst: float = RESPAWN_BURST_PER_SLOT
    tokens: float = RESPAWN_BURST_PER_SLOT
    updated: float = field(default_factory=time.monotonic)

    @classmethod
    def for_slots(cls, slots: int, now: float | None = None) -> RespawnBudget:
        budget = cls() if now is None else cls(updated=now)
        budget.resize(slots)
        budget.tokens = budget.burst
        return budget

    def resize(self, slots: int) -> None:
        """Scale with the number of slots (start, TTIN/TTOU, a reload to another worker count)."""
        slots = max(slots, 1)
        self.rate = RESPAWNS_PER_SLOT * slots
        self.burst = RESPAWN_BURST_PER_SLOT * slots
        self.tokens = min(self.tokens, self.burst)

    def reserve(self, at: float, now: float) -> float:
        """Take one start for time ``at`` (>= now); returns when it may happen: ``at``, or later
        while the budget is spent."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1.0
        if self.tokens >= 0:
            return at
        return max(at, now + -self.tokens / self.rate)


STANDBY_SLOT = -1  # the index of a generation's standby seat (and of a standby worker's slot until promoted)


@dataclass
class Generation:
    number: int
    config: Config
    slots: list[Slot] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    # config standby: the extra worker booted ahead of need, and its seat (backoff, last error).
    # Not in ``slots``: it serves nothing until a slot takes it (Supervisor.start_worker).
    standby_seat: Slot = field(default_factory=lambda: Slot(STANDBY_SLOT))

    @property
    def standby(self) -> WorkerProcess | None:
        """The standby, once it has booted and can take a slot at once."""
        worker = self.standby_seat.worker
        return worker if worker is not None and worker.state == STANDBY else None

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
