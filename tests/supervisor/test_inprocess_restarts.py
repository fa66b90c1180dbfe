"""Crash handling and recycling, driven in-process (tests/supervisor/fakes.py): a served
worker's crash is replaced at once, a boot failure backs off, the global respawn budget
bounds a crash storm, and the races between a recycle and a reload or an exit."""

from __future__ import annotations

import errno
import signal

import pytest
from fakes import Harness, make_config, run

from corral.supervisor import slots


def test_a_worker_that_served_and_crashed_is_replaced_at_once():
    async def body() -> None:
        h = Harness(make_config(workers=2))
        first, _ = await h.start()
        first.heartbeat(requests_total=5)
        await h.settle()
        await h.exit(first, -signal.SIGSEGV)
        # No tick, no clock move: the replacement is spawned by the wake-up the exit scheduled.
        await h.until(lambda: len(h.spawner.workers) == 3, "the replacement spawned")
        replacement = h.spawner.workers[2]
        assert replacement.process.slot == first.process.slot
        slot = h.state.generation.slots[first.process.slot]
        assert slot.worker is replacement.process and slot.failures == 0
        assert h.restarts() == {"crash": 1}
        h.close()

    run(body)


def test_a_worker_that_never_served_backs_off_doubling():
    async def body() -> None:
        h = Harness(make_config(workers=1))
        (first,) = await h.start()
        await h.exit(first, 1)  # ready, but died before serving anything: the app cannot run
        slot = h.state.generation.slots[0]
        assert slot.failures == 1
        assert slot.restart_at == pytest.approx(h.clock.now + slots.BACKOFF_FIRST)
        h.tick(slots.BACKOFF_FIRST / 2)
        await h.settle()
        assert len(h.spawner.workers) == 1  # still backing off
        h.tick(slots.BACKOFF_FIRST / 2 + 0.001)
        assert len(h.spawner.workers) == 2
        second = h.spawner.workers[1]
        await h.exit(second, 1)  # a boot failure: never ready
        assert slot.failures == 2
        assert slot.restart_at == pytest.approx(h.clock.now + 2 * slots.BACKOFF_FIRST)
        assert h.restarts() == {"crash": 1, "boot_failed": 1}
        h.close()

    run(body)


def test_the_respawn_budget_spaces_out_a_crash_storm():
    async def body() -> None:
        h = Harness(make_config(workers=1))
        await h.start()
        slot = h.state.generation.slots[0]
        for n in range(int(slots.RESPAWN_BURST_PER_SLOT)):  # the burst: replaced at once
            worker = h.spawner.workers[-1]
            worker.ready()
            worker.heartbeat(requests_total=1)
            await h.until(lambda w=worker: w.state == "ready" and w.process.stats, "served")
            spawned = len(h.spawner.workers)
            await h.exit(worker, -signal.SIGSEGV)
            # The clock stands still: only the burst lets these start at once.
            await h.until(lambda s=spawned: len(h.spawner.workers) == s + 1, f"replacement {n + 1} spawned")
        worker = h.spawner.workers[-1]
        worker.ready()
        worker.heartbeat(requests_total=1)
        await h.until(lambda: worker.state == "ready" and worker.process.stats, "served")
        await h.exit(worker, -signal.SIGSEGV)
        # Budget spent: the next start waits one token (1 / rate seconds), though the slot says now.
        assert slot.restart_at == pytest.approx(h.clock.now + 1 / slots.RESPAWNS_PER_SLOT, abs=0.01)
        spawned = len(h.spawner.workers)
        h.tick(0.5)
        assert len(h.spawner.workers) == spawned
        h.tick(0.51)
        assert len(h.spawner.workers) == spawned + 1
        h.close()

    run(body)


