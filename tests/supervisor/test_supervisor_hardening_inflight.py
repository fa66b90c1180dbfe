"""What a worker was serving when it died: the in-flight table (corral.worker.inflight),
the engine's notes in it, and the restart rules that use it (slots.py), without processes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import uvloop

from corral.engine.server import Server
from corral.engine.settings import EngineSettings
from corral.supervisor.slots import (BACKOFF_MAX, ExitVerdict, RESPAWN_BURST_PER_SLOT, RESPAWNS_PER_SLOT,
                                     RespawnBudget, Slot)
from corral.supervisor.worker_process import WorkerProcess
from corral.worker import inflight
from corral.worker.inflight import InFlight, InFlightTable

CLIENT = ("127.0.0.1", 50000)


# --------------------------------------------------------------------------- the table


def _table(slots: int = 4) -> tuple[int, InFlightTable]:
    fd = inflight.create(slots)
    return fd, InFlightTable(os.dup(fd), slots)


def test_table_round_trip_and_slot_reuse():
    fd, table = _table(2)
    try:
        a = table.take(("10.0.0.1", 1234))
        b = table.take(None)
        assert a > 0 and b > 0 and a != b
        assert table.take(CLIENT) == -1  # every slot in use: that connection goes unrecorded
        assert inflight.read(fd) == []  # connections open, no request in progress
        table.pack_into(table.buf, a, 1, b"POST", b"/orders?id=7")
        table.pack_into(table.buf, b, 1, b"GET", b"/")
        assert inflight.read(fd) == [InFlight("POST", "/orders?id=7", "10.0.0.1:1234"),
                                     InFlight("GET", "/", "unix socket")]
        table.buf[a] = 0  # response complete
        assert inflight.read(fd) == [InFlight("GET", "/", "unix socket")]
        table.give_back(b)
        assert inflight.read(fd) == []
        again = table.take(("::1", 9))
        assert again == b  # a freed slot is reused, its old request forgotten
        assert inflight.read(fd) == []
    finally:
        table.close()
        os.close(fd)


def test_long_targets_are_cut_and_odd_bytes_escaped():
    fd, table = _table()
    try:
        offset = table.take(CLIENT)
        table.pack_into(table.buf, offset, 1, b"GET", b"/" + b"a" * 1000)
        (entry,) = inflight.read(fd)
        assert entry.target.startswith("/aaa") and entry.target.endswith("...") and len(entry.target) < 500
        table.pack_into(table.buf, offset, 1, b"GET", b"/x\x1b[31m\x7f\xff")
        (entry,) = inflight.read(fd)
        assert entry.target == "/x\\x1b[31m\\x7f\\xff"  # one log line, no terminal escapes
        assert str(entry) == "GET /x\\x1b[31m\\x7f\\xff from 127.0.0.1:50000"
    finally:
        table.close()
        os.close(fd)


def test_describe_lists_at_most_five():
    requests = [InFlight("GET", f"/{i}", "c") for i in range(7)]
    assert inflight.describe(requests[:1]) == "GET /0 from c"
    assert inflight.describe(requests) == ("7 requests: GET /0 from c, GET /1 from c, GET /2 from c, "
                                           "GET /3 from c, GET /4 from c and 2 more")


def test_a_table_that_is_not_one_reads_as_empty():
    fd = os.memfd_create("not-a-table")
    try:
        os.ftruncate(fd, 4096)
        assert inflight.read(fd) == []
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the engine's notes


class FakeTransport:
    """What HttpProtocol uses of an asyncio transport; keeps the bytes written."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str) -> Any:
        # What a plain TCP transport answers; anything else (ssl_object: not TLS) is None.
        return {"peername": CLIENT, "sockname": ("127.0.0.1", 8000)}.get(name)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def _run(coro_fn):
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


async def _connection(app: Any, interface: str, fd: int | None, **settings: Any):
    """One connection of a Server, as a worker sets it up (in-flight table included when ``fd``)."""
    from corral.engine.protocol import HttpProtocol

    server = Server(app, EngineSettings(lifespan="off", **settings), interface=interface)
    if fd is not None:
        server.record_in_flight(InFlightTable(os.dup(fd), 8))
    await server.startup()
    protocol = HttpProtocol(server._context())
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return server, protocol, transport


