"""The supervisor's side of observability: one ``Metrics`` kept in step with the supervisor.

``corral.metrics`` holds the data model, the Prometheus text, the accept-queue
probes and the ``/metrics`` responder; this module connects them to the
supervisor without adding work to its event handlers:

* ``sync()`` reconciles the ``Metrics`` registry with the supervisor's own state:
  workers that appeared, changed state or went away (with the restart reason
  their exit stands for), the last heartbeat stats and psutil sample of each,
  the listening sockets (reuse-port sockets come and go with TTIN/TTOU), the
  serving generation and the outcome of the last reload. Every reader (a scrape,
  the STATUS line, ``corral status``) calls it first, so what it reads is current.
* ``heartbeat(worker)`` records one heartbeat when it arrives, so that req/s is
  the slope of each worker's counter at the times the worker actually reported.
* ``start()`` / ``close()`` run the loop-lag monitor and serve ``GET /metrics``
  on every listener whose role is ``metrics`` (systemd's ``FileDescriptorName=metrics``,
  or ``metrics_bind:``).

Nothing here runs per request, and nothing here imports the app, uvloop or
httptools: ``corral.metrics`` is standard library only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from corral.metrics.looplag import LoopLagMonitor
from corral.metrics.registry import RESTART_REASONS, Metrics
from corral.metrics.server import MetricsServer
from corral.supervisor import policies
from corral.supervisor.worker_process import BOOTING, EXITED, READY

if TYPE_CHECKING:
    from corral.supervisor.sockets import Listener
    from corral.supervisor.supervisor import Supervisor
    from corral.supervisor.worker_process import WorkerProcess

__all__ = ["Observability", "restart_reason", "listener_label"]

log = logging.getLogger("corral.metrics")

LOOP_LAG_INTERVAL = 0.5
# Reasons a worker is stopped for that replace nothing: the slot is gone (scale-down),
# corral stops, or a failed reload's new generation is taken back.
_NOT_RESTARTS = frozenset({policies.SCALE_DOWN, policies.STOP, "rollback"})


def restart_reason(worker: WorkerProcess, *, serving_generation: int, stopping: bool) -> str | None:
    """What a worker's exit counts as in ``corral_worker_restarts_total``; None: not a restart.

    The supervisor records why it stops a worker (``stop_reason``: hung, memory,
    max_requests, reload, ...). A worker that left on its own crashed, or failed to
    boot if it never became ready. Exits while corral stops, scale-downs and the
    workers of a reload that did not pass its gate (the reload's outcome counts
    those) replace nothing and are not restarts.
    """
    if stopping:
        return None
    reason = worker.stop_reason
    if reason is None:
        if worker.generation > serving_generation:
            return None  # a reload's new worker: the reload is rolled back, nothing restarts
        reason = policies.CRASH if worker.ready_at is not None else policies.BOOT_FAILED
    if reason in _NOT_RESTARTS:
        return None
    if reason not in RESTART_REASONS:
        log.warning("worker pid %d stopped for %r, which metrics do not know; counted as a crash",
                    worker.pid, reason)
        return policies.CRASH
    return reason


def listener_label(item: Listener) -> str:
    """The ``name`` label of a listening socket: systemd's FileDescriptorName=, else its role.

    The reuse-port sockets of one address differ only by their group (the worker
    slot they feed), which becomes a suffix: ``http-1``, ``http-2``.
    """
    base = item.name or item.role
    return f"{base}-{item.group}" if item.group else base


class _Seen:
    """What was last fed to the registry for one worker process."""

    __slots__ = ("worker", "state", "stats", "sample")

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.state = BOOTING
        self.stats: dict[str, Any] | None = None
        self.sample: dict[str, int] | None = None


class Observability:
    """``Metrics`` for one supervisor, and the ``/metrics`` responder on its metrics sockets."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self.metrics = Metrics()
        self._seen: dict[int, _Seen] = {}
        self._listeners: dict[int, Any] = {}  # id(socket object) -> the socket
        self._reload: object | None = None  # the supervisor's last_reload already counted
        self._bad_heartbeat: set[int] = set()  # pids whose malformed heartbeat was logged
        self._server: MetricsServer | None = None
        self._lag: LoopLagMonitor | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Measure the loop's lag and serve ``/metrics`` on the metrics sockets (on the running loop)."""
        self._lag = LoopLagMonitor(self.metrics.set_loop_lag, interval=LOOP_LAG_INTERVAL)
        self._lag.start()
        sockets = self._sup.listeners.role("metrics")
        if not sockets:
            return
        self._server = MetricsServer(self.render)
        for item in sockets:
            self._server.serve(item.sock)
            where = item.address
            url = where if where.startswith("unix:") else f"http://{where}/metrics"
            log.info("serving Prometheus metrics on %s (%s)", url, item.source)

    async def close(self) -> None:
        if self._lag is not None:
            self._lag.stop()
            self._lag = None
        if self._server is not None:
            await self._server.close()
            self._server = None

    # ------------------------------------------------------------------ readers

    def render(self) -> str:
        """One Prometheus scrape (called by the responder)."""
        self.sync()
        return self.metrics.render()

    def status(self) -> dict[str, Any]:
        """``Metrics.status()``: the figures of the STATUS line and of ``corral status``."""
        self.sync()
        return self.metrics.status()

    def status_line(self) -> str:
        return self.status()["status_line"]

    # ------------------------------------------------------------------ feeding

    def heartbeat(self, worker: WorkerProcess) -> None:
        """A heartbeat from ``worker`` has just been stored in ``worker.stats``."""
        seen = self._track(worker)
        self._feed_stats(seen)

    def sync(self) -> None:
        """Bring the registry in step with the supervisor (cheap: a pass over live workers)."""
        sup = self._sup
        generation = sup.generation
        serving = generation.number if generation is not None else 0
        self.metrics.set_generation(serving)
        self.metrics.set_desired_workers(len(generation.slots) if generation is not None else 0)
        self._sync_listeners()
        live = sup.workers
        for pid, seen in list(self._seen.items()):
            if live.get(pid) is not seen.worker:
                self._exited(seen, serving)
        for worker in live.values():
            seen = self._track(worker)
            self._feed_stats(seen)
            self._feed_sample(seen)
            self._feed_state(seen)
        self._sync_reload()
        self.metrics.set_message(self._message())

    def _track(self, worker: WorkerProcess) -> _Seen:
        seen = self._seen.get(worker.pid)
        if seen is not None and seen.worker is not worker:
            # The pid was reused before a sync noticed the old process leave.
            self._exited(seen, self._sup.generation.number if self._sup.generation else 0)
            seen = None
        if seen is None:
            seen = self._seen[worker.pid] = _Seen(worker)
            self.metrics.worker_started(worker.pid, slot=worker.slot, generation=worker.generation)
        return seen

    def _feed_stats(self, seen: _Seen) -> None:
        stats = seen.worker.stats
        if not stats or stats is seen.stats:
            return  # the worker replaces the dict on every heartbeat: same dict, nothing new
        seen.stats = stats
        try:
            self.metrics.worker_heartbeat(seen.worker.pid, stats)
        except ValueError as exc:
            if seen.worker.pid not in self._bad_heartbeat:
                self._bad_heartbeat.add(seen.worker.pid)
                log.warning("worker pid %d sent heartbeat stats metrics cannot use: %s; "
                            "its figures stay at their last good values", seen.worker.pid, exc)

    def _feed_sample(self, seen: _Seen) -> None:
        sample = seen.worker.sample
        if not sample or sample is seen.sample:
            return
        seen.sample = sample
        cpu_ms = sample.get("cpu_ms")
        self.metrics.worker_process(
            seen.worker.pid, rss_bytes=sample.get("rss", 0), uss_bytes=sample.get("uss"),
            cpu_seconds=None if cpu_ms is None else cpu_ms / 1000, open_fds=sample.get("fds"))

    def _feed_state(self, seen: _Seen) -> None:
        state = seen.worker.state
        if state == EXITED or state == seen.state:
            return
        if state == READY:
            if seen.state == BOOTING:
                self.metrics.worker_ready(seen.worker.pid)
        elif state != BOOTING:  # draining, or killed (hung / overdue): no longer serving
            self.metrics.worker_draining(seen.worker.pid)
        seen.state = state

    def _exited(self, seen: _Seen, serving_generation: int) -> None:
        del self._seen[seen.worker.pid]
        self._bad_heartbeat.discard(seen.worker.pid)
        self._feed_stats(seen)  # the final heartbeat (sent after draining) keeps totals exact
        self._feed_sample(seen)
        reason = restart_reason(seen.worker, serving_generation=serving_generation,
                                stopping=self._sup.phase == "stopping")
        self.metrics.worker_exited(seen.worker.pid, restart_reason=reason)

    def _sync_listeners(self) -> None:
        items = {id(item.sock): item for item in self._sup.listeners.items if item.sock.fileno() >= 0}
        for key in [k for k in self._listeners if k not in items]:
            self.metrics.remove_listener(self._listeners.pop(key))
        for key, item in items.items():
            if key not in self._listeners:
                self._listeners[key] = item.sock
                self.metrics.add_listener(item.sock, listener_label(item),
                                          app_traffic=item.role != "metrics")

    def _sync_reload(self) -> None:
        outcome = getattr(self._sup, "last_reload", None)
        if outcome is None or outcome is self._reload:
            return
        self._reload = outcome
        self.metrics.reload_finished(reload_outcome_name(outcome), float(outcome.duration))

    def _message(self) -> str | None:
        """What the STATUS line adds to the figures: start-up, a reload under way, a failed reload."""
        sup = self._sup
        pending = sup.pending
        if pending is not None:
            return f"reloading: gen {pending.number} {len(pending.serving())}/{len(pending.slots)} ready"
        if sup.phase == "starting":
            return "starting"
        if sup.phase == "stopping":
            return "stopping"
        last = getattr(sup, "last_reload", None)
        if last is not None and not last.ok:
            return f"last reload failed: {last.message}"
        return None


def reload_outcome_name(outcome: Any) -> str:
    """``success``, ``rolled_back`` (a new generation started and was taken back) or ``aborted``
    (no new generation started: invalid config, corral stopping)."""
    if outcome.ok:
        return "success"
    started = getattr(outcome, "started", None)
    if started is None:
        # A generation that failed its gate took time to boot; an abort ends before any started.
        started = outcome.duration > 0
    return "rolled_back" if started else "aborted"
