"""What the supervisor knows, in one place: its phase, and the state a self-upgrade carries over.

``SupervisorState`` holds everything that must outlive the process image at an
in-place re-exec (``reexec``): the counters (the metrics registry's cumulative
figures, the worker ids, the generation numbers, the re-exec count), the
serving generation with its slots and their backoff, the respawn budget, the
workers (with their deadlines and last heartbeat), who is retiring or being
recycled, and the last reload's outcome. ``to_json()`` / ``from_json()``
serialise it whole: a field added here without a codec fails ``to_json()``
loudly instead of being dropped by the next upgrade.

The reloader (``reload``), the status report (``status``) and the re-exec work
on this state and on a small Protocol of the supervisor each, never on the
``Supervisor`` class, so none of them imports ``supervisor.supervisor``.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.config import Config
from corral.metrics.registry import Metrics
from corral.supervisor.slots import Generation, RespawnBudget, Slot
from corral.supervisor.worker_process import WorkerProcess


class Phase(enum.StrEnum):
    """Where the supervisor is in its life; the value is what ``corral status`` shows."""

    STARTING = "starting"  # generation 1 boots; READY=1 once every worker is ready
    RUNNING = "running"  # health policies, restarts, recycles
    RELOADING = "reloading"  # a reload transaction runs (reload.py)
    STOPPING = "stopping"  # TERM (graceful drain) or INT/QUIT (fast)


@dataclass
class ReloadOutcome:
    ok: bool
    generation: int
    message: str
    duration: float = 0.0


# Handed over as the pid and the channel's fd (reexec adopts the process and reopens the channel).
_HANDED_OVER = ("proc", "channel")
_SLOT_REFS = ("worker", "successor")  # workers, carried by id


@dataclass
class SupervisorState:
    metrics: Metrics = field(default_factory=Metrics)
    respawns: RespawnBudget = field(default_factory=RespawnBudget)  # shared by all slots (slots.py)
    started_at: float = field(default_factory=time.monotonic)
    next_id: int = 1  # the next worker's id
    generation_counter: int = 0  # the last generation number handed out
    reexecs: int = 0  # in-place upgrades this process went through
    workers: dict[int, WorkerProcess] = field(default_factory=dict)  # every live process, by pid
    generation: Generation | None = None  # serving (or booting at start-up)
    pending: Generation | None = None  # a reload's new generation while it boots
    retiring: list[WorkerProcess] = field(default_factory=list)  # old workers draining
    recycling: WorkerProcess | None = None  # the one worker being replaced now
    last_reload: ReloadOutcome | None = None

    # ------------------------------------------------------------------ queries

    def worker_by_id(self, worker_id: int) -> WorkerProcess | None:
        return next((w for w in self.workers.values() if w.id == worker_id), None)

    def serving_number(self) -> int:
        """The serving generation's number (0 before the first one)."""
        return self.generation.number if self.generation else 0

    def generation_of(self, worker: WorkerProcess) -> Generation | None:
        """The generation whose slots hold ``worker``: by slot, not by number, since a rolling
        reload that stops half-way leaves workers of the new generation in the old one's slots."""
        for generation in (self.generation, self.pending):
            if generation is not None and generation.slot_of(worker) is not None:
                return generation
        return None

    def config_of(self, worker: WorkerProcess) -> Config | None:
        """The config the worker was started with (its generation's), if that generation is known."""
        for generation in (self.generation, self.pending):
            if generation is not None and generation.number == worker.generation:
                return generation.config
        return None

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> dict[str, Any]:
        """Everything, as JSON data (workers by id; their processes and channels by pid and fd)."""
        data = {
            "metrics": self.metrics.carried(),
            "respawns": dataclasses.asdict(self.respawns),
            "started_at": self.started_at,
            "next_id": self.next_id,
            "generation_counter": self.generation_counter,
            "reexecs": self.reexecs,
            "workers": [worker_to_json(w) for w in self.workers.values()],
            "generation": _generation_to_json(self.generation),
            "pending": _generation_to_json(self.pending),
            "retiring": [w.id for w in self.retiring],
            "recycling": self.recycling.id if self.recycling is not None else None,
            "last_reload": dataclasses.asdict(self.last_reload) if self.last_reload is not None else None,
        }
        missing = {f.name for f in dataclasses.fields(self)} - data.keys()
        if missing:  # a programming error: caught by the unit tests, never by a user's upgrade
            raise TypeError(f"SupervisorState.to_json() does not carry {sorted(missing)}; add them")
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, metrics: Metrics,
                  decode_config: Callable[[dict[str, Any]], Config],
                  adopt: Callable[[Mapping[str, Any]], WorkerProcess]) -> SupervisorState:
        """Rebuild the state ``to_json()`` wrote. ``metrics``: this image's registry (it already
        watches the listeners), which takes the carried counters; ``adopt``: a worker from its
        entry (reopening its process and channel)."""
        if data.get("metrics"):  # absent from an image of before SupervisorState (reexec, version 1)
            metrics.carry_on(data["metrics"])
        workers = [adopt(entry) for entry in data["workers"]]
        by_id = {w.id: w for w in workers}
        generation = _generation_from_json(data["generation"], by_id, decode_config)
        slots = len(generation.slots) if generation is not None else 1
        return cls(
            metrics=metrics,
            respawns=RespawnBudget(**data["respawns"]) if data.get("respawns") else RespawnBudget.for_slots(slots),
            started_at=data["started_at"],
            next_id=data["next_id"],
            generation_counter=data["generation_counter"],
            reexecs=data["reexecs"],
            workers={w.pid: w for w in workers},
            generation=generation,
            pending=_generation_from_json(data.get("pending"), by_id, decode_config),
            retiring=[by_id[i] for i in data["retiring"] if i in by_id],
            recycling=by_id.get(data["recycling"]) if data["recycling"] is not None else None,
            last_reload=ReloadOutcome(**data["last_reload"]) if data["last_reload"] else None,
        )


