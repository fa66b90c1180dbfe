"""The reload transaction: ``systemctl reload`` (or SIGHUP) as a zero-downtime deploy.

One transaction at a time; a request that arrives while one runs is answered by
the next one (it may be for code written after the running one read its own).

1. ``RELOADING=1`` + ``MONOTONIC_USEC`` (unless ``corral reload`` already sent them
   and waited on ``BARRIER=1``).
2. Re-read and validate the config. Invalid: abort; the old generation keeps
   serving, the reason goes to STATUS, ``READY=1``, the reload reports failure.
3. corral's own code changed on disk: re-execute the supervisor in place
   (``reexec``), which then carries on from step 4 with the new code.
4. Start the new generation: ``surge`` starts every new worker at once;
   ``rolling`` starts ``reload_batch`` at a time.
5. Gate: a new worker counts only once it said ``ready``, which a worker does
   after importing the app, finishing lifespan startup, getting an answer up to
   ``warmup.max_status`` to its warm-up request (on by default: lazy frameworks
   such as Django load their URLconf and views on the first request) and, with
   ``health_check:``, the expected answer to a probe, both sent through the app
   to itself (``corral.worker.probe``). Within ``reload_timeout`` (per batch
   when rolling), or the transaction rolls back. Each new worker is told it
   belongs to a reload (``reload_gate``): only then does a failed warm-up fail
   its boot, since only then is there older code to fall back to.
6. Drain the old workers that the gated ones replace (when rolling with
   ``reload_rollback: full``, the default, park them instead until the last
   batch is ready: see below): SIGTERM, after which each
   stops accepting, answers busy connections' last response with
   ``Connection: close``, closes idle keep-alive connections, and finishes its
   in-flight requests within ``graceful_timeout``. ``READY=1`` (and the answer to
   ``corral reload``) waits until every drained worker has closed its idle
   connections ("quiesced"), so that every request sent after ``systemctl
   reload`` returns is served by the new code.
7. ``READY=1`` with the new STATUS (generation, the app's code identity).

Rollback: a new worker that exits or fails its probe before it is ready, or a
batch not ready within ``reload_timeout``: the new workers are stopped, the old
generation never stopped serving, STATUS says why, the reload reports failure.
``READY=1`` follows every ``RELOADING=1``, whatever happens (systemd 252 leaves
``systemctl reload`` hanging otherwise).

Rolling rollback. A failure after the first batch cannot start the old code
again: it is gone from disk, and interpreters load code when they start. So
with ``reload_rollback: full`` the old workers that a batch replaces are
*parked*, not drained: they stop accepting new connections (their open ones are
still answered) and keep the old code loaded. On success they drain with the
rest at cut-over; on failure they accept again, back in their slots, and the
new workers of the replaced slots drain: the old code serves on every slot,
as if the reload had never started. The price is memory: by the last batch
the old generation is still whole, as with ``surge``. ``reload_rollback:
partial`` lets replaced workers exit at once (``reload_batch`` extra workers at
most); a failure after the first batch then leaves the replaced slots on the
new code, and the reload reports the mixed state. A parked worker that dies
meanwhile cannot come back either: its slot keeps its new worker, and the
report says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from corral.config import Config, ConfigError

# Imported now, not when a reload needs them: after a package upgrade the files on disk are the
# new version's, and the running (old) code must not load new modules into itself.
from corral.supervisor import policies, reexec
from corral.supervisor.identity import CodeIdentity
from corral.supervisor.slots import Generation, Slot
from corral.supervisor.state import Phase, ReloadOutcome, SupervisorState
from corral.supervisor.worker_process import BOOTING, READY, WorkerProcess
from corral.worker import protocol
from corral.worker.protocol import Kind

__all__ = ["ReloadHost", "ReloadOutcome", "ReloadResult", "Reloader", "Rollback"]

log = logging.getLogger("corral.reload")

SURGE = "surge"
ROLLING = "rolling"
ROLLBACK = "rollback"

# How long READY waits, beyond drain_linger, for a drained worker to say it closed its idle
# connections (an old worker blocked in the app says nothing; READY must come anyway).
QUIESCE_GRACE = 3.0
EXTEND_EVERY = 5.0


class Rollback(StrEnum):
    """``reload_rollback``: what a rolling reload can undo when a batch after the first one fails."""

    FULL = "full"  # replaced old workers are parked until the last batch is ready
    PARTIAL = "partial"  # replaced old workers exit at once: less memory, the replaced slots stay new


class ReloadResult(StrEnum):
    """How a transaction ended, as the metrics count it."""

    SUCCESS = "success"
    ROLLED_BACK = "rolled_back"  # the new generation failed; the old one serves
    ABORTED = "aborted"  # nothing was started (config error, refused self-upgrade)


class ReloadNotifier(Protocol):
    """The sd_notify messages a reload sends (``notify.Notifier``)."""

    def ready(self, status: str | None = None) -> None: ...
    def reloading(self) -> None: ...
    def extend_timeout(self, seconds: float) -> None: ...


class BindsFixed(Protocol):
    @property
    def from_systemd(self) -> bool: ...


class ReloadHost(Protocol):
    """What the reloader needs from the supervisor that runs it. The reloader edits the
    shared ``state`` (generations, retiring workers) and asks the host for every action that
    touches processes, systemd or metrics."""

    phase: Phase

    @property
    def state(self) -> SupervisorState: ...
    @property
    def config(self) -> Config: ...
    @property
    def reload_config(self) -> Callable[[], Awaitable[Config]] | None: ...
    @property
    def notifier(self) -> ReloadNotifier: ...
    @property
    def listeners(self) -> BindsFixed: ...
    @property
    def code_identity(self) -> CodeIdentity: ...
    @property
    def argv(self) -> Sequence[str]: ...

    def now(self) -> float:
        """The supervisor's clock (CLOCK_MONOTONIC)."""
        ...

    def installed_code(self) -> CodeIdentity:
        """corral's code on disk now: when it differs from ``code_identity``, the reload upgrades in place."""
        ...

    def reexec_state(self) -> dict[str, Any]:
        """Everything a re-executed image needs (``reexec.capture``)."""
        ...

    async def drain_before_upgrade(self) -> None:
        """Before an in-place upgrade: tell the load balancers this host drains for ``drain_delay``
        (still serving), so that the exec happens with no new traffic arriving."""
        ...

    def call_off_drain(self) -> None:
        """The upgrade did not happen: the host takes traffic again."""
        ...

    def start_worker(self, generation: Generation, slot: Slot) -> WorkerProcess | None: ...
    def retire(self, worker: WorkerProcess, reason: str) -> None: ...
    def config_of(self, worker: WorkerProcess) -> Config: ...
    def generation_serves(self, generation: Generation) -> None:
        """Cut-over: ``generation`` (the pending one) now serves; the phase is back to running."""
        ...
    def reload_finished(self, outcome: ReloadOutcome, result: ReloadResult) -> None: ...
    def update_status(self, force: bool = False) -> None: ...
    def status_line(self) -> str: ...
    def code_description(self, generation: Generation | None = None) -> str: ...


