"""What a load balancer or an orchestrator is told about this host, from one snapshot of it.

Pure logic on the standard library: the supervisor fills a ``HostState`` from what it knows
(its phase, its workers' heartbeats), and the functions here turn it into

- ``livez``: the liveness probe (``GET /livez``): is the supervisor alive and in touch with at
  least one worker? A failure means "restart me" to Kubernetes, so it must not fail for a
  host that is merely busy, reloading or draining.
- ``readyz``: the readiness probe (``GET /readyz``): should new requests come here now? 503
  with the reason in the body otherwise.
- ``agent_line``: the answer to HAProxy's ``agent-check`` (HAProxy 2.6 is the reference
  client; its configuration manual, section 5.2 "agent-check", defines the grammar). One line
  of words separated by spaces; HAProxy applies each word it finds and leaves the rest as it
  was, and only the agent can undo what the agent set. So every answer states everything that
  may need undoing:

  ``up ready 75%``     serving: operational state UP, administrative state READY (cancels a
                       DRAIN this agent set earlier), weight 75% of the server's configured
                       weight, following free capacity.
  ``drain``            a planned pause (starting, a reload cut-over that leaves no capacity,
                       draining for a stop): administrative DRAIN, so no new connections but
                       the open ones finish, and the server is never marked DOWN for a
                       planned event. The weight and the operational state are left alone.
  ``down #reason``     a fault while the host should serve (no ready worker): operational
                       DOWN, with the reason shown on HAProxy's stats page.

  A weight is never ``0%`` while up: HAProxy shows a zero weight as DRAIN, and a host whose
  every worker is saturated must keep a share (``1%``), or a fleet whose every host is
  saturated would have nowhere to send anything.

The HTTP serving and the agent's socket live elsewhere (``server``, ``agent``): nothing here
does I/O, so every state is unit-tested as a plain value.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from http import HTTPStatus

__all__ = [
    "LIVEZ_PATH", "MIN_UP_WEIGHT", "READYZ_PATH", "HostState", "NotReady", "Phase", "ProbeAnswer",
    "agent_line", "livez", "not_ready_reason", "readyz", "weight",
]

# The probe paths, on the supervisor's metrics (or health) listener, never in the app's URLs.
LIVEZ_PATH = "/livez"
READYZ_PATH = "/readyz"

# The smallest weight of a host that is up (see the module docstring: never 0% while up).
MIN_UP_WEIGHT = 1


class Phase(enum.Enum):
    """Where the supervisor is in its life (mapped from its own state by the supervisor)."""

    STARTING = "starting"  # the first generation is booting
    RUNNING = "running"
    RELOADING = "reloading"  # a reload transaction is in progress
    STOPPING = "stopping"  # stop or restart requested: draining, then exiting


class NotReady(enum.Enum):
    """Why ``/readyz`` says 503; the value is the body's first line."""

    STARTING = "starting: the first generation of workers is not ready yet"
    RELOADING_CUTOVER = "reloading cutover: every slot is being replaced right now"
    DRAINING = "draining for stop: finish open requests elsewhere"
    NO_READY_WORKER = "no ready worker"
    SATURATED = "all workers saturated"


@dataclass(frozen=True)
class HostState:
    """One snapshot of the host, as the supervisor sees it.

    ``slots``             the configured number of workers (``workers:``): full capacity.
    ``ready_workers``     workers that are ready and accept new connections (during a surge
                          reload, old and new together; parked and draining ones excluded).
    ``saturated_workers`` ready workers at their limit (in-flight requests or connections).
    ``connections``       connections open on the ready workers.
    ``max_connections``   the per-worker connection limit (``max_connections:``).
    ``replacing_workers`` slots whose worker a rolling reload is replacing right now (its
                          batch); 0 during a surge reload, which adds workers instead.
    ``draining``          stop, restart or self-upgrade announced (``drain_delay`` running or
                          over): the host wants no new work.
    ``loop_running``      the supervisor's event loop is turning (False: it stalled).
    ``fresh_heartbeats``  workers whose last heartbeat is recent.
    """

    phase: Phase
    slots: int
    ready_workers: int = 0
    saturated_workers: int = 0
    connections: int = 0
    max_connections: int = 1024
    replacing_workers: int = 0
    draining: bool = False
    loop_running: bool = True
    fresh_heartbeats: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"HostState.slots must be at least 1 (the configured workers), got {self.slots}")
        if self.max_connections < 1:
            raise ValueError(f"HostState.max_connections must be at least 1, got {self.max_connections}")
        for name in ("ready_workers", "saturated_workers", "connections", "replacing_workers",
                     "fresh_heartbeats"):
            if getattr(self, name) < 0:
                raise ValueError(f"HostState.{name} cannot be negative, got {getattr(self, name)}")
        if self.saturated_workers > self.ready_workers:
            raise ValueError(f"HostState.saturated_workers ({self.saturated_workers}) counts ready workers "
                             f"only, so it cannot exceed ready_workers ({self.ready_workers})")

    @property
    def reload_reduces_capacity(self) -> bool:
        """A rolling reload is replacing some slots now (a surge reload never reduces capacity)."""
        return self.phase is Phase.RELOADING and self.replacing_workers > 0

    @property
    def serving_capacity(self) -> int:
        """Ready workers that count as capacity: at most the slots not being replaced.

        During a surge reload both generations are ready for a moment; the host still has only
        ``slots`` workers' worth of CPU, so the count is capped there.
        """
        limit = self.slots
        if self.reload_reduces_capacity:
            limit = max(self.slots - self.replacing_workers, 0)
        return min(self.ready_workers, limit)


