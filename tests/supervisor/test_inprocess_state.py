"""SupervisorState survives its serialisation whole (what an in-place re-exec hands over)."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
from collections.abc import Mapping
from typing import Any

from fakes import FakeProcess, Harness, make_config, run

from corral.config import Config
from corral.metrics.registry import Metrics
from corral.supervisor.state import SupervisorState, worker_fields
from corral.supervisor.worker_process import WorkerProcess
from corral.worker.protocol import Channel


def _adopt(entry: Mapping[str, Any]) -> WorkerProcess:
    ours, _theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return WorkerProcess(proc=FakeProcess(pid=entry["pid"]), channel=Channel(ours), **worker_fields(entry))


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    for worker in data["workers"]:
        worker.pop("channel_fd")  # a new channel in the new image
    return data


def test_the_whole_state_round_trips_through_json():
    async def body() -> None:
        h = Harness(make_config(workers=2))
        first, second = await h.start()
        first.heartbeat(requests_total=7, responses={"2xx": 6, "5xx": 1}, connections_accepted=3)
        await h.settle()
        await h.exit(first, -signal.SIGSEGV)  # a restart (crash) and retired counters
        await h.until(lambda: len(h.spawner.workers) == 3, "the replacement")
        waiter = h.reload()
        await h.until(lambda: len(h.spawner.workers) == 5, "generation 2")
        for w in h.spawner.workers[3:]:
            w.ready()
        await h.until(lambda: len(h.state.retiring) == 2, "generation 1 retiring")
        for w in h.live(generation=1):
            w.quiesced()
        await h.until(waiter.done, "the reload's outcome")
        assert h.sup.recycle(h.spawner.workers[3].process, "memory")
        state = h.state
        before = state.to_json()
        assert before["reexecs"] == 0 and before["last_reload"]["ok"]

        metrics = Metrics()
        restored = SupervisorState.from_json(json.loads(json.dumps(before)), metrics=metrics,
                                             decode_config=Config.from_json, adopt=_adopt)
        assert _comparable(restored.to_json()) == _comparable(json.loads(json.dumps(before)))
        assert restored.metrics is metrics
        assert metrics.status()["restarts"] == state.metrics.status()["restarts"]
        assert metrics.status()["restarts"]["crash"] == 1
        assert restored.recycling is not None and restored.recycling.id == state.recycling.id
        assert restored.generation.slots[0].successor is restored.worker_by_id(6)
        assert restored.respawns == state.respawns
        h.close()

    run(body)


def test_every_field_is_carried():
    """A field added to SupervisorState without a codec fails to_json() instead of vanishing."""
    assert set(SupervisorState().to_json()) == {f.name for f in dataclasses.fields(SupervisorState)}