def test_a_worker_that_cannot_be_spawned_backs_off_its_slot():
    async def body() -> None:
        h = Harness(make_config(workers=1))
        (first,) = await h.start()
        first.heartbeat(requests_total=1)
        await h.settle()
        h.spawner.failures.append(OSError(errno.ENOENT, "No such file or directory", "/no/python"))
        await h.exit(first, -signal.SIGKILL)
        await h.until(lambda: len(h.spawner.requests) == 2, "a spawn attempted")
        slot = h.state.generation.slots[0]
        assert slot.worker is None and slot.failures == 1
        assert "cannot start" in (slot.last_error or "")
        h.tick(slots.BACKOFF_FIRST + 0.01)
        assert len(h.spawner.workers) == 2
        h.close()

    run(body)


def test_a_recycle_that_meets_a_reload_leaves_only_the_new_generation():
    async def body() -> None:
        h = Harness(make_config(workers=1))
        (old,) = await h.start()
        assert h.sup.recycle(old.process, "memory", "USS over max_memory")
        successor = h.spawner.workers[1]
        assert h.state.recycling is old.process
        waiter = h.reload()
        await h.settle()
        # While the reload runs, no other recycle starts.
        assert h.sup.reloader.busy and not h.sup.recycle(old.process, "memory")
        await h.until(lambda: len(h.spawner.workers) == 3, "generation 2 spawned")
        new = h.spawner.workers[2]
        new.ready()
        await h.until(lambda: signal.SIGTERM in old.proc.signals, "the old worker drained")
        assert signal.SIGQUIT in successor.proc.signals  # the recycle's successor was still booting
        assert h.state.recycling is None
        assert [w.id for w in h.serving()] == [new.id]
        old.quiesced()
        await h.until(waiter.done, "the reload's outcome")
        assert waiter.result().ok
        # The successor's late "ready" must not put it back into a slot.
        successor.ready()
        await h.settle()
        assert [w.id for w in h.serving()] == [new.id]
        h.close()

    run(body)


def test_a_worker_that_dies_while_being_recycled_is_replaced_by_its_successor():
    async def body() -> None:
        h = Harness(make_config(workers=1))
        (old,) = await h.start()
        old.heartbeat(requests_total=10)
        await h.settle()
        assert h.sup.recycle(old.process, "max_requests")
        successor = h.spawner.workers[1]
        await h.exit(old, -signal.SIGKILL)
        slot = h.state.generation.slots[0]
        assert slot.worker is successor.process and slot.successor is None
        assert h.state.recycling is None
        h.tick(1.0)
        assert len(h.spawner.workers) == 2  # no extra start: the successor holds the slot
        successor.ready()
        await h.until(lambda: successor.state == "ready", "the successor ready")
        assert [w.id for w in h.serving()] == [successor.id]
        assert h.restarts() == {"max_requests": 1}
        h.close()

    run(body)


def test_a_successor_that_fails_to_boot_leaves_the_old_worker_serving():
    async def body() -> None:
        h = Harness(make_config(workers=1))
        (old,) = await h.start()
        assert h.sup.recycle(old.process, "lifetime")
        successor = h.spawner.workers[1]
        await h.exit(successor, 1)
        slot = h.state.generation.slots[0]
        assert slot.worker is old.process and slot.successor is None
        assert old.process.stop_reason is None and not old.proc.signals
        assert h.state.recycling is None
        # Backing off: a recycle now is refused; after the backoff it is tried again.
        assert not h.sup.recycle(old.process, "lifetime")
        h.clock.advance(slots.BACKOFF_FIRST + 0.01)
        assert h.sup.recycle(old.process, "lifetime")
        h.close()

    run(body)


def test_workers_that_exit_together_while_stopping_are_each_handled_once(caplog):
    # Handling one exit while stopping reaps again (_check_stopped); the outer reap must not then
    # handle the others a second time (twice logged, twice counted in the metrics).
    async def body() -> None:
        h = Harness(make_config(workers=3))
        workers = await h.start()
        h.sup.stop(graceful=True)
        for worker in workers:
            worker.proc.exit_code = 0  # all gone before the supervisor looks
        with caplog.at_level("INFO", logger="corral.supervisor"):
            h.tick()
        for worker in workers:
            lines = [r for r in caplog.messages if f"(pid {worker.proc.pid}) exited" in r]
            assert len(lines) == 1, lines
        assert not h.state.workers
        h.close()

    run(body)