@dataclass(frozen=True)
class ProbeAnswer:
    """An HTTP probe's answer: its status (200 or 503) and a one-line text body."""

    status: HTTPStatus
    body: str


def livez(state: HostState) -> ProbeAnswer:
    """200 while the supervisor loop runs and at least one worker's heartbeat is fresh."""
    if not state.loop_running:
        return ProbeAnswer(HTTPStatus.SERVICE_UNAVAILABLE, "not live: the supervisor loop stalled\n")
    if state.fresh_heartbeats < 1:
        return ProbeAnswer(HTTPStatus.SERVICE_UNAVAILABLE,
                           f"not live: no worker heartbeat is fresh ({state.phase.value})\n")
    fresh = state.fresh_heartbeats
    return ProbeAnswer(HTTPStatus.OK, f"live: {fresh} worker heartbeat{'s' if fresh != 1 else ''} fresh\n")


def not_ready_reason(state: HostState) -> NotReady | None:
    """Why this host should get no new requests now, or None when it should."""
    # A stop outranks everything: a balancer must move away even if workers are still ready.
    if state.draining or state.phase is Phase.STOPPING:
        return NotReady.DRAINING
    if state.phase is Phase.STARTING:
        return NotReady.STARTING
    if state.serving_capacity == 0:
        return NotReady.RELOADING_CUTOVER if state.reload_reduces_capacity else NotReady.NO_READY_WORKER
    if state.saturated_workers >= state.ready_workers:
        return NotReady.SATURATED
    return None


def readyz(state: HostState) -> ProbeAnswer:
    """200 only while a ready generation serves and the host is not draining; else 503 + why."""
    reason = not_ready_reason(state)
    if reason is not None:
        return ProbeAnswer(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason.value}\n")
    return ProbeAnswer(HTTPStatus.OK, f"ready: {state.serving_capacity} of {state.slots} workers, "
                                      f"weight {weight(state)}%\n")


def weight(state: HostState) -> int:
    """The share of this host's configured weight it should get now, in percent (0 to 100).

    The scarcer of two resources decides: unsaturated workers among the configured slots, and
    free connection room on the ready workers. 0 only when nothing serves; otherwise at least
    ``MIN_UP_WEIGHT`` and rounded up, so a nearly idle host says 100%.
    """
    capacity = state.serving_capacity
    if capacity == 0:
        return 0
    free_workers = max(capacity - state.saturated_workers, 0)
    worker_share = free_workers / state.slots
    room = state.ready_workers * state.max_connections
    connection_share = 1.0 - min(state.connections, room) / room
    share = min(worker_share, connection_share)
    # Rounded first: 1 - 14/20 is 0.30000000000000004, which must say 30%, not 31%.
    return min(100, max(MIN_UP_WEIGHT, math.ceil(round(share * 100, 6))))


def agent_line(state: HostState) -> str:
    """HAProxy's agent-check answer (without the newline); see the module docstring."""
    reason = not_ready_reason(state)
    if reason in (NotReady.DRAINING, NotReady.STARTING, NotReady.RELOADING_CUTOVER):
        return "drain"
    if reason is NotReady.NO_READY_WORKER:
        return f"down #{reason.value}"
    # Ready, or every worker saturated: up, with the weight free capacity earns (1% at least).
    return f"up ready {weight(state)}%"