def worker_to_json(worker: WorkerProcess) -> dict[str, Any]:
    """Every field of a worker, plus its pid and its channel's fd."""
    data = {f.name: getattr(worker, f.name) for f in dataclasses.fields(worker) if f.name not in _HANDED_OVER}
    data["pid"] = worker.pid
    data["channel_fd"] = worker.channel.fileno()
    return data


def worker_fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``WorkerProcess`` that ``worker_to_json`` wrote (all but the process
    and the channel); a field the writing image did not know keeps its default."""
    return {f.name: entry[f.name] for f in dataclasses.fields(WorkerProcess)
            if f.name in entry and f.name not in _HANDED_OVER}


def _generation_to_json(generation: Generation | None) -> dict[str, Any] | None:
    if generation is None:
        return None
    return {"number": generation.number, "config": generation.config.to_json(),
            "started_at": generation.started_at, "slots": [_slot_to_json(s) for s in generation.slots]}


def _generation_from_json(data: Mapping[str, Any] | None, by_id: Mapping[int, WorkerProcess],
                          decode_config: Callable[[dict[str, Any]], Config]) -> Generation | None:
    if data is None:
        return None
    return Generation(data["number"], decode_config(data["config"]),
                      slots=[_slot_from_json(s, by_id) for s in data["slots"]], started_at=data["started_at"])


def _slot_to_json(slot: Slot) -> dict[str, Any]:
    data = {f.name: getattr(slot, f.name) for f in dataclasses.fields(slot)}
    for name in _SLOT_REFS:
        worker = data[name]
        data[name] = worker.id if worker is not None else None
    return data


def _slot_from_json(data: Mapping[str, Any], by_id: Mapping[int, WorkerProcess]) -> Slot:
    values = {f.name: data[f.name] for f in dataclasses.fields(Slot) if f.name in data}
    for name in _SLOT_REFS:
        values[name] = by_id.get(values[name]) if values.get(name) is not None else None
    return Slot(**values)
