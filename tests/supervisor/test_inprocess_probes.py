"""The supervisor's HostState (supervisor/probing.py) and drain_delay, driven in-process
(tests/supervisor/fakes.py): what /readyz and the agent say from the workers' own reports."""

from __future__ import annotations

import signal

from fakes import Harness, make_config, run

from corral.metrics.probes import NotReady, Phase, agent_line, not_ready_reason, readyz
from corral.supervisor.state import Phase as SupervisorPhase


def test_saturation_follows_the_workers_heartbeats():
    async def body() -> None:
        h = Harness(make_config(workers=2, engine={"max_connections": 10}))
        first, second = await h.start()
        state = h.sup.host_state()
        assert (state.phase, state.slots, state.ready_workers, state.saturated_workers) == (Phase.RUNNING, 2, 2, 0)
        assert agent_line(state) == "up ready 100%"
        first.heartbeat(connections_open=10, in_flight=3)
        second.heartbeat(connections_open=4, in_flight=1)
        await h.settle()
        state = h.sup.host_state()
        assert (state.saturated_workers, state.connections, state.max_connections) == (1, 14, 10)
        assert agent_line(state) == "up ready 30%"  # 6 free connections of 20
        second.heartbeat(connections_open=10, in_flight=10)
        await h.settle()
        state = h.sup.host_state()
        assert not_ready_reason(state) is NotReady.SATURATED
        assert readyz(state).body == "not ready: all workers saturated\n"
        assert agent_line(state) == "up ready 1%"  # saturated, never 0% while up
        h.close()

    run(body)


def test_wsgi_threads_all_busy_is_saturated():
    async def body() -> None:
        h = Harness(make_config(workers=1, engine={"threads": 4}))
        (worker,) = await h.start()
        worker.heartbeat(connections_open=4, in_flight=4)
        await h.settle()
        assert h.sup.host_state().saturated_workers == 1
        worker.heartbeat(connections_open=4, in_flight=3)
        await h.settle()
        assert h.sup.host_state().saturated_workers == 0
        h.close()

    run(body)


def test_a_surge_reload_never_drains_and_keeps_full_weight():
    async def body() -> None:
        h = Harness(make_config(workers=2))
        await h.start()
        waiter = h.reload()
        await h.until(lambda: len(h.spawner.workers) == 4, "the new generation spawned")
        state = h.sup.host_state()
        assert state.phase is Phase.RELOADING and state.replacing_workers == 0
        assert agent_line(state) == "up ready 100%"
        new = h.spawner.workers[2:]
        new[0].ready()
        await h.settle()
        state = h.sup.host_state()
        assert state.ready_workers == 3 and agent_line(state) == "up ready 100%"  # capped at the slots
        new[1].ready()
        await h.until(lambda: h.sup.phase is SupervisorPhase.RUNNING, "the cut-over")
        assert agent_line(h.sup.host_state()) == "up ready 100%"
        for w in h.live(generation=1):
            w.quiesced()
        await h.until(waiter.done, "the reload's outcome")
        h.close()

    run(body)


def test_a_rolling_reload_reports_its_batch_as_missing_capacity():
    async def body() -> None:
        h = Harness(make_config(workers=4, reload_strategy="rolling", reload_batch=1))
        await h.start()
        waiter = h.reload()
        await h.until(lambda: len(h.spawner.workers) == 5, "the first batch spawned")
        assert agent_line(h.sup.host_state()) == "up ready 75%"
        h.spawner.workers[4].ready()
        await h.until(lambda: len(h.spawner.workers) == 6, "the second batch spawned")
        state = h.sup.host_state()
        # One old worker parked (not counted), one new ready, one booting: 3 of 4 slots serve.
        assert (state.ready_workers, state.replacing_workers) == (4, 1)
        assert agent_line(state) == "up ready 75%"
        assert readyz(state).status == 200
        for _ in range(10):  # the remaining batches, one worker each, as they are started
            for worker in h.live(generation=2):
                if worker.state == "booting":
                    worker.ready()
            await h.settle()
            if h.sup.phase is SupervisorPhase.RUNNING:
                break
        await h.until(lambda: h.sup.phase is SupervisorPhase.RUNNING, "the cut-over")
        for w in h.live(generation=1):
            w.quiesced()
        await h.until(waiter.done, "the reload's outcome")
        assert waiter.result().ok
        assert agent_line(h.sup.host_state()) == "up ready 100%"
        h.close()

    run(body)


def test_drain_delay_announces_then_stops_and_extends_systemds_timeout():
    async def body() -> None:
        h = Harness(make_config(workers=2, drain_delay=0.3, graceful_timeout=7))
        workers = await h.start()
        h.sup.stop(graceful=True)
        await h.settle()
        state = h.sup.host_state()
        assert state.draining and agent_line(state) == "drain"
        assert readyz(state).body == f"not ready: {NotReady.DRAINING.value}\n"
        # Told to close keep-alive connections, but not stopped yet: they keep serving.
        assert all("drain_notice" in w.kinds_received() for w in workers)
        assert all(m["on"] for w in workers for m in w.received() if m["t"] == "drain_notice")
        assert not any(w.proc.signals for w in workers)
        extend = [m["EXTEND_TIMEOUT_USEC"] for m in h.notifier.sent if "EXTEND_TIMEOUT_USEC" in m]
        assert extend and extend[0] >= (0.3 + 7) * 1_000_000
        await h.until(lambda: all(signal.SIGTERM in w.proc.signals for w in workers), "the stop after the delay",
                      timeout=10)
        h.close()

    run(body)


def test_an_upgrade_that_does_not_happen_takes_traffic_again():
    async def body() -> None:
        h = Harness(make_config(workers=1, drain_delay=0.05))
        (worker,) = await h.start()
        await h.sup.drain_before_upgrade()
        assert agent_line(h.sup.host_state()) == "drain"
        h.sup.call_off_drain()
        await h.settle()
        assert agent_line(h.sup.host_state()) == "up ready 100%"
        assert [m["on"] for m in worker.received() if m["t"] == "drain_notice"] == [True, False]
        h.close()

    run(body)
