"""The supervisor: the main process systemd starts (``corral run``).

One asyncio loop (the standard one: never uvloop) drives everything, and all
state changes happen on it: signal handlers, worker messages, process exits and
a periodic tick only queue work onto the loop. The supervisor never imports the
application, uvloop or httptools.

Lifecycle (``Phase``): ``starting`` (generation 1 boots; READY=1 once every worker
is ready) -> ``running`` (health policies, restarts, recycles, reloads) ->
``stopping`` (TERM: graceful drain; INT/QUIT: fast) -> exit.

What must survive a self-upgrade lives in ``state`` (``SupervisorState``); the
reloader, the status report and the control socket see the supervisor through
small Protocols (``reload.ReloadHost``, ``status.Reporting``, ``control.Controlled``).
Processes are made by an injected ``Spawner`` and time read from an injected
clock, so that tests drive this class in-process (tests/supervisor/fakes.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.config import Config, engine_keys
from corral.logs import print_error, reopen_log_files
from corral.metrics import procfs
from corral.metrics.registry import RESTART_REASONS, Metrics
from corral.supervisor import devreload, identity, policies, reexec
from corral.supervisor.control import ControlServer
from corral.supervisor.identity import CodeIdentity
from corral.supervisor.listeners import Listener, Listeners, SocketError, bind_reuse_port_group
from corral.supervisor.notify import Notifier
from corral.supervisor.reaper import Reaper, become_subreaper
from corral.supervisor.reload import Reloader, ReloadOutcome, ReloadResult
from corral.supervisor.slots import STANDBY_SLOT, ExitVerdict, Generation, RespawnBudget, Slot
from corral.supervisor.spawn import Spawner, SpawnPending, SpawnRequest, spawn_worker
from corral.supervisor.state import Phase, SupervisorState
from corral.supervisor.status import status_line
from corral.supervisor.worker_process import (
    BOOTING,
    DRAINING,
    EXITED,
    KILLED,
    READY,
    STANDBY,
    WorkerProcess,
)
from corral.supervisor.zygote import ZYGOTE, StartingSpawner
from corral.worker import inflight, protocol
from corral.worker.balance import BalanceTable, CellAllocator
from corral.worker.protocol import ChannelClosed, Kind, Message

if TYPE_CHECKING:  # imported when used: a corral without metrics_bind never loads the server
    from corral.metrics.looplag import LoopLagMonitor
    from corral.metrics.probes import HostState
    from corral.supervisor.probing import ProbeServers

log = logging.getLogger("corral.supervisor")

TICK = 0.25
HUNG_KILL_GRACE = 1.0  # seconds between the traceback request and SIGKILL
FAST_STOP_GRACE = 5.0
KILL_WAIT = 5.0  # how long the last SIGKILL is waited for at exit
EXIT_BOOT_FAILED = 1


@dataclass
class WorkerExit:
    """What is known of a worker that just exited, for the handler of its case."""

    worker: WorkerProcess
    now: float
    description: str  # "exited with status 3", "was killed by SIGKILL"
    in_flight: list[inflight.InFlight]  # the requests it was serving (maybe the one that killed it)
    served: bool  # it answered (or was answering) a request since it became ready


class Supervisor:
    def __init__(self, config: Config, listeners: Listeners, *,
                 reload_config: Callable[[], Awaitable[Config]] | None = None,
                 notifier: Notifier | None = None,
                 spawner: Spawner | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 installed_code: Callable[[], CodeIdentity] = identity.installed) -> None:
        self.config = config
        self.listeners = listeners
        self.reload_config = reload_config
        self.notifier = notifier or Notifier()
        # The real spawner (None) starts exec'd workers or forks of the generation's zygote (zygote.py).
        self.spawner: Spawner = spawner if spawner is not None else StartingSpawner(spawn_worker, clock=clock)
        self.zygotes = self.spawner if isinstance(self.spawner, StartingSpawner) else None
        self.clock = clock
        self._installed_code = installed_code
        self.phase = Phase.STARTING
        self.exit_code = 0
        now = clock()
        self.state = SupervisorState(started_at=now, respawns=RespawnBudget.for_slots(config.workers, now))
        self._bad_heartbeats: set[int] = set()  # workers whose heartbeat the metrics rejected (logged once)
        self.last_watchdog = 0.0
        self.last_sample = 0.0
        self.last_extend = 0.0
        self.stop_deadline: float | None = None
        self.stop_mode = ""
        self._last_status = 0.0
        self.fatal_error: str | None = None
        self.reloader = Reloader(self)
        # corral's own code as it was when this image started: a reload that finds other code on
        # disk re-executes the supervisor in place (reload.py, reexec.py).
        self.code_identity = installed_code()
        self.argv = list(sys.argv[1:])  # the command line, for the preflight of an in-place upgrade
        self.resumed: Mapping[str, Any] | None = None  # set by adopt(): a re-executed image
        # One queue per slot (reuse-port groups) must never be paused: nobody else drains it.
        shared = not any(item.group for item in listeners.http())
        self.balance = BalanceTable.create() if config.accept_balance and shared else None
        self.cells = CellAllocator(self.balance) if self.balance else None
        if self.zygotes is not None and config.worker_start == ZYGOTE:
            # Before the reaper looks: forked workers are re-parented to us (zygote.py).
            self.zygotes.subreaper = become_subreaper()
        # As PID 1 (a container) or a subreaper, orphans become our children: reaped in _reap().
        self.reaper = Reaper.for_this_process(clock)
        self._done: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.control: ControlServer | None = None  # set by run(): the control-socket server
        self.probe_servers: ProbeServers | None = None  # /metrics, /livez, /readyz, agent (probing.py)
        # drain_delay: a stop (or an in-place upgrade) was announced to the load balancers; the
        # workers keep serving, closing each connection after its response, until the timer fires.
        self.drain_announced = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self.last_tick_at = time.monotonic()  # real time, not the clock: /livez asks whether the loop turns
        self.dev_reloader: devreload.DevReloader | None = None  # `corral run --reload` (devreload.py)
        self._loop_lag: LoopLagMonitor | None = None
        self._handlers: dict[Kind, Callable[[WorkerProcess, Message, float], None]] = {
            Kind.HEARTBEAT: self._on_heartbeat, Kind.READY: self._on_ready_message,
            Kind.BOOTED: self._on_booted, Kind.BOOT_ERROR: self._on_boot_error,
            Kind.DRAINING: self._on_draining, Kind.QUIESCED: self._on_quiesced,
            Kind.STANDBY: self._on_standby,
        }
        for item in listeners.items:
            self._watch_listener(item)

    @property
    def metrics(self) -> Metrics:
        return self.state.metrics

    def now(self) -> float:
        return self.clock()

    # ------------------------------------------------------------------ main

    async def run(self) -> int:
        self.attach(asyncio.get_running_loop())
        assert self._done is not None
        self._install_signals()
        control = self.control = ControlServer(self, self.config.control_socket)
        try:
            await control.start(reexec.control_socket_from(self.resumed) if self.resumed else None)
            self._start_metrics()
            self.dev_reloader = devreload.start(self, self.config)  # None unless --reload
            self.begin()
            ticker = asyncio.ensure_future(self._tick_forever())
            await self._done.wait()
            ticker.cancel()
        except devreload.DevReloadError as exc:  # before any worker started: nothing to stop
            self.fatal_error, self.exit_code = str(exc), EXIT_BOOT_FAILED
        finally:
            if self.dev_reloader is not None:
                self.dev_reloader.stop()
            await control.close()
            await self._stop_metrics()
            self._kill_everything()
            self.listeners.close()
            if self.balance is not None:
                self.balance.close()
        if self.fatal_error:
            print_error(f"corral: {self.fatal_error}")
        return self.exit_code

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` (the running one): worker channels are read and timers set there."""
        self._loop = loop
        self._done = asyncio.Event()

    @property
    def done(self) -> bool:
        """Whether the supervisor has stopped (every worker is gone after a stop)."""
        return self._done is not None and self._done.is_set()

    def begin(self) -> None:
        """Start generation 1, or, in a re-executed image, carry on with the adopted workers."""
        if self.resumed is not None:
            self._resume(self.resumed)
        else:
            generation = self.state.generation = self._new_generation(self.config, self.config.workers)
            self.metrics.set_generation(generation.number)
            self.metrics.set_desired_workers(len(generation.slots))
            log.info("starting %d worker%s (generation %d) for %s", self.config.workers,
                     "s" if self.config.workers != 1 else "", generation.number, self.config.app)
        self.update_status(force=True)

    def adopt(self, state: SupervisorState, balance: BalanceTable | None, resumed: Mapping[str, Any]) -> None:
        """Take the state a previous image of this process handed over (``reexec.restore``)."""
        if balance is not self.balance:
            if self.balance is not None:
                self.balance.close()
            self.balance = balance
            self.cells = CellAllocator(balance) if balance is not None else None
        for worker in state.workers.values():
            if self.cells is not None and worker.balance_cell >= 0:
                self.cells.adopt(worker.balance_cell)
        self.state = state
        self.phase = Phase.RUNNING
        self.resumed = resumed

    def _resume(self, resumed: Mapping[str, Any]) -> None:
        """After an in-place re-exec: watch the adopted workers, then run the reload that caused it."""
        state = self.state
        assert state.generation is not None
        for worker in state.workers.values():
            self.metrics.worker_started(worker.pid, slot=worker.slot, generation=worker.generation)
            if worker.state == READY:
                self.metrics.worker_ready(worker.pid)
            elif worker.state == DRAINING:
                self.metrics.worker_draining(worker.pid)
            self._seed_metrics(worker)
            self._watch_channel(worker)
        self.metrics.set_generation(state.generation.number)
        self.metrics.set_desired_workers(len(state.generation.slots))
        reexec.unblock_signals()
        if self.config.drain_delay > 0:
            self._tell_drain(False)  # the previous image announced its exec: take traffic again
        log.info("re-executed in place (pid %d, %s): adopted %d workers of generation %d",
                 os.getpid(), self.code_identity.short(), len(state.workers), state.generation.number)
        waiters = self.control.adopt_waiting(reexec.waiting_clients_from(resumed)) if self.control else []
        self.reloader.resume(waiters)
        self._reap()  # workers that exited during the exec

    def _seed_metrics(self, worker: WorkerProcess) -> None:
        """An adopted worker's last heartbeat and sample, so its figures count before its next one."""
        try:
            if worker.stats:
                self.metrics.worker_heartbeat(worker.pid, worker.stats)
            sample = worker.sample
            if "rss" in sample:
                self.metrics.worker_process(worker.pid, rss_bytes=sample["rss"], uss_bytes=sample.get("uss"),
                                            cpu_seconds=sample.get("cpu_ms", 0) / 1000, open_fds=sample.get("fds"))
        except ValueError:
            pass  # a heartbeat the metrics reject was logged when it came; the next one counts

    def reexec_state(self) -> dict[str, Any]:
        # A standby is not carried across the exec: it stops (its channel closes with this image)
        # and the new image boots another.
        generation = self.state.generation
        if generation is not None and generation.standby_seat.worker is not None:
            standby = generation.standby_seat.worker
            generation.standby_seat.worker = None
            standby.stop_gracefully(policies.RELOAD, 0.0, self.now())
            self._forget(standby)
        return reexec.capture(self)

    def installed_code(self) -> CodeIdentity:
        return self._installed_code()

    def _watch_listener(self, item: Listener) -> None:
        """Export a listener's accept queue. Reuse-port sockets share an address, so their
        series are told apart by group: ``http/1``, ``http/2``, ..."""
        name = f"{item.role}/{item.group}" if item.group else item.role
        self.metrics.add_listener(item.sock, name, app_traffic=item.role == "http")

    def _start_metrics(self) -> None:
        from corral.metrics.looplag import LoopLagMonitor

        self._loop_lag = LoopLagMonitor(self.metrics.set_loop_lag)
        self._loop_lag.start()
        if any(self.listeners.role(role) for role in ("metrics", "health", "agent")):
            from corral.supervisor.probing import ProbeServers

            self.probe_servers = ProbeServers(self.host_state, self.metrics.render)
            self.probe_servers.start(self.listeners)

    def host_state(self) -> HostState:
        """This host as /livez, /readyz and the HAProxy agent see it now (probing.py)."""
        from corral.supervisor.probing import host_state

        return host_state(self)

    async def _stop_metrics(self) -> None:
        if self._loop_lag is not None:
            self._loop_lag.stop()
        if self.probe_servers is not None:
            await self.probe_servers.close()

    def _install_signals(self) -> None:
        loop = self._loop
        assert loop is not None
        loop.add_signal_handler(signal.SIGTERM, self.stop, True)
        loop.add_signal_handler(signal.SIGINT, self.stop, False)
        loop.add_signal_handler(signal.SIGQUIT, self.stop, False)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGTTIN, self.scale, 1)
        loop.add_signal_handler(signal.SIGTTOU, self.scale, -1)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)

    async def _tick_forever(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("supervisor tick failed; continuing")
            await asyncio.sleep(TICK)

    # ------------------------------------------------------------------ spawning

    def _new_generation(self, config: Config, count: int) -> Generation:
        self.state.generation_counter += 1
        generation = Generation(self.state.generation_counter, config, started_at=self.now())
        for index in range(count):
            slot = Slot(index)
            generation.slots.append(slot)
            self.start_worker(generation, slot)
        return generation

    def start_worker(self, generation: Generation, slot: Slot, successor_of: WorkerProcess | None = None
                     ) -> WorkerProcess | None:
        """Start the worker of ``slot`` (or, with ``successor_of``, the one replacing it: a recycle).
        None when the process cannot be started (the slot then backs off) or cannot be started yet
        (``slot.waiting``: its zygote is importing; the slot asks again shortly)."""
        config = generation.config
        state = self.state
        slot.restart_at = None
        slot.waiting = False
        standing_by = slot is generation.standby_seat
        if not standing_by and generation.standby is not None:
            return self._promote(generation, slot, generation.standby, successor_of)
        # A standby gets every slot's listeners: it learns which are its own when it takes a slot.
        listeners = self.listeners.http() if standing_by else self.listeners.for_slot(slot.index, len(generation.slots))
        request = SpawnRequest(state.next_id, slot.index, generation.number, config,
                               listener_fds=[item.fd for item in listeners],
                               extra_fds=[self.balance.fd] if self.balance is not None else [],
                               in_flight_slots=_in_flight_slots(config))
        try:
            worker = self.spawner(request)
        except SpawnPending as pending:
            # Not a failure: no backoff, nothing logged above debug. The supervisor's loop goes on
            # (heartbeats, WATCHDOG=1, the control socket) while the zygote imports.
            slot.waiting = True
            slot.restart_at = pending.retry_at
            self._wake_at(slot.restart_at)
            log.debug("slot %d: %s", slot.index, pending)
            return None
        except OSError as exc:
            self._spawn_failed(config, slot, exc)
            if generation is state.pending:
                self.reloader.on_spawn_failed(generation, slot.last_error or str(exc))
            return None
        state.next_id += 1
        worker.spawned_at = self.now()
        worker.max_requests, worker.max_lifetime = policies.jittered_limits(config)
        worker.successor_of = successor_of.id if successor_of else None
        if self.cells is not None:
            worker.balance_cell = self.cells.take()
        state.workers[worker.pid] = worker
        self.metrics.worker_started(worker.pid, slot=slot.index, generation=generation.number)
        self._watch_channel(worker)
        hello = protocol.hello(
            config.to_json(), {"id": worker.id, "slot": slot.index, "generation": generation.number},
            [{"fd": item.fd, "role": item.role, "address": item.address, "name": item.name} for item in listeners],
            {"fd": self.balance.fd, "cell": worker.balance_cell} if self.balance is not None else None,
            {"fd": worker.in_flight_fd, "slots": worker.in_flight_slots} if worker.in_flight_fd >= 0 else None,
            standby=standing_by)
        worker.channel.send(hello)
        if generation is state.pending:
            # Part of a reload, with older code serving meanwhile: a failed warm-up must fail
            # this worker's boot (reload.py).
            worker.channel.send(protocol.bare(Kind.RELOAD_GATE))
        if standing_by:
            slot.worker = worker
            log.info("worker %d (pid %d) starting as the standby of generation %d", worker.id, worker.pid,
                     generation.number)
            return worker
        self._seat(generation, slot, worker, successor_of, " starting in")
        return worker

    def _seat(self, generation: Generation, slot: Slot, worker: WorkerProcess,
              successor_of: WorkerProcess | None, how: str) -> None:
        """Put a worker just started (or a standby just promoted) in ``slot``, and say why."""
        if successor_of is not None:
            slot.successor = worker
        else:
            slot.worker = worker
        log.info("worker %d (pid %d)%s slot %d, generation %d: %s", worker.id, worker.pid, how,
                 slot.index, generation.number, self._start_reason(generation, slot, successor_of))
        if successor_of is None:
            slot.replaces = None

    def _promote(self, generation: Generation, slot: Slot, worker: WorkerProcess,
                 successor_of: WorkerProcess | None) -> WorkerProcess:
        """config standby: the booted standby takes ``slot`` at once (it says ready once it serves
        there), and a new standby boots behind it."""
        now = self.now()
        generation.standby_seat.worker = None
        listeners = self.listeners.for_slot(slot.index, len(generation.slots))
        worker.slot = slot.index
        worker.state = BOOTING  # until its "ready": it serves from then on
        worker.spawned_at = now  # its lifetime (max_lifetime) and its "ready in" count from here
        worker.successor_of = successor_of.id if successor_of else None
        worker.channel.send(protocol.promote(slot.index, [item.fd for item in listeners]))
        self.metrics.worker_slot(worker.pid, slot.index)
        self._seat(generation, slot, worker, successor_of, ", the standby, takes")
        generation.standby_seat.restart_at = now  # the next standby boots on the next tick (_keep_standby)
        return worker

    def _keep_standby(self, now: float) -> None:
        """config standby: the serving generation keeps one standby booting or booted; any other
        standby (an older generation's, or one the config no longer wants) is retired."""
        generation = self.state.generation
        wanted = (generation if generation is not None and generation.config.standby
                  and self.phase is Phase.RUNNING and not self.reloader.busy else None)
        for worker in list(self.state.workers.values()):
            if (worker.slot == STANDBY_SLOT and worker.state in (BOOTING, STANDBY)
                    and (wanted is None or worker.generation != wanted.number)):
                self.retire(worker, policies.RELOAD if wanted else policies.STOP)
                if generation is not None and generation.standby_seat.worker is worker:
                    generation.standby_seat.worker = None
        if wanted is None:
            return
        seat = wanted.standby_seat
        if seat.worker is not None:
            return
        if seat.restart_at is None:
            seat.restart_at = now + seat.backoff()
        if now >= seat.restart_at:
            self.start_worker(wanted, seat)

    def _spawn_failed(self, config: Config, slot: Slot, exc: OSError) -> None:
        slot.failures += 1
        slot.restart_at = self.now() + slot.backoff()
        if exc.filename == config.app_dir:  # Popen reports a failed chdir with the directory's name
            slot.last_error = f"cannot start a worker in app_dir {config.app_dir}: {exc.strerror}"
        else:
            slot.last_error = f"cannot start {config.python}: {exc}"
        where = "the standby" if slot.index == STANDBY_SLOT else f"slot {slot.index}"
        log.error("%s: %s; retrying in %.1fs", where, slot.last_error, slot.backoff())

    def _watch_channel(self, worker: WorkerProcess) -> None:
        assert self._loop is not None, "attach() the supervisor to its loop first"
        self._loop.add_reader(worker.channel.fileno(), self._on_channel, worker)

    def _start_reason(self, generation: Generation, slot: Slot, successor_of: WorkerProcess | None) -> str:
        """Why a worker is started, for its log line (the exit that caused a restart is logged before)."""
        if successor_of is not None:
            return f"replaces worker {successor_of.id} ({successor_of.stop_reason or 'recycle'})"
        if slot.failures:
            return f"restart, {slot.failures} failure{'s' if slot.failures > 1 else ''} in a row in this slot"
        if slot.replaces:
            return slot.replaces
        if generation is self.state.pending:
            return "reload"
        return "start" if self.phase is Phase.STARTING else "new slot (TTIN)"

    # ------------------------------------------------------------------ worker messages

    def _on_channel(self, worker: WorkerProcess) -> None:
        try:
            for message in worker.channel.receive():
                self.on_message(worker, message)
        except ChannelClosed:
            if self._loop is not None:
                self._loop.remove_reader(worker.channel.fileno())
            # The process is exiting; SIGCHLD (or the tick) reaps it.
            self._reap()

    def on_message(self, worker: WorkerProcess, message: Message) -> None:
        """One message from a worker's control channel (``corral.worker.protocol``)."""
        kind = protocol.kind_of(message)
        handler = self._handlers.get(kind) if kind is not None else None
        if handler is not None:
            handler(worker, message, self.now())

    def _on_heartbeat(self, worker: WorkerProcess, message: Message, now: float) -> None:
        worker.last_heartbeat = now
        stats = message.get("stats")
        if not isinstance(stats, dict):
            return
        worker.stats = stats
        try:
            self.metrics.worker_heartbeat(worker.pid, stats)
        except ValueError as exc:
            if worker.pid not in self._bad_heartbeats:
                self._bad_heartbeats.add(worker.pid)
                log.warning("worker %d (pid %d): heartbeat not usable for metrics: %s", worker.id, worker.pid, exc)

    def _on_ready_message(self, worker: WorkerProcess, message: Message, now: float) -> None:
        if isinstance(message.get("identity"), dict):
            worker.identity = message["identity"]
        if isinstance(message.get("requests"), int):
            worker.requests_at_ready = message["requests"]
        self._on_ready(worker, now)

    def _standby_of(self, worker: WorkerProcess) -> Generation | None:
        """The generation whose standby ``worker`` is (not yet given a slot), if any."""
        for generation in (self.state.generation, self.state.pending):
            if generation is not None and generation.standby_seat.worker is worker:
                return generation
        return None

    def _on_standby(self, worker: WorkerProcess, message: Message, now: float) -> None:
        generation = self._standby_of(worker)
        if worker.state != BOOTING or generation is None:
            return
        worker.state = STANDBY
        worker.last_heartbeat = now
        self.metrics.worker_standby(worker.pid)
        generation.standby_seat.failures = 0
        log.info("worker %d (pid %d) on standby, booted in %.2fs (generation %d)", worker.id, worker.pid,
                 now - worker.spawned_at, worker.generation)
        self.update_status(force=True)

    def _on_booted(self, worker: WorkerProcess, message: Message, now: float) -> None:
        worker.last_heartbeat = now
        log.debug("worker %d (pid %d) imported the app", worker.id, worker.pid)

    def _on_boot_error(self, worker: WorkerProcess, message: Message, now: float) -> None:
        worker.boot_error = str(message.get("error", "unknown error"))

    def _on_draining(self, worker: WorkerProcess, message: Message, now: float) -> None:
        if worker.state == READY:
            worker.state = DRAINING
            worker.stop_started = now
        self.metrics.worker_draining(worker.pid)

    def _on_quiesced(self, worker: WorkerProcess, message: Message, now: float) -> None:
        self.reloader.on_quiesced(worker)

    def _on_ready(self, worker: WorkerProcess, now: float) -> None:
        if worker.state != BOOTING:
            return
        worker.state = READY
        worker.ready_at = now
        worker.last_heartbeat = now
        self.metrics.worker_ready(worker.pid)
        log.info("worker %d (pid %d) ready in %.2fs (slot %d, generation %d)", worker.id, worker.pid,
                 now - worker.spawned_at, worker.slot, worker.generation)
        state = self.state
        generation = state.generation_of(worker)
        if generation is None:
            return
        slot = generation.slot_of(worker)
        if slot is not None and slot.successor is worker:
            # A recycle: the replacement serves, so the old worker may drain now.
            old = slot.worker
            slot.worker, slot.successor = worker, None
            if old is not None and old.alive:
                self.retire(old, old.stop_reason or policies.RELOAD)
        if self.phase is Phase.STARTING and generation is state.generation:
            self._ready_at_start(generation, now)
        if generation is state.pending:
            self.reloader.on_ready(worker)
        self.update_status(force=True)

    def _ready_at_start(self, generation: Generation, now: float) -> None:
        # Slots that failed while nothing was ready may be retried now.
        for s in generation.slots:
            if s.worker is None and s.restart_at is None:
                s.restart_at = now + s.backoff()
        if generation.all_ready():
            self.phase = Phase.RUNNING
            log.info("all %d workers ready: serving", len(generation.slots))
            self.notifier.ready(self.status_line())

    # ------------------------------------------------------------------ process exits

    def _reap(self) -> None:
        workers = self.state.workers
        for worker in list(workers.values()):
            # An exit handler may reap again (_check_stopped): skip whom that already handled.
            if workers.get(worker.pid) is worker and worker.poll() is not None:
                self._on_exit(worker)
        self._tend_zygotes()
        if self.reaper is not None:  # after the workers: their exit status stays theirs
            self.reaper.reap(self._waited_for)

    def _waited_for(self, pid: int) -> bool:
        """A child whose exit status the supervisor itself takes: a worker or a zygote."""
        return pid in self.state.workers or (self.zygotes is not None and self.zygotes.owns(pid))

    def _tend_zygotes(self) -> None:
        """worker_start: zygote: restart crashed zygotes, stop those of generations gone (zygote.py)."""
        if self.zygotes is None:
            return
        live = [] if self.phase is Phase.STOPPING else [
            (g.number, g.config) for g in (self.state.generation, self.state.pending) if g is not None]
        self.zygotes.tend(live)
        if self.reaper is None and self.zygotes.subreaper:  # a reload switched to zygote: orphans come to us
            self.reaper = Reaper.for_this_process(self.clock)

    def _on_exit(self, worker: WorkerProcess) -> None:
        """A worker exited: forget it, then handle its case (one handler each)."""
        exit = self._forget(worker)
        if self.phase is Phase.STOPPING:
            self._exited_while_stopping(exit)
            return
        standby_of = self._standby_of(worker)
        generation = self.state.generation_of(worker)
        slot = generation.slot_of(worker) if generation is not None else None
        if standby_of is not None:
            self._standby_exited(exit, standby_of.standby_seat)
        elif generation is None or slot is None:
            self._retired_exited(exit)
        elif generation is self.state.pending and self.reloader.on_lost(worker, exit.description):
            pass  # a reload's new worker died before it was ready: the reload rolled back
        elif slot.successor is worker:
            self._successor_exited(exit, slot)
        else:
            self._serving_exited(exit, generation, slot)

    def _forget(self, worker: WorkerProcess) -> WorkerExit:
        """Drop an exited worker from every table; what it left behind is returned."""
        state = self.state
        state.workers.pop(worker.pid, None)
        self._bad_heartbeats.discard(worker.pid)
        worker.state = EXITED
        if self._loop is not None:
            try:
                self._loop.remove_reader(worker.channel.fileno())
            except (ValueError, OSError):
                pass  # the channel is already closed: nothing is watched any more
        self._drain_channel(worker)
        # Read before close(): the requests it was serving, maybe the one that killed it.
        in_flight = worker.in_flight()
        served = bool(in_flight) or worker.served_any()
        worker.close()
        if self.cells is not None:
            self.cells.give_back(worker.balance_cell)
        self.metrics.worker_exited(worker.pid, restart_reason=self._restart_reason(worker))
        if worker in state.retiring:
            state.retiring.remove(worker)
        if state.recycling is worker:
            state.recycling = None
        self.reloader.on_worker_gone(worker)
        return WorkerExit(worker, self.now(), _describe_exit(worker.returncode), in_flight, served)

    def _exited_while_stopping(self, exit: WorkerExit) -> None:
        worker = exit.worker
        log.info("worker %d (pid %d) %s", worker.id, worker.pid, exit.description)
        self._check_stopped()

    def _retired_exited(self, exit: WorkerExit) -> None:
        """A retired worker (drained after a recycle, reload or scale-down) is gone."""
        worker = exit.worker
        level = logging.INFO if worker.returncode == 0 or worker.stop_reason else logging.WARNING
        log.log(level, "worker %d (pid %d, %s) %s", worker.id, worker.pid, worker.stop_reason or "retired",
                exit.description)
        self.update_status(force=True)

    def _standby_exited(self, exit: WorkerExit, seat: Slot) -> None:
        """The standby died before it took a slot: the next one boots after the seat's backoff."""
        worker = exit.worker
        seat.worker = None
        seat.failures += 1
        seat.restart_at = exit.now + seat.backoff()
        seat.last_error = worker.boot_error or exit.description
        log.error("standby worker %d (pid %d) %s; another boots in %.1fs%s", worker.id, worker.pid,
                  exit.description, seat.backoff(), _error_suffix(worker))
        self.update_status(force=True)

    def _successor_exited(self, exit: WorkerExit, slot: Slot) -> None:
        """The replacement of a recycle died before it was ready: keep the old one serving."""
        worker = exit.worker
        slot.successor = None
        slot.note_exit(worker, exit.now, exit.served)
        slot.last_error = worker.boot_error or exit.description
        if self.state.recycling is slot.worker:
            self.state.recycling = None
        if slot.worker is not None:
            slot.worker.stop_reason = None  # it stays: it is not being replaced after all
        log.error("replacement worker %d (pid %d) %s before it was ready; worker %d keeps serving "
                  "(recycle retried in %.1fs)%s", worker.id, worker.pid, exit.description,
                  slot.worker.id if slot.worker else -1, slot.backoff(), _error_suffix(worker))
        self.update_status(force=True)

    def _serving_exited(self, exit: WorkerExit, generation: Generation, slot: Slot) -> None:
        """The slot's serving (or first booting) worker is gone."""
        worker = exit.worker
        slot.worker = None
        verdict = slot.note_exit(worker, exit.now, exit.served)
        slot.last_error = worker.boot_error or exit.description
        if slot.successor is not None:
            # A recycle was under way: its replacement takes the slot.
            slot.worker, slot.successor = slot.successor, None
            slot.restart_at = None
        if worker.ready_at is None and self.phase is Phase.STARTING and not _anything_ready(generation):
            self._boot_failed_at_start(exit, generation, slot)
        elif slot.worker is None:
            self._replace(exit, slot, verdict)
        self.update_status(force=True)

    def _boot_failed_at_start(self, exit: WorkerExit, generation: Generation, slot: Slot) -> None:
        """No worker has proved the app can boot yet: retry only once one does; none left: give up."""
        worker = exit.worker
        slot.restart_at = None  # retried once some worker proves the app can boot
        log.error("worker %d (pid %d) %s before it was ready%s", worker.id, worker.pid, exit.description,
                  _error_suffix(worker))
        if all(s.worker is None for s in generation.slots):
            if self.dev_reloader is not None:  # --reload: wait for a save that fixes it (retry_boot)
                self.dev_reloader.boot_failed(worker.boot_error or exit.description)
                return
            self.fatal_error = ("no worker could boot: " + (worker.boot_error or exit.description)
                                + _boot_fix_hint(worker.boot_error))
            self.exit_code = EXIT_BOOT_FAILED
            self.notifier.send(STATUS=self.fatal_error[:400])
            self.stop(graceful=False)

    def _replace(self, exit: WorkerExit, slot: Slot, verdict: ExitVerdict) -> None:
        """Schedule the slot's next worker (at once after a served worker's crash; a boot failure
        backs off) and say so."""
        worker, now = exit.worker, exit.now
        reason = worker.stop_reason or (policies.BOOT_FAILED if worker.ready_at is None else policies.CRASH)
        slot.replaces = f"replaces worker {worker.id} ({reason})"
        self._schedule_restart(slot, now)
        level = logging.INFO if worker.stop_reason == policies.HUNG else logging.ERROR
        if verdict is ExitVerdict.SERVED:
            # It served: the app boots, a request (or something else at run time) killed it.
            serving = f" while serving {inflight.describe(exit.in_flight)}" if exit.in_flight else ""
            log.log(level, "worker %d (pid %d, slot %d) %s (%s)%s; %s", worker.id, worker.pid, slot.index,
                    exit.description, reason, serving, self._when(slot.restart_at, now))
            return
        early = "" if worker.ready_at is None else (f": it died {now - worker.ready_at:.2f}s after it became "
                                                    "ready, before serving a request")
        delay = max((slot.restart_at or now) - now, 0.0)
        log.log(level, "worker %d (pid %d, slot %d) %s (%s)%s; restarting in %.1fs%s", worker.id, worker.pid,
                slot.index, exit.description, reason, early, delay, _error_suffix(worker))

    def _schedule_restart(self, slot: Slot, now: float) -> None:
        """Start the slot's next worker when its backoff says, within the global respawn budget."""
        if slot.restart_at is None:
            return
        slot.restart_at = self.state.respawns.reserve(slot.restart_at, now)
        self._wake_at(slot.restart_at)

    def _when(self, restart_at: float | None, now: float) -> str:
        delay = 0.0 if restart_at is None else restart_at - now
        if delay < 0.05:
            return "replacing it now"
        return (f"replacing it in {delay:.1f}s (respawn budget: {self.state.respawns.rate:g} "
                "replacements per second; crashes come faster)")

    def _wake_at(self, when: float | None) -> None:
        """Run the restart check at ``when`` rather than at the next tick: capacity comes back sooner."""
        if when is not None and self._loop is not None:
            self._loop.call_later(max(when - self.now(), 0.0), self._restart_due_now)

    def _restart_due_now(self) -> None:
        if self.phase is not Phase.STOPPING:
            self._restart_due(self.now())

    def _restart_reason(self, worker: WorkerProcess) -> str | None:
        """Why a worker was replaced, for the restart counters; None when it was not replaced
        (a stop, a scale-down, a rolled-back generation)."""
        if self.phase is Phase.STOPPING and worker.stop_reason in (None, policies.STOP):
            return None
        generation = self.state.generation
        if worker.stop_reason is None and generation is not None and worker.generation > generation.number:
            return None  # a reload's new worker that failed: the reload rolls back, nothing is restarted
        reason = worker.stop_reason or (policies.BOOT_FAILED if worker.ready_at is None else policies.CRASH)
        return reason if reason in RESTART_REASONS else None

    def _drain_channel(self, worker: WorkerProcess) -> None:
        """The last messages of an exited worker: its boot error and final counters."""
        try:
            for message in worker.channel.receive():
                kind = protocol.kind_of(message)
                if kind is Kind.BOOT_ERROR:
                    worker.boot_error = str(message.get("error"))
                elif kind is Kind.HEARTBEAT and isinstance(message.get("stats"), dict):
                    worker.stats = message["stats"]
        except (ChannelClosed, OSError):
            pass  # the end of what it sent

    # ------------------------------------------------------------------ the periodic tick

    def tick(self) -> None:
        self.last_tick_at = time.monotonic()
        now = self.now()
        self._reap()
        self._enforce_deadlines(now)
        if self.phase is Phase.STOPPING:
            if now - self.last_extend >= 5.0 and self.stop_deadline:
                self.last_extend = now
                self.notifier.extend_timeout(max(self.stop_deadline - now, 0) + 10)
            self._check_stopped()
            return
        self._restart_due(now)
        self._keep_standby(now)
        self._watch_health(now)
        if now - self.last_sample >= self.config.policy_interval:
            self.last_sample = now
            self._sample(now)
        if self.phase is Phase.STARTING and now - self.last_extend >= 5.0:
            # A slow boot that is still progressing (a worker within its boot_timeout) keeps
            # systemd's start timeout ahead of it; a start that only crash-loops does not.
            booting = [w for w in self.state.workers.values() if w.state == BOOTING]
            if booting:
                self.last_extend = now
                left = max(self.config.boot_timeout - min(w.age(now) for w in booting), 0.0)
                self.notifier.extend_timeout(left + 10)
        self._watchdog(now)
        self.reloader.tick(now)
        self.update_status()

    def _enforce_deadlines(self, now: float) -> None:
        for worker in list(self.state.workers.values()):
            if worker.kill_at is not None and now >= worker.kill_at and worker.poll() is None:
                if worker.state != KILLED:
                    log.warning("worker %d (pid %d) did not stop in time (%s); killing it", worker.id,
                                worker.pid, worker.stop_reason)
                worker.signal(signal.SIGKILL)
                worker.kill_at = now + 5.0  # re-sent if it somehow survives

    def _restart_due(self, now: float) -> None:
        for generation in (self.state.generation, self.state.pending):
            if generation is None:
                continue
            for slot in generation.slots:
                if slot.worker is None and slot.restart_at is not None and now >= slot.restart_at:
                    self.start_worker(generation, slot)

    def _watch_health(self, now: float) -> None:
        for worker in list(self.state.workers.values()):
            if worker.state == BOOTING and worker.age(now) > self.config_of(worker).boot_timeout:
                worker.boot_error = worker.boot_error or (
                    f"not ready after boot_timeout={self.config_of(worker).boot_timeout:g}s "
                    "(app import + lifespan startup); raise boot_timeout if the app is just slow")
                log.error("worker %d (pid %d) %s; killing it", worker.id, worker.pid, worker.boot_error)
                worker.kill_hung(policies.BOOT_TIMEOUT, now, HUNG_KILL_GRACE)
            elif worker.state in (READY, DRAINING, STANDBY):
                self._check_heartbeat(worker, now)
            if worker.state == READY and self.phase is Phase.RUNNING and not self.reloader.busy:
                verdict = policies.check_counters(worker.stats, worker.age(now), worker.max_requests,
                                                  worker.max_lifetime)
                if verdict is not None:
                    self.recycle(worker, verdict.reason, verdict.detail)

    def _check_heartbeat(self, worker: WorkerProcess, now: float) -> None:
        age = worker.heartbeat_age(now)
        timeout = self.config_of(worker).timeout
        if age is None or age <= timeout:
            return
        in_flight = worker.in_flight()
        log.error("worker %d (pid %d) sent no heartbeat for %.1fs (timeout %gs): its event loop "
                  "is blocked%s; dumping its traceback, then killing it", worker.id, worker.pid,
                  age, timeout, f" serving {inflight.describe(in_flight)}" if in_flight else "")
        self._take_out_of_slot(worker, policies.HUNG, now)
        worker.kill_hung(policies.HUNG, now, HUNG_KILL_GRACE)

    def _take_out_of_slot(self, worker: WorkerProcess, reason: str, now: float) -> None:
        """A hung worker serves nothing: free its slot and start the replacement right away."""
        state = self.state
        generation = state.generation_of(worker)
        slot = generation.slot_of(worker) if generation else None
        worker.stop_reason = reason
        self.metrics.worker_draining(worker.pid)
        if slot is None:
            return
        if slot.worker is worker:
            slot.worker, slot.successor = slot.successor, None
            if state.recycling is worker:
                state.recycling = None
            if slot.worker is None:
                slot.note_exit(worker, now, worker.served_any())
                slot.replaces = f"replaces worker {worker.id} ({reason})"
                self._schedule_restart(slot, now)  # a worker that served is replaced at once
        elif slot.successor is worker:
            slot.successor = None
        state.retiring.append(worker)

    def _sample(self, now: float) -> None:
        for worker in list(self.state.workers.values()):
            sample = self._sample_one(worker)
            if sample is None:
                continue
            worker.sample = sample
            try:
                self.metrics.worker_process(worker.pid, rss_bytes=sample["rss"], uss_bytes=sample["uss"],
                                            cpu_seconds=sample["cpu_ms"] / 1000, open_fds=sample["fds"])
            except KeyError:
                pass  # exited between the sample and now
            if worker.state != READY or self.phase is not Phase.RUNNING:
                continue
            verdict = policies.check_sample(self.config_of(worker), sample, worker.breaches)
            if verdict is not None:
                self.recycle(worker, verdict.reason, verdict.detail)

    def _sample_one(self, worker: WorkerProcess) -> dict[str, int] | None:
        try:
            return procfs.sample(worker.pid)
        except (OSError, ValueError, IndexError):  # it exited meanwhile (or /proc said something odd)
            return None

    def config_of(self, worker: WorkerProcess) -> Config:
        """The config ``worker`` was started with (the serving config if its generation is gone)."""
        return self.state.config_of(worker) or self.config

    # ------------------------------------------------------------------ recycling

    def recycle(self, worker: WorkerProcess, reason: str, detail: str = "") -> bool:
        """Replace a worker without losing capacity: its successor boots first, then it drains.

        At most one recycle runs at a time; a policy that trips meanwhile trips again
        on a later sample.
        """
        state = self.state
        if worker.state != READY or self.phase is not Phase.RUNNING or self.reloader.busy:
            return False
        if state.recycling is not None and state.recycling.alive:
            return False
        generation = state.generation_of(worker)
        slot = generation.slot_of(worker) if generation else None
        if generation is None or slot is None or slot.worker is not worker or slot.successor is not None:
            return False
        if slot.restart_at is not None and self.now() < slot.restart_at:
            return False  # the last replacement failed to boot: back off
        log.info("recycling worker %d (pid %d, slot %d): %s%s", worker.id, worker.pid, slot.index, reason,
                 f" ({detail})" if detail else "")
        worker.stop_reason = reason
        state.recycling = worker
        if self.start_worker(generation, slot, successor_of=worker) is None:
            state.recycling = None
            worker.stop_reason = None
            return False
        return True

    def retire(self, worker: WorkerProcess, reason: str) -> None:
        """Drain ``worker`` (SIGTERM): it finishes its requests and exits; it is no longer in a slot."""
        if worker not in self.state.retiring:
            self.state.retiring.append(worker)
        worker.stop_gracefully(reason, self.config_of(worker).graceful_timeout, self.now())
        self.metrics.worker_draining(worker.pid)
        if self.balance is not None and worker.balance_cell >= 0:
            self.balance.set(worker.balance_cell, False, 0)

    # ------------------------------------------------------------------ reload (reload.py)

    def _on_hup(self) -> None:
        log.info("SIGHUP: reloading")
        self.start_reload(notify=True)

    def start_reload(self, waiter: asyncio.Future[ReloadOutcome] | None = None, notify: bool = True
                     ) -> None:
        """Deploy: a new generation replaces the current one once it passed the gate (reload.py)."""
        self.reloader.request(waiter, notify)

    def retry_boot(self) -> None:
        """``--reload``, and no worker could boot yet: start the empty slots again, since a save may
        have fixed the app (devreload.py). Nothing else is running to reload."""
        generation = self.state.generation
        if generation is None or self.phase is not Phase.STARTING:
            return
        for slot in generation.slots:
            if slot.worker is None:
                slot.failures = 0  # a new attempt with new code, not a crash loop
                self.start_worker(generation, slot)

    def generation_serves(self, generation: Generation) -> None:
        """A reload's generation now serves (its cut-over)."""
        state = self.state
        state.pending = None
        state.generation = generation
        state.recycling = None
        self.config = generation.config
        self.phase = Phase.RUNNING
        self.metrics.set_generation(generation.number)
        self.metrics.set_desired_workers(len(generation.slots))
        state.respawns.resize(len(generation.slots))

    def reload_finished(self, outcome: ReloadOutcome, result: ReloadResult) -> None:
        self.metrics.reload_finished(result, outcome.duration)

    def code_description(self, generation: Generation | None = None) -> str:
        """The app code a generation serves, as its workers reported it (e.g. ``v1.4.2 git 3f2a9c01de``)."""
        generation = generation or self.state.generation
        if generation is None:
            return ""
        seen = [identity.describe_app(w.identity) for w in generation.workers() if w.identity]
        return max(set(seen), key=seen.count) if seen else ""

    # ------------------------------------------------------------------ scaling, logs

    def scale(self, delta: int) -> None:
        """TTIN/TTOU: one worker more or fewer in the serving generation (never below one)."""
        generation = self.state.generation
        if generation is None or self.phase not in (Phase.RUNNING, Phase.STARTING):
            return
        if delta > 0:
            self._scale_up(generation)
        elif len(generation.slots) > 1:
            self._scale_down(generation)
        else:
            log.info("TTOU: already at one worker")
        self.update_status(force=True)

    def _scale_up(self, generation: Generation) -> None:
        slot = Slot(len(generation.slots))
        if self.config.reuse_port and not self.listeners.from_systemd:
            known = {id(item) for item in self.listeners.items}
            try:
                bind_reuse_port_group(self.listeners, self.config.bind, self.config.backlog, slot.index + 1)
            except (SocketError, OSError) as exc:
                log.error("TTIN: cannot bind a socket for slot %d: %s", slot.index, exc)
                return
            for item in self.listeners.items:
                if id(item) not in known:
                    self._watch_listener(item)
            self._renew_standby(generation)  # it holds every slot's sockets: not the new one's
        generation.slots.append(slot)
        self.metrics.set_desired_workers(len(generation.slots))
        self.state.respawns.resize(len(generation.slots))
        log.info("TTIN: adding a worker (now %d)", len(generation.slots))
        self.start_worker(generation, slot)

    def _scale_down(self, generation: Generation) -> None:
        slot = generation.slots.pop()
        self.metrics.set_desired_workers(len(generation.slots))
        self.state.respawns.resize(len(generation.slots))
        log.info("TTOU: removing the worker of slot %d (now %d)", slot.index, len(generation.slots))
        for worker in slot.workers():
            if self.state.recycling is worker:
                self.state.recycling = None
            worker.stop_reason = policies.SCALE_DOWN
            self.retire(worker, policies.SCALE_DOWN)
        if self.config.reuse_port and not self.listeners.from_systemd:
            # The standby holds a copy of the closed socket, which would go on taking its share
            # of new connections and never accept them.
            self._renew_standby(generation)
            self._close_reuse_port_group(slot.index + 1)

    def _renew_standby(self, generation: Generation) -> None:
        """The slots' sockets changed: retire the standby (booting or booted); a new one boots with
        the new set on the next tick."""
        seat = generation.standby_seat
        if seat.worker is not None:
            standby, seat.worker, seat.restart_at = seat.worker, None, None
            self.retire(standby, policies.SCALE_DOWN)

    def _close_reuse_port_group(self, group: int) -> None:
        for item in [i for i in self.listeners.items if i.group == group]:
            # Connections queued on this socket are reset when the last copy closes,
            # unless net.ipv4.tcp_migrate_req=1 moves them to the other sockets.
            self.listeners.items.remove(item)
            self.metrics.remove_listener(item.sock)
            item.close()

    def reopen_logs(self) -> None:
        """USR1: reopen log files (ours and, by forwarding the signal, the workers')."""
        reopen_log_files()
        for worker in self.state.workers.values():
            worker.signal(signal.SIGUSR1)
        log.info("USR1: log files reopened")

    # ------------------------------------------------------------------ stopping

    def stop(self, graceful: bool) -> None:
        """TERM: graceful (drain within graceful_timeout). INT/QUIT: fast."""
        now = self.now()
        workers = self.state.workers
        if self.phase is Phase.STOPPING:
            if not graceful and self.stop_mode == "graceful":
                log.info("fast stop requested during graceful stop")
                self.stop_mode = "fast"
                if self._drain_timer is not None:  # during drain_delay: stop now, not when it ends
                    self._drain_timer.cancel()
                    self._drain_timer = None
                for worker in list(workers.values()):
                    worker.stop_fast(policies.STOP, now, FAST_STOP_GRACE)
            return
        self.phase = Phase.STOPPING
        self.stop_mode = "graceful" if graceful else "fast"
        if self.fatal_error is None:
            log.info("%s stop: stopping %d workers", self.stop_mode, len(workers))
        grace = self.config.graceful_timeout if graceful else FAST_STOP_GRACE
        delay = self.config.drain_delay if graceful and self.fatal_error is None and self._loop else 0.0
        self.stop_deadline = now + delay + grace + 5.0
        self.notifier.stopping(self.fatal_error[:400] if self.fatal_error else
                               f"stopping: leaving the load balancers for {delay:g}s (drain_delay), still serving"
                               if delay > 0 else f"stopping: draining {len(workers)} workers")
        self.reloader.abort("corral is stopping")
        if delay > 0 and self._loop is not None:
            self._announce_drain(delay, "stop")
            self.last_extend = now
            # systemd's stop timeout must not run out during the delay (the tick extends it further).
            self.notifier.extend_timeout(delay + grace + 15)
            self._drain_timer = self._loop.call_later(delay, self._stop_workers, graceful)
            return
        self._stop_workers(graceful)

    def _stop_workers(self, graceful: bool) -> None:
        """The stop proper: drain (or, fast, close) every worker; after drain_delay if one is set."""
        self._drain_timer = None
        now = self.now()
        workers = self.state.workers
        if self.stop_mode == "fast":
            graceful = False
        for worker in list(workers.values()):
            if worker.state == KILLED:
                continue
            if graceful and worker.state != BOOTING:
                worker.stop_gracefully(policies.STOP, self.config_of(worker).graceful_timeout, now)
            else:
                worker.stop_fast(policies.STOP, now, FAST_STOP_GRACE)
        # Our copies of the app listeners: once the workers have closed theirs too (as they begin
        # to drain), new connections are refused at once instead of queued and then reset at exit.
        # systemd keeps its own copy of a socket unit's socket, so a restart still finds them queued.
        for item in self.listeners.http():
            self.listeners.items.remove(item)
            self.metrics.remove_listener(item.sock)
            item.close()
        self._check_stopped()

    # ------------------------------------------------------------------ drain_delay (probing.py)

    def _announce_drain(self, delay: float, why: str) -> None:
        """/readyz says 503 draining and the agent says drain from now on; the workers keep serving
        but close each connection after its response, so clients move to other hosts."""
        self.drain_announced = True
        log.info("%s: telling load balancers this host drains (/readyz 503, agent drain) for drain_delay=%gs; "
                 "still serving meanwhile, every response closing its connection", why, delay)
        self._tell_drain(True)

    def _tell_drain(self, on: bool) -> None:
        for worker in self.state.workers.values():
            worker.channel.send(protocol.drain_notice(on))

    async def drain_before_upgrade(self) -> None:
        """Before an in-place upgrade (reload.py): announce the drain, then wait drain_delay."""
        delay = self.config.drain_delay
        if delay <= 0:
            return
        self._announce_drain(delay, "in-place upgrade")
        await asyncio.sleep(delay)

    def call_off_drain(self) -> None:
        """The upgrade did not happen: take traffic again (unless a stop took over meanwhile)."""
        if self.drain_announced and self.phase is not Phase.STOPPING:
            self.drain_announced = False
            self._tell_drain(False)
            log.info("in-place upgrade did not happen: taking traffic again")

    def _check_stopped(self) -> None:
        self._reap()
        if self.phase is Phase.STOPPING and not self.state.workers and self._done is not None:
            if self.fatal_error is None:
                log.info("all workers stopped; exiting")
            self._done.set()

    def _kill_everything(self) -> None:
        if self.zygotes is not None:
            self.zygotes.close()
        for worker in list(self.state.workers.values()):
            worker.signal(signal.SIGKILL)
            try:
                worker.proc.wait(KILL_WAIT)
            except subprocess.TimeoutExpired:
                # Only a process stuck in the kernel (uninterruptible I/O) outlives SIGKILL.
                log.error("worker %d (pid %d) is still alive %gs after SIGKILL (stuck in the kernel?); "
                          "exiting without it", worker.id, worker.pid, KILL_WAIT)
            worker.close()
        self.state.workers.clear()

    # ------------------------------------------------------------------ systemd and status

    def _watchdog(self, now: float) -> None:
        usec = self.notifier.watchdog_usec
        if not usec or now - self.last_watchdog < usec / 2_000_000:
            return
        fresh = any(w.state == READY and (w.heartbeat_age(now) or 0) < self.config_of(w).timeout
                    for w in self.state.workers.values())
        if fresh:
            self.last_watchdog = now
            self.notifier.watchdog()

    def status_line(self) -> str:
        return status_line(self)

    def update_status(self, force: bool = False) -> None:
        """STATUS= for systemd, at most once a second unless ``force``."""
        now = self.now()
        if not force and now - self._last_status < 1.0:
            return
        self._last_status = now
        if self.phase is not Phase.STOPPING:
            self.notifier.status(self.status_line())


def _anything_ready(generation: Generation) -> bool:
    return any(w.ready_at is not None for w in generation.workers())


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _boot_fix_hint(error: str | None) -> str:
    if error and error.startswith("invalid engine setting"):
        return "; fix the config (try `corral check`), then start again"
    return "; fix the app (try `corral check`), then start again"


@functools.lru_cache(maxsize=8)
def _engine_default(name: str) -> Any:
    spec = engine_keys().get(name)
    return spec.default if spec is not None else None


def _in_flight_slots(config: Config) -> int:
    """In-flight table slots for a worker: one per connection it may hold."""
    return inflight.slots_for(config.engine.get("max_connections") or _engine_default("max_connections") or 1024)


def _error_suffix(worker: WorkerProcess) -> str:
    return f": {worker.boot_error}" if worker.boot_error else ""
