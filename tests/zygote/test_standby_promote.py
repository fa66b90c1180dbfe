"""The worker side of a standby's promotion (corral.worker.main.WorkerRuntime.promote): it keeps
the slot's sockets and closes the others'; given a socket it does not hold, it refuses the slot
(boot error, stop) instead of saying ready while serving nothing."""

from __future__ import annotations

import asyncio
import os
import socket

from corral.config import load
from corral.worker import protocol
from corral.worker.main import WorkerRuntime
from corral.worker.protocol import Channel


def _runtime(tmp_path, fds: list[int]) -> tuple[WorkerRuntime, Channel]:
    config = load(None, {"app": "zyapp:app", "app_dir": str(tmp_path)}, environ={})
    ours, theirs = protocol.socketpair()
    listeners = [{"fd": fd, "role": "http", "address": f"127.0.0.1:{fd}", "name": ""} for fd in fds]
    hello = protocol.hello(config.to_json(), {"id": 1, "slot": -1, "generation": 1}, listeners, None, None,
                           standby=True)
    runtime = WorkerRuntime(dict(hello), config, Channel(ours))
    return runtime, Channel(theirs)


def _listening_fds(n: int) -> list[int]:
    return [socket.socket(socket.AF_INET, socket.SOCK_STREAM).detach() for _ in range(n)]


async def _promote(tmp_path, fds: list[int], slot: int, keep: list[int]) -> tuple[WorkerRuntime, list[str]]:
    """A standby holding ``fds`` waits for its slot, then is promoted to ``slot`` with ``keep``;
    returns it once the wait is over, and what it told the supervisor after its "standby"."""
    runtime, supervisor = _runtime(tmp_path, fds)
    runtime.stop_event = asyncio.Event()
    waiting = asyncio.ensure_future(runtime.wait_for_slot())
    await asyncio.sleep(0)
    assert [m["t"] for m in supervisor.receive()] == ["standby"]
    runtime.promote(slot, keep)
    await asyncio.wait_for(waiting, 5)  # the wait is over: it serves now, or stops
    return runtime, [m["t"] for m in supervisor.receive()]


def test_promotion_keeps_the_slots_sockets_and_closes_the_others(tmp_path):
    fds = _listening_fds(3)

    async def body() -> None:
        runtime, _told = await _promote(tmp_path, fds, 0, [fds[1]])
        assert not runtime.stop_event.is_set()
        assert [item["fd"] for item in runtime.hello["listeners"]] == [fds[1]]
        assert runtime.hello["worker"]["slot"] == 0

    try:
        asyncio.run(body())
        os.fstat(fds[1])  # kept open
        for fd in (fds[0], fds[2]):
            try:
                os.fstat(fd)
            except OSError:
                continue
            raise AssertionError(f"fd {fd} of another slot is still open")
    finally:
        os.close(fds[1])


def test_promotion_to_sockets_the_standby_does_not_hold_is_refused(tmp_path):
    fds = _listening_fds(1)

    async def body() -> None:
        runtime, told = await _promote(tmp_path, fds, 1, [fds[0] + 1000])
        assert runtime.stop_event.is_set() and runtime.cannot_serve
        assert told == ["boot_error"]

    try:
        asyncio.run(body())
    finally:
        os.close(fds[0])
