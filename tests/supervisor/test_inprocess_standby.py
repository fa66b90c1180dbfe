"""config standby, driven in-process (tests/supervisor/fakes.py): the serving generation keeps one
standby; a lost or recycled worker's slot goes to it at once, a new one boots behind it, one that
dies backs off, and a reload or a config without the key retires it."""

from __future__ import annotations

import signal

from fakes import FakeWorker, Harness, make_config, run

from corral.supervisor.slots import STANDBY_SLOT
from corral.supervisor.worker_process import STANDBY


async def _with_standby(h: Harness) -> FakeWorker:
    """Start generation 1, then let a tick start its standby and the standby say it is booted."""
    await h.start()
    h.tick()
    standby = h.spawner.workers[-1]
    assert standby.process.slot == STANDBY_SLOT and h.spawner.requests[-1].slot == STANDBY_SLOT
    assert standby.received()[0]["standby"] is True
    standby.standby()
    await h.until(lambda: standby.state == STANDBY, "the standby on standby")
    return standby


def test_a_crashed_workers_slot_goes_to_the_standby_and_another_boots():
    async def body() -> None:
        h = Harness(make_config(workers=2, standby=True))
        standby = await _with_standby(h)
        assert 'corral_workers{state="standby"} 1' in h.sup.metrics.render()
        first = h.spawner.workers[0]
        first.heartbeat(requests_total=3)
        await h.settle()
        spawned = len(h.spawner.workers)
        await h.exit(first, -signal.SIGKILL)
        await h.until(lambda: "promote" in standby.kinds_received(), "the standby promoted")
        promote = next(m for m in standby.received() if m["t"] == "promote")
        assert promote["slot"] == first.process.slot
        assert len(h.spawner.workers) == spawned  # nothing was started for the slot
        slot = h.state.generation.slots[first.process.slot]
        assert slot.worker is standby.process and standby.process.slot == first.process.slot
        standby.ready()
        await h.until(lambda: standby.state == "ready", "the promoted standby ready")
        assert h.restarts() == {"crash": 1}
        metrics = h.sup.metrics.render()
        assert 'corral_workers{state="standby"} 0' in metrics and 'corral_workers{state="ready"} 2' in metrics
        h.tick()  # the next standby
        assert len(h.spawner.workers) == spawned + 1
        assert h.spawner.workers[-1].process.slot == STANDBY_SLOT
        h.close()

    run(body)


def test_a_recycle_hands_the_slot_to_the_standby_and_the_old_worker_drains():
    async def body() -> None:
        h = Harness(make_config(workers=1, standby=True))
        standby = await _with_standby(h)
        old = h.spawner.workers[0]
        assert h.sup.recycle(old.process, "max_requests")
        await h.until(lambda: "promote" in standby.kinds_received(), "the standby promoted")
        slot = h.state.generation.slots[0]
        assert slot.successor is standby.process
        standby.ready()
        await h.until(lambda: slot.worker is standby.process, "the standby serving the slot")
        assert old.proc.signals == [signal.SIGTERM]  # drained once its successor served
        h.close()

    run(body)


def test_a_standby_that_dies_is_restarted_after_its_backoff():
    async def body() -> None:
        h = Harness(make_config(workers=1, standby=True))
        await h.start()
        h.tick()
        standby = h.spawner.workers[-1]
        await h.exit(standby, 1)  # died while booting
        seat = h.state.generation.standby_seat
        assert seat.failures == 1 and seat.worker is None
        h.tick(seat.backoff() / 2)
        assert h.spawner.workers[-1] is standby  # still backing off
        h.tick(seat.backoff())
        assert h.spawner.workers[-1] is not standby
        assert h.spawner.workers[-1].process.slot == STANDBY_SLOT
        assert h.restarts() == {"boot_failed": 1}
        h.close()

    run(body)


def test_a_reload_retires_the_standby_and_the_new_generation_gets_its_own():
    async def body() -> None:
        h = Harness(make_config(workers=1, standby=True))
        standby = await _with_standby(h)
        old = h.spawner.workers[0]
        waiter = h.reload()
        await h.until(lambda: h.sup.reloader.busy, "the reload under way")
        h.tick()  # the old code's standby is retired: it could only ever serve the old code
        assert signal.SIGTERM in standby.proc.signals
        await h.exit(standby, 0)  # a standby stops at once: it serves nothing
        await h.until(lambda: any(w.process.generation == 2 for w in h.spawner.workers), "generation 2")
        new = next(w for w in h.spawner.workers if w.process.generation == 2)
        new.ready()
        await h.until(lambda: signal.SIGTERM in old.proc.signals, "the old worker drained")
        old.quiesced()
        await h.until(waiter.done, "the reload's outcome")
        assert waiter.result().ok
        h.tick()
        latest = h.spawner.workers[-1]
        assert latest.process.slot == STANDBY_SLOT and latest.process.generation == 2
        h.close()

    run(body)


def test_without_the_key_no_standby_starts():
    async def body() -> None:
        h = Harness(make_config(workers=2))
        await h.start()
        h.tick(10)
        assert len(h.spawner.workers) == 2
        h.close()

    run(body)


def test_with_reuse_port_scaling_renews_the_standby_since_the_sockets_change():
    # Each slot has its own SO_REUSEPORT socket and the standby holds them all: after TTOU its
    # copy of the closed socket would take connections nobody accepts; after TTIN it lacks the new one.
    async def body() -> None:
        h = Harness(make_config(workers=1, standby=True, reuse_port=True, bind=["127.0.0.1:0"]))
        first = await _with_standby(h)
        h.sup.scale(1)  # TTIN: binds the new slot's socket, so the standby is retired
        assert signal.SIGTERM in first.proc.signals
        assert h.state.generation.standby_seat.worker is None
        added = h.spawner.workers[-1]
        assert added.process.slot == 1  # a fresh worker for the new slot, not the stale standby
        added.ready()
        await h.until(lambda: added.state == "ready", "the new slot's worker ready")
        await h.exit(first, 0)
        h.tick()
        second = h.spawner.workers[-1]
        assert second.process.slot == STANDBY_SLOT
        second.standby()
        await h.until(lambda: second.state == STANDBY, "the new standby")
        h.sup.scale(-1)  # TTOU: closes slot 1's socket, so the standby holding a copy goes too
        assert signal.SIGTERM in second.proc.signals
        h.close()
        h.sup.listeners.close()

    run(body)


def test_a_standby_that_cannot_be_spawned_backs_off_and_says_so(caplog):
    async def body() -> None:
        h = Harness(make_config(workers=1, standby=True))
        await h.start()
        h.spawner.failures.append(OSError(24, "Too many open files"))
        with caplog.at_level("ERROR", logger="corral.supervisor"):
            h.tick()
        seat = h.state.generation.standby_seat
        assert seat.worker is None and seat.failures == 1
        assert any(m.startswith("the standby: cannot start") for m in caplog.messages), caplog.messages
        h.tick(seat.backoff())
        assert h.spawner.workers[-1].process.slot == STANDBY_SLOT
        h.close()

    run(body)
