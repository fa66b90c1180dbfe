"""The reload transaction, driven in-process (tests/supervisor/fakes.py): cut-over, rollback
when a new worker fails to boot, and the rolling reload's rollback to its parked workers."""

from __future__ import annotations

import signal

from fakes import Harness, make_config, run

from corral.supervisor.state import Phase


def test_reload_cuts_over_to_the_new_generation_and_drains_the_old_one():
    async def body() -> None:
        h = Harness(make_config(workers=2))
        old = await h.start()
        assert h.notifier.count("READY") == 1
        waiter = h.reload()
        await h.until(lambda: len(h.spawner.workers) == 4, "the new generation spawned")
        new = h.spawner.workers[2:]
        assert h.sup.phase is Phase.RELOADING
        assert all(w.process.generation == 2 for w in new)
        await h.until(lambda: all("reload_gate" in w.kinds_received() for w in new), "the gate told")
        assert [w.kinds_received()[0] for w in new] == ["hello", "hello"]
        new[0].ready()
        await h.settle()
        assert not waiter.done() and not any(w.proc.signals for w in old)  # half a generation: old serves
        new[1].ready()
        await h.until(lambda: all(signal.SIGTERM in w.proc.signals for w in old), "the old workers drained")
        assert all(w.kinds_received()[-1] == "retiring" for w in old)
        assert h.state.generation.number == 2 and h.state.pending is None
        assert {w.id for w in h.serving()} == {w.id for w in new}
        # READY=1 waits for the drained workers to close their idle connections.
        assert not waiter.done()
        for w in old:
            w.quiesced()
        await h.until(waiter.done, "the reload's outcome")
        outcome = waiter.result()
        assert outcome.ok and outcome.generation == 2, outcome
        assert h.sup.phase is Phase.RUNNING
        assert h.notifier.count("RELOADING") == 1 and h.notifier.count("READY") == 2
        for w in old:
            await h.exit(w, 0)
        assert h.restarts() == {"reload": 2}
        assert h.sup.metrics.status()["generation"] == 2
        h.close()

    run(body)


def test_a_new_worker_that_fails_to_boot_rolls_back_and_the_old_generation_keeps_serving():
    async def body() -> None:
        h = Harness(make_config(workers=2))
        old = await h.start()
        waiter = h.reload()
        await h.until(lambda: len(h.spawner.workers) == 4, "the new generation spawned")
        bad, slow = h.spawner.workers[2:]
        bad.boot_error("ImportError: no module named 'app2'")
        await h.exit(bad, 1)
        await h.until(waiter.done, "the reload's outcome")
        outcome = waiter.result()
        assert not outcome.ok and outcome.generation == 1
        assert "ImportError: no module named 'app2'" in outcome.message
        assert "gen 2 rolled back, gen 1 serves" in outcome.message
        # The old generation never stopped; the other new worker is stopped fast.
        assert {w.id for w in h.serving()} == {w.id for w in old}
        assert not any(w.proc.signals for w in old)
        assert signal.SIGQUIT in slow.proc.signals
        assert h.state.generation.number == 1 and h.state.pending is None
        assert h.sup.phase is Phase.RUNNING
        assert h.notifier.count("READY") == 2  # READY=1 after RELOADING=1, failure or not
        assert "last reload failed" in h.notifier.sent[-1]["STATUS"]
        await h.exit(slow, 0)
        assert h.restarts() == {}  # a rolled-back worker is no restart
        h.close()

    run(body)


def test_rolling_reload_that_fails_in_its_second_batch_unparks_the_old_workers():
    async def body() -> None:
        h = Harness(make_config(workers=2, reload_strategy="rolling", reload_batch=1))
        first, second = await h.start()
        waiter = h.reload()
        await h.until(lambda: len(h.spawner.workers) == 3, "batch 1 spawned")
        new1 = h.spawner.workers[2]
        new1.ready()
        # Batch 1 ready: slot 0's old worker is parked (keeps the old code loaded), batch 2 starts.
        await h.until(lambda: "park" in first.kinds_received(), "slot 0's old worker parked")
        assert not first.proc.signals
        await h.until(lambda: len(h.spawner.workers) == 4, "batch 2 spawned")
        new2 = h.spawner.workers[3]
        await h.exit(new2, 3)
        # Slot 0's new worker served: it drains, and the answer waits until it is quiet.
        await h.until(lambda: signal.SIGTERM in new1.proc.signals, "slot 0's new worker drained")
        assert not waiter.done()
        new1.quiesced()
        await h.until(waiter.done, "the reload's outcome")
        outcome = waiter.result()
        assert not outcome.ok
        assert "gen 1 serves on every slot again (1 parked worker back)" in outcome.message, outcome.message
        assert "unpark" in first.kinds_received()
        assert {w.id for w in h.serving()} == {first.id, second.id}
        assert signal.SIGQUIT not in new1.proc.signals  # it served: drained, not killed
        assert not first.proc.signals and not second.proc.signals
        h.close()

    run(body)


def test_a_reload_requested_during_one_runs_after_it():
    async def body() -> None:
        h = Harness(make_config(workers=1))
        await h.start()
        first = h.reload()
        second = h.reload()
        await h.until(lambda: len(h.spawner.workers) == 2, "generation 2 spawned")
        h.spawner.workers[1].ready()
        h.spawner.workers[0].quiesced()
        await h.until(first.done, "the first reload's outcome")
        assert first.result().ok and not second.done()
        h.tick(0.25)
        await h.until(lambda: len(h.spawner.workers) == 3, "the queued reload started")
        h.spawner.workers[2].ready()
        h.spawner.workers[1].quiesced()
        await h.until(second.done, "the second reload's outcome")
        assert second.result().ok and second.result().generation == 3
        h.close()

    run(body)