@dataclass
class Transaction:
    started: float
    waiters: list[asyncio.Future[ReloadOutcome]] = field(default_factory=list)
    config: Config | None = None
    generation: Generation | None = None  # the new one (the supervisor's ``pending``)
    old: Generation | None = None
    batches: list[list[int]] = field(default_factory=list)  # slot indices, in start order
    batch: int = -1  # index into batches of the batch booting now
    deadline: float | None = None  # reload_timeout of the booting batch
    quiescing: set[int] = field(default_factory=set)  # ids of drained workers not yet quiet
    parked: dict[int, list[WorkerProcess]] = field(default_factory=dict)  # slot index -> replaced old workers
    quiesce_deadline: float | None = None
    outcome: ReloadOutcome | None = None  # decided; READY waits for the quiescing workers
    may_reexec: bool = True  # False for the transaction a re-executed image resumes (no exec loop)
    task: asyncio.Task[None] | None = None


class Reloader:
    """Runs reload transactions for one supervisor (all on its event loop)."""

    def __init__(self, sup: ReloadHost) -> None:
        self.sup = sup
        self.active: Transaction | None = None
        self.queued = False  # one more transaction once this one (or the start-up) is over
        self.queued_waiters: list[asyncio.Future[ReloadOutcome]] = []
        self.last: ReloadOutcome | None = None
        self.last_extend = 0.0

    @property
    def busy(self) -> bool:
        return self.active is not None

    def parked_ids(self) -> set[int]:
        """The ids of the old workers the running transaction parked (they accept nothing new)."""
        txn = self.active
        return {w.id for parked in txn.parked.values() for w in parked} if txn is not None else set()

    def replacing(self) -> int:
        """How many slots a rolling reload is replacing right now (its booting batch): the capacity it
        takes away for the moment. 0 with no reload, for a surge reload (it adds workers instead)
        and once the outcome is decided."""
        txn = self.active
        if txn is None or txn.outcome is not None or len(txn.batches) < 2 or not 0 <= txn.batch < len(txn.batches):
            return 0
        return len(txn.batches[txn.batch])

    # ------------------------------------------------------------------ requests

    def request(self, waiter: asyncio.Future[ReloadOutcome] | None = None, notify: bool = True) -> None:
        """Start a reload, or queue one; ``waiter`` gets the outcome. ``notify=False``: RELOADING=1
        was already sent (by `corral reload`, as an ExecReload= process)."""
        sup = self.sup
        if sup.phase is Phase.STOPPING:
            if waiter is not None and not waiter.done():
                waiter.set_result(ReloadOutcome(False, sup.state.serving_number(), "corral is stopping"))
            if not notify:
                sup.notifier.ready(sup.status_line())  # answer the RELOADING=1 sent for us
            return
        if self.active is not None or sup.phase is Phase.STARTING:
            self.queued = True
            if waiter is not None:
                self.queued_waiters.append(waiter)
            return
        self._begin([waiter] if waiter is not None else [], notify)

    def resume(self, waiters: list[asyncio.Future[ReloadOutcome]]) -> None:
        """In a re-executed image: carry on with the reload that caused the exec (RELOADING=1 was
        sent before it). It never re-executes again, whatever it finds on disk."""
        self._begin(waiters, notify=False, may_reexec=False)

    def _begin(self, waiters: list[asyncio.Future[ReloadOutcome]], notify: bool, may_reexec: bool = True) -> None:
        sup = self.sup
        if notify:
            sup.notifier.reloading()
        txn = self.active = Transaction(self.sup.now(), waiters, may_reexec=may_reexec)
        sup.phase = Phase.RELOADING
        txn.task = asyncio.ensure_future(self._prepare(txn))

    async def _prepare(self, txn: Transaction) -> None:
        sup = self.sup
        try:
            config = sup.config
            if sup.reload_config is not None:
                try:
                    config = await sup.reload_config()
                except ConfigError as exc:
                    self._finish(txn, ReloadOutcome(False, sup.state.serving_number(), f"config error: {exc}",
                                                    self.sup.now() - txn.started), ReloadResult.ABORTED)
                    return
            if await self._upgrade_in_place(txn):
                return  # not reached when the exec succeeds
            if txn is not self.active or sup.phase is Phase.STOPPING:
                return
            self._start(txn, config)
        except Exception as exc:  # a bug must not leave systemd waiting for READY=1
            log.exception("reload failed unexpectedly")
            if self.active is txn:
                self._rollback(txn, f"internal error: {exc!r}")

    async def _upgrade_in_place(self, txn: Transaction) -> bool:
        """corral's own code changed: preflight it and exec it (same PID). False: no upgrade needed."""
        sup = self.sup
        code = sup.code_identity
        if not txn.may_reexec:
            return False
        installed = sup.installed_code()
        if installed == code:
            return False
        log.info("reload: corral's code changed on disk (%s -> %s): re-executing the supervisor in place",
                 code.short(), installed.short())
        try:
            state = sup.reexec_state()
            await reexec.preflight(sup.argv, state)
            if txn is not self.active or sup.phase is Phase.STOPPING:
                return True
            await sup.drain_before_upgrade()
            if txn is not self.active or _stopping(sup):
                return True  # a stop took over during the delay: it stays drained
            state = sup.reexec_state()  # fresh: workers may have changed during the preflight
            reexec.exec_in_place(state)
        except reexec.ReexecError as exc:
            sup.call_off_drain()
            self._finish(txn, ReloadOutcome(False, sup.state.serving_number(), f"self-upgrade refused: {exc}; still "
                                            f"running {code.short()}", self.sup.now() - txn.started), ReloadResult.ABORTED)
        return True

    # ------------------------------------------------------------------ the new generation

    def _start(self, txn: Transaction, config: Config) -> None:
        sup = self.sup
        if not sup.listeners.from_systemd and config.bind != sup.config.bind:
            log.warning("reload: bind changed (%s -> %s); listening addresses change only on restart",
                        ", ".join(map(str, sup.config.bind)), ", ".join(map(str, config.bind)))
        txn.config = config
        state = sup.state
        txn.old = state.generation
        state.generation_counter += 1
        generation = Generation(state.generation_counter, config)
        generation.slots = [Slot(index) for index in range(config.workers)]
        txn.generation = state.pending = generation
        batch = config.workers if _strategy(config) == SURGE else max(1, min(_batch(config), config.workers))
        indices = list(range(config.workers))
        txn.batches = [indices[i:i + batch] for i in range(0, len(indices), batch)]
        log.info("reload: generation %d starting (%d workers, %s%s%s)", generation.number, config.workers,
                 _strategy(config), f", batches of {batch}" if len(txn.batches) > 1 else "",
                 ", replaced workers parked until the last batch is ready" if _parks(txn) else "")
        self._start_batch(txn, 0)

    def _start_batch(self, txn: Transaction, number: int) -> None:
        sup = self.sup
        assert txn.generation is not None and txn.config is not None
        txn.batch = number
        txn.deadline = self.sup.now() + _reload_timeout(txn.config)
        for index in txn.batches[number]:
            slot = txn.generation.slots[index]
            # None: it could not start (on_spawn_failed rolled back), or waits for its zygote
            # (slot.waiting), which the supervisor starts it after.
            sup.start_worker(txn.generation, slot)
            if txn.outcome is not None:
                return
        sup.update_status(force=True)

    def on_ready(self, worker: WorkerProcess) -> None:
        """A worker of the new generation passed the gate."""
        txn = self.active
        if txn is None or txn.generation is None or txn.batch < 0 or txn.outcome is not None:
            return
        slots = [txn.generation.slots[i] for i in txn.batches[txn.batch]]
        if not all(slot.worker is not None and slot.worker.state == READY for slot in slots):
            return
        self._replace(txn, [slot.index for slot in slots])
        if txn.batch + 1 < len(txn.batches):
            log.info("reload: batch %d/%d of generation %d ready", txn.batch + 1, len(txn.batches),
                     txn.generation.number)
            self._start_batch(txn, txn.batch + 1)
        else:
            self._cutover(txn)

    def _replace(self, txn: Transaction, indices: list[int]) -> None:
        """Drain (or, before the last batch, park) the old workers of these slots; with the last
        batch, also drain those of slots no longer wanted."""
        old = txn.old
        if old is None:
            return
        last = txn.batch + 1 >= len(txn.batches)
        new_slots = len(txn.generation.slots) if txn.generation is not None else 0
        for slot in old.slots:
            if slot.index in indices or (last and slot.index >= new_slots):
                for worker in slot.workers():
                    if not last and _parks(txn) and worker is slot.worker and worker.state == READY:
                        self._park(txn, slot.index, worker)
                    else:
                        self._drain(txn, worker)
                slot.worker = slot.successor = None
                slot.restart_at = None

    def _park(self, txn: Transaction, index: int, worker: WorkerProcess) -> None:
        """Keep a replaced old worker, not accepting, until the reload is decided (``Rollback.FULL``)."""
        state = self.sup.state
        if state.recycling is worker:
            state.recycling = None
        worker.channel.send(protocol.bare(Kind.PARK))
        txn.parked.setdefault(index, []).append(worker)
        log.info("reload: worker %d (pid %d, slot %d) of generation %d parked: it keeps the old code loaded "
                 "until the last batch is ready", worker.id, worker.pid, index, worker.generation)

    def _drain(self, txn: Transaction, worker: WorkerProcess) -> None:
        sup = self.sup
        state = sup.state
        if state.recycling is worker:
            state.recycling = None
        if worker.state == BOOTING:  # a recycle's successor that was still booting
            worker.stop_fast(policies.RELOAD, sup.now())
            if worker not in state.retiring:
                state.retiring.append(worker)
            return
        worker.stop_reason = worker.stop_reason or policies.RELOAD
        sup.retire(worker, policies.RELOAD)
        if worker.alive:
            txn.quiescing.add(worker.id)

    def _cutover(self, txn: Transaction) -> None:
        sup = self.sup
        new = txn.generation
        assert new is not None
        now = sup.now()
        sup.generation_serves(new)
        for worker in [w for parked in txn.parked.values() for w in parked]:
            self._drain(txn, worker)  # the reload is decided: the old code is no longer needed
        txn.parked.clear()
        identity = sup.code_description(new)
        txn.outcome = ReloadOutcome(True, new.number, f"generation {new.number} serving"
                                    + (f" ({identity})" if identity else ""), now - txn.started)
        log.info("reload: generation %d ready in %.2fs%s; draining generation %d", new.number,
                 txn.outcome.duration, f" ({identity})" if identity else "", txn.old.number if txn.old else 0)
        txn.quiesce_deadline = now + self._linger(txn) + QUIESCE_GRACE
        self._maybe_finish(txn)

    def _linger(self, txn: Transaction) -> float:
        """The longest drain_linger among the drained workers READY waits for."""
        lingers = [self.sup.config_of(w).drain_linger for i in txn.quiescing
                   if (w := self.sup.state.worker_by_id(i)) is not None]
        return max([*lingers, 0.0])

    def on_quiesced(self, worker: WorkerProcess) -> None:
        """A drained worker stopped accepting and closed its idle connections (or exited)."""
        txn = self.active
        if txn is None or worker.id not in txn.quiescing:
            return
        txn.quiescing.discard(worker.id)
        self._maybe_finish(txn)

    def _maybe_finish(self, txn: Transaction) -> None:
        if txn.outcome is None:
            return
        if txn.quiescing and txn.quiesce_deadline is not None and self.sup.now() < txn.quiesce_deadline:
            return
        if txn.quiescing:
            log.warning("reload: %d drained worker(s) did not report closing their idle connections in time; "
                        "sending READY anyway", len(txn.quiescing))
        self._finish(txn, txn.outcome, ReloadResult.SUCCESS if txn.outcome.ok else ReloadResult.ROLLED_BACK)

    # ------------------------------------------------------------------ failure

    def on_spawn_failed(self, generation: Generation, why: str) -> None:
        """A worker of the new generation could not be started (no process could be made, or its
        zygote died or stayed silent while importing): the reload rolls back."""
        txn = self.active
        if txn is None or txn.generation is not generation or txn.outcome is not None:
            return
        self._rollback(txn, f"cannot start a worker: {why}")

    def on_lost(self, worker: WorkerProcess, description: str) -> bool:
        """A worker of the new generation exited. True: the transaction handled it."""
        txn = self.active
        if txn is None or txn.generation is None or txn.outcome is not None:
            return False
        if worker.ready_at is not None:
            return False  # it served, then crashed: an ordinary crash, restarted in its slot
        log.error("reload: worker %d (pid %d, slot %d) of generation %d %s before it was ready%s", worker.id,
                  worker.pid, worker.slot, txn.generation.number, description,
                  f": {worker.boot_error}" if worker.boot_error else "")
        # The app's own error first: it is what STATUS= and `systemctl reload`'s caller must see.
        self._rollback(txn, worker.boot_error or f"a new worker {description} before it was ready",
                       exclude=worker)
        return True

    def _rollback(self, txn: Transaction, reason: str, exclude: WorkerProcess | None = None) -> None:
        sup = self.sup
        now = self.sup.now()
        new = txn.generation
        sup.state.pending = None
        sup.phase = Phase.RUNNING
        if new is None:
            self._finish(txn, ReloadOutcome(False, sup.state.serving_number(), reason, now - txn.started),
                         ReloadResult.ABORTED)
            return
        done = [i for batch in txn.batches[:max(txn.batch, 0)] for i in batch]
        booting = txn.batches[txn.batch] if 0 <= txn.batch < len(txn.batches) else []
        for index in booting:
            for worker in new.slots[index].workers():
                if worker is not exclude and worker.alive:
                    worker.stop_reason = ROLLBACK
                    worker.stop_fast(ROLLBACK, now)
                    if worker not in sup.state.retiring:
                        sup.state.retiring.append(worker)
            new.slots[index].worker = new.slots[index].successor = None
        if not done:
            log.error("reload: %s; rolling back: generation %d keeps serving", reason, sup.state.serving_number())
            message = f"gen {new.number} rolled back, gen {sup.state.serving_number()} serves: {reason}"
        else:
            message = self._roll_back_replaced(txn, done, reason)
            log.error("reload: %s", message)
        txn.outcome = ReloadOutcome(False, sup.state.serving_number(), message, now - txn.started)
        txn.quiesce_deadline = now + self._linger(txn) + QUIESCE_GRACE
        self._maybe_finish(txn)

    def _roll_back_replaced(self, txn: Transaction, done: list[int], reason: str) -> str:
        """Rolling, after the first batch: the slots already replaced get their parked old workers
        back, and their new workers drain; a slot with no parked worker left keeps its new one.
        Returns the reload's message."""
        old, new = txn.old, txn.generation
        assert old is not None and new is not None
        mixed: list[int] = []
        back = 0
        for index in done:
            slot = next((s for s in old.slots if s.index == index), None)
            parked = [w for w in txn.parked.pop(index, []) if w.alive and w.state == READY]
            if slot is not None and parked:
                slot.worker = parked[0]
                slot.failures, slot.restart_at = 0, None
                back += 1
                for worker in parked:
                    worker.channel.send(protocol.bare(Kind.UNPARK))
                # Unparked first: the slot's old worker accepts again before its new one stops.
                self._drain_new(txn, index)
            elif slot is None and _parks(txn):
                self._drain_new(txn, index)  # a slot the new config added: the old generation had none
            else:
                if slot is None:
                    slot = Slot(index)
                    old.slots.append(slot)
                slot.worker = new.slots[index].worker
                mixed.append(index)
        old.slots.sort(key=lambda s: s.index)
        for worker in [w for parked in txn.parked.values() for w in parked]:
            self._drain(txn, worker)  # parked for a slot no longer known: nothing to return to
        txn.parked.clear()
        where = f"at batch {txn.batch + 1}/{len(txn.batches)}"
        if not mixed:
            return (f"gen {new.number} rolled back {where}, gen {old.number} serves on every slot again "
                    f"({back} parked worker{'s' if back != 1 else ''} back): {reason}")
        why = ("reload_rollback: partial lets replaced workers exit" if not _parks(txn)
               else "their parked old workers are gone")
        return (f"rolling reload stopped {where}: {reason}; {len(mixed)} of {len(old.slots)} workers run gen "
                f"{new.number}, the others gen {old.number} ({why})")

    def _drain_new(self, txn: Transaction, index: int) -> None:
        """Drain the new generation's workers of a replaced slot (they served: a graceful stop)."""
        assert txn.generation is not None
        slot = txn.generation.slots[index]
        for worker in slot.workers():
            worker.stop_reason = ROLLBACK
            self._drain(txn, worker)
        slot.worker = slot.successor = None

    def _finish(self, txn: Transaction, outcome: ReloadOutcome, result: ReloadResult) -> None:
        sup = self.sup
        if self.active is txn:
            self.active = None
        if sup.phase is Phase.RELOADING:
            sup.phase = Phase.RUNNING
        if sup.state.pending is txn.generation:
            sup.state.pending = None
        self.last = sup.state.last_reload = outcome
        if not outcome.ok:
            log.error("reload failed: %s", outcome.message)
        sup.reload_finished(outcome, result)
        # READY=1 after every RELOADING=1, success or not: systemd 252 hangs otherwise.
        sup.notifier.ready(sup.status_line())
        for waiter in txn.waiters:
            if not waiter.done():
                waiter.set_result(outcome)

    def abort(self, message: str) -> None:
        """corral is stopping: answer everyone waiting (STOPPING=1 follows, no READY)."""
        sup = self.sup
        txn, self.active = self.active, None
        waiters = (txn.waiters if txn else []) + self.queued_waiters
        self.queued_waiters, self.queued = [], False
        if txn is not None and txn.task is not None:
            txn.task.cancel()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(ReloadOutcome(False, sup.state.serving_number(), message))

    # ------------------------------------------------------------------ the periodic tick

    def tick(self, now: float) -> None:
        sup = self.sup
        txn = self.active
        if txn is not None:
            if txn.outcome is None and txn.deadline is not None and now > txn.deadline and txn.generation:
                late = [slot.worker for i in txn.batches[txn.batch] if (slot := txn.generation.slots[i]).worker
                        and slot.worker.state != READY]
                detail = ", ".join(f"worker {w.id} (pid {w.pid}) {w.state}" + (f": {w.boot_error}" if w.boot_error
                                                                               else "") for w in late)
                timeout = _reload_timeout(txn.config) if txn.config else 0
                self._rollback(txn, f"not ready within reload_timeout={timeout:g}s "
                                    f"({detail or 'no worker started'})")
            elif txn.outcome is not None:
                txn.quiescing = {i for i in txn.quiescing if sup.state.worker_by_id(i) is not None}
                self._maybe_finish(txn)
            if self.active is txn and now - self.last_extend >= EXTEND_EVERY:
                # A slow boot still progressing: keep systemd's reload timeout (TimeoutStartSec=) ahead.
                self.last_extend = now
                left = (txn.deadline - now) if txn.deadline else 0
                sup.notifier.extend_timeout(max(left, 0) + 15)
        elif self.queued and sup.phase is Phase.RUNNING:
            waiters, self.queued_waiters, self.queued = self.queued_waiters, [], False
            self._begin(waiters, True)

    def on_worker_gone(self, worker: WorkerProcess) -> None:
        """Any worker exited: a drained one counts as quiet; a parked one can no longer come back."""
        txn = self.active
        if txn is None:
            return
        for index, parked in list(txn.parked.items()):
            if worker in parked:
                parked.remove(worker)
                log.warning("reload: parked worker %d (pid %d, slot %d) exited; a rollback can no longer "
                            "bring the old code back to slot %d", worker.id, worker.pid, index, index)
        if worker.id in txn.quiescing:
            self.on_quiesced(worker)


def _stopping(sup: ReloadHost) -> bool:
    """Read after an await (mypy would keep the phase narrowed from before it)."""
    return sup.phase is Phase.STOPPING


def _strategy(config: Config) -> str:
    return config.reload_strategy


def _batch(config: Config) -> int:
    return config.reload_batch


def _reload_timeout(config: Config) -> float:
    return config.reload_timeout


def _parks(txn: Transaction) -> bool:
    """Whether this transaction parks the old workers it replaces (rolling, ``reload_rollback: full``)."""
    config = txn.config
    return (config is not None and len(txn.batches) > 1
            and Rollback(config.reload_rollback) is Rollback.FULL)