def _feed(protocol: Any, data: bytes) -> None:
    # From a plain loop callback, as uvloop calls data_received: never inside a task.
    asyncio.get_running_loop().call_soon(protocol.data_received, data)


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def _request(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode()


def test_asgi_request_is_in_flight_until_its_response_completes_pipelined_too():
    fd = inflight.create(8)
    gates: dict[str, asyncio.Event] = {}

    async def app(scope, receive, send):
        gate = gates.setdefault(scope["query_string"].decode(), asyncio.Event())
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario():
        server, protocol, transport = await _connection(app, "asgi", fd)
        _feed(protocol, _request("/hold?a"))
        await _until(lambda: "a" in gates, "the app to start")
        assert [str(r) for r in inflight.read(fd)] == ["GET /hold?a from 127.0.0.1:50000"]
        gates["a"].set()
        await _until(lambda: transport.out.count(b"200 OK") == 1, "the first response")
        assert inflight.read(fd) == []
        # Two pipelined requests in one read: the one running is the one noted.
        _feed(protocol, _request("/one?b") + _request("/two?c"))
        await _until(lambda: "b" in gates, "the first pipelined request")
        assert [r.target for r in inflight.read(fd)] == ["/one?b"]
        gates["b"].set()
        await _until(lambda: "c" in gates, "the second pipelined request")
        assert [r.target for r in inflight.read(fd)] == ["/two?c"]
        gates["c"].set()
        await _until(lambda: transport.out.count(b"200 OK") == 3, "every response")
        assert inflight.read(fd) == []
        protocol.connection_lost(None)
        await server.shutdown(1)

    try:
        _run(scenario)
    finally:
        os.close(fd)


@pytest.mark.parametrize("threads", [0, 2], ids=["inline", "threads"])
def test_wsgi_request_is_in_flight_while_the_app_runs(threads):
    fd = inflight.create(8)

    def app(environ, start_response):
        # What the supervisor would read if this worker died right now.
        seen = inflight.describe(inflight.read(fd)).encode()
        start_response("200 OK", [("Content-Length", str(len(seen)))])
        return [seen]

    async def scenario():
        server, protocol, transport = await _connection(app, "wsgi", fd, threads=threads)
        _feed(protocol, _request("/look?x=1"))
        await _until(lambda: b"\r\n\r\n" in transport.out and transport.out.endswith(b"50000"), "the response")
        assert transport.out.endswith(b"\r\n\r\nGET /look?x=1 from 127.0.0.1:50000"), bytes(transport.out)
        assert inflight.read(fd) == []
        protocol.connection_lost(None)
        await server.shutdown(1)

    try:
        _run(scenario)
    finally:
        os.close(fd)


def test_without_a_recorder_nothing_is_noted():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario():
        server, protocol, transport = await _connection(app, "asgi", None)
        _feed(protocol, _request("/"))
        await _until(lambda: b"204" in transport.out, "the response")
        assert protocol._rec == -1
        await server.shutdown(1)

    _run(scenario)


# --------------------------------------------------------------------------- restart rules


def _worker(ready_at: float | None) -> WorkerProcess:
    worker = WorkerProcess.__new__(WorkerProcess)
    worker.ready_at = ready_at
    return worker


def test_a_worker_that_served_is_replaced_at_once_however_young():
    slot = Slot(0)
    for i in range(20):  # a query of death every second, each killing a worker 0.5 s after it was ready
        now = float(i)
        assert slot.note_exit(_worker(ready_at=now - 0.5), now, served=True) is ExitVerdict.SERVED
        assert slot.restart_at == now and slot.failures == 0


def test_a_worker_that_never_served_backs_off_doubling_to_30s():
    slot = Slot(0)
    delays = []
    for i in range(12):
        verdict = slot.note_exit(_worker(ready_at=None if i % 2 else float(i) - 0.1), now=float(i))
        assert verdict is ExitVerdict.BOOT_FAILURE
        delays.append(slot.restart_at - float(i))
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8]) and delays[-1] == pytest.approx(BACKOFF_MAX)
    # One that became ready and lived 10 s counts as healthy, even with no traffic.
    assert slot.note_exit(_worker(ready_at=100.0), now=110.0) is ExitVerdict.SERVED
    assert slot.failures == 0 and slot.restart_at == 110.0


def test_respawn_budget_allows_a_burst_then_one_per_slot_per_second():
    budget = RespawnBudget.for_slots(2)
    assert budget.rate == 2 * RESPAWNS_PER_SLOT and budget.burst == 2 * RESPAWN_BURST_PER_SLOT
    now = 1000.0
    budget.updated = now
    starts = [budget.reserve(now, now) for _ in range(8)]
    burst = int(budget.burst)
    assert starts[:burst] == [now] * burst  # the burst: at once
    gaps = [b - a for a, b in zip(starts[burst - 1:], starts[burst:])]
    assert all(abs(gap - 1 / budget.rate) < 1e-9 for gap in gaps), gaps  # then spaced by 1/rate
    # A quiet spell refills it.
    later = now + 100
    assert budget.reserve(later, later) == later
    # A backoff later than the budget's time is kept.
    assert budget.reserve(later + 5, later) == later + 5


def test_respawn_budget_keeps_up_with_a_query_of_death_every_0_6s_on_two_workers():
    budget = RespawnBudget.for_slots(2)
    now = 0.0
    budget.updated = now
    for i in range(100):
        now = i * 0.6
        assert budget.reserve(now, now) == now  # never delayed: 1.7 crashes/s < 2 per second
