"""What the supervisor tells load balancers and orchestrators: its ``HostState``, and the servers.

``host_state()`` fills a ``corral.metrics.probes.HostState`` from what the supervisor really
knows at this moment:

- its phase (starting, running, reloading, stopping) and whether a stop was announced
  (``drain_delay``);
- which workers accept new connections: ready ones, not draining, not parked by a rolling
  reload; during a surge reload the new generation's ready workers count too;
- their heartbeats: a worker counts as alive while its last heartbeat is younger than
  ``timeout`` (the hung-worker limit), and a booting one while it is within ``boot_timeout``
  (the supervisor kills it past that), so a slow start is never a liveness failure;
- saturation, from the counters each worker's heartbeat carries: a worker is at its limit when
  its open connections reach ``max_connections`` or, with WSGI ``threads``, its requests in flight
  fill the pool (it then stops accepting);
- how many slots a rolling reload is replacing now (``Reloader.replacing``).

``ProbeServers`` runs the answers on the supervisor's loop: ``/livez`` and ``/readyz`` on every
``metrics`` listener (beside ``/metrics``) and on every ``health`` listener (probes only), and
HAProxy's agent-check on every ``agent`` listener.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from corral.config import Config, engine_keys
from corral.metrics import probes
from corral.metrics.agent import AgentServer
from corral.metrics.server import MetricsServer
from corral.supervisor.listeners import Listeners, Role
from corral.supervisor.state import Phase, SupervisorState
from corral.supervisor.worker_process import BOOTING, DRAINING, READY, STANDBY, WorkerProcess

__all__ = ["ProbeHost", "ProbeServers", "host_state"]

log = logging.getLogger("corral.supervisor")

# The supervisor loop counts as stalled when its periodic tick (every 0.25 s) has not run for this long.
LOOP_STALL = 5.0


class Replacing(Protocol):
    def parked_ids(self) -> set[int]: ...
    def replacing(self) -> int: ...


class ProbeHost(Protocol):
    """What ``host_state`` reads of the supervisor."""

    phase: Phase
    drain_announced: bool  # a stop or an upgrade was announced (drain_delay)
    last_tick_at: float  # time.monotonic() of the last tick: the loop turns

    @property
    def state(self) -> SupervisorState: ...
    @property
    def config(self) -> Config: ...
    @property
    def reloader(self) -> Replacing: ...

    def now(self) -> float: ...
    def config_of(self, worker: WorkerProcess) -> Config: ...


def host_state(sup: ProbeHost) -> probes.HostState:
    """One snapshot of the host for the probes and the agent."""
    now = sup.now()
    state = sup.state
    generation = state.generation
    slots = max(len(generation.slots) if generation is not None else sup.config.workers, 1)
    parked = sup.reloader.parked_ids()
    ready = [w for w in state.workers.values()
             if w.state == READY and w.id not in parked and w not in state.retiring]
    saturated = sum(1 for w in ready if _saturated(w, sup.config_of(w)))
    return probes.HostState(
        phase=probes.Phase(sup.phase.value),
        slots=slots,
        ready_workers=len(ready),
        saturated_workers=saturated,
        connections=sum(_int(w.stats.get("connections_open")) for w in ready),
        max_connections=_max_connections(sup.config),
        replacing_workers=sup.reloader.replacing() if sup.phase is Phase.RELOADING else 0,
        draining=sup.drain_announced or sup.phase is Phase.STOPPING,
        loop_running=time.monotonic() - sup.last_tick_at < LOOP_STALL,
        fresh_heartbeats=sum(1 for w in state.workers.values() if _alive(w, sup.config_of(w), now)),
    )


def _alive(worker: WorkerProcess, config: Config, now: float) -> bool:
    if worker.state in (READY, DRAINING, STANDBY):
        age = worker.heartbeat_age(now)
        return age is not None and age <= config.timeout
    if worker.state == BOOTING:
        return worker.age(now) <= config.boot_timeout
    return False


def _saturated(worker: WorkerProcess, config: Config) -> bool:
    stats = worker.stats
    if _int(stats.get("connections_open")) >= _max_connections(config):
        return True
    threads = _int(config.engine.get("threads", _engine_default("threads")))
    return threads > 0 and _int(stats.get("in_flight")) >= threads


def _max_connections(config: Config) -> int:
    return max(_int(config.engine.get("max_connections") or _engine_default("max_connections") or 1024), 1)


@functools.lru_cache(maxsize=8)
def _engine_default(name: str) -> Any:
    spec = engine_keys().get(name)
    return spec.default if spec is not None else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class ProbeServers:
    """The probe and agent answers on the supervisor's listeners (started and closed with it)."""

    def __init__(self, snapshot: Callable[[], probes.HostState], render: Callable[[], str]) -> None:
        self._snapshot = snapshot
        self._render = render
        self.servers: list[MetricsServer] = []
        self.agent: AgentServer | None = None

    def start(self, listeners: Listeners) -> None:
        roles: Mapping[Role, list[Any]] = {role: listeners.role(role) for role in (Role.METRICS, Role.HEALTH,
                                                                                   Role.AGENT)}
        if roles[Role.METRICS]:
            server = MetricsServer(self._render, probes=self._snapshot)
            self.servers.append(server)
            for item in roles[Role.METRICS]:
                server.serve(item.sock)
                log.info("metrics on http://%s/metrics, probes at %s and %s", item.address.removeprefix("unix:"),
                         probes.LIVEZ_PATH, probes.READYZ_PATH)
        if roles[Role.HEALTH]:
            health = MetricsServer(None, probes=self._snapshot)
            self.servers.append(health)
            for item in roles[Role.HEALTH]:
                health.serve(item.sock)
                log.info("probes on http://%s%s and %s", item.address.removeprefix("unix:"), probes.LIVEZ_PATH,
                         probes.READYZ_PATH)
        if roles[Role.AGENT]:
            agent = self.agent = AgentServer(self._snapshot)
            for item in roles[Role.AGENT]:
                agent.serve(item.sock)
                log.info("HAProxy agent-check on %s", item.address.removeprefix("unix:"))

    async def close(self) -> None:
        for server in self.servers:
            await server.close()
        if self.agent is not None:
            await self.agent.close()
