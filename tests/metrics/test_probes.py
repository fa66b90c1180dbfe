"""Probe answers (/livez, /readyz) and HAProxy agent lines for every host state, as plain values;
and the agent server over real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http import HTTPStatus

import pytest

from corral.metrics.agent import AgentServer
from corral.metrics.probes import (
    MIN_UP_WEIGHT,
    HostState,
    NotReady,
    Phase,
    agent_line,
    livez,
    not_ready_reason,
    readyz,
    weight,
)

OK, UNAVAILABLE = HTTPStatus.OK, HTTPStatus.SERVICE_UNAVAILABLE

# A healthy, idle 4-worker host; each case below changes what makes it that state.
RUNNING = HostState(Phase.RUNNING, slots=4, ready_workers=4, fresh_heartbeats=4)

# (name, state, readyz status, not-ready reason, agent line)
STATES = [
    ("starting", HostState(Phase.STARTING, slots=4), UNAVAILABLE, NotReady.STARTING, "drain"),
    ("starting with some workers up", replace(RUNNING, phase=Phase.STARTING, ready_workers=2),
     UNAVAILABLE, NotReady.STARTING, "drain"),
    ("ready", RUNNING, OK, None, "up ready 100%"),
    # Surge: old and new generations are both ready for a moment; capacity is still 4 slots.
    ("reloading surge", replace(RUNNING, phase=Phase.RELOADING, ready_workers=8),
     OK, None, "up ready 100%"),
    ("reloading rolling, one slot of four replaced",
     replace(RUNNING, phase=Phase.RELOADING, replacing_workers=1), OK, None, "up ready 75%"),
    ("reloading rolling cutover, every slot replaced",
     replace(RUNNING, phase=Phase.RELOADING, replacing_workers=4), UNAVAILABLE,
     NotReady.RELOADING_CUTOVER, "drain"),
    ("half the workers saturated", replace(RUNNING, saturated_workers=2), OK, None, "up ready 50%"),
    ("all workers saturated", replace(RUNNING, saturated_workers=4), UNAVAILABLE,
     NotReady.SATURATED, f"up ready {MIN_UP_WEIGHT}%"),
    ("draining for stop", replace(RUNNING, draining=True), UNAVAILABLE, NotReady.DRAINING, "drain"),
    ("stopping", replace(RUNNING, phase=Phase.STOPPING, ready_workers=0), UNAVAILABLE,
     NotReady.DRAINING, "drain"),
    ("no worker ready", replace(RUNNING, ready_workers=0), UNAVAILABLE, NotReady.NO_READY_WORKER,
     "down #no ready worker"),
    # A surge reload never takes capacity away: no ready worker then is a fault, not a cut-over.
    ("reloading surge with no worker ready", replace(RUNNING, phase=Phase.RELOADING, ready_workers=0),
     UNAVAILABLE, NotReady.NO_READY_WORKER, "down #no ready worker"),
]


@pytest.mark.parametrize(("state", "status", "reason", "line"), [s[1:] for s in STATES],
                         ids=[s[0] for s in STATES])
def test_readyz_and_agent_line_for_each_state(state: HostState, status: HTTPStatus,
                                             reason: NotReady | None, line: str) -> None:
    assert not_ready_reason(state) is reason
    answer = readyz(state)
    assert answer.status is status
    assert answer.body.endswith("\n")
    if reason is None:
        assert answer.body.startswith(f"ready: {state.serving_capacity} of {state.slots} workers")
    else:
        assert answer.body == f"not ready: {reason.value}\n"
    assert agent_line(state) == line


def test_draining_outranks_every_other_reason() -> None:
    for state in (HostState(Phase.STARTING, slots=2, draining=True),
                  replace(RUNNING, ready_workers=0, draining=True),
                  replace(RUNNING, saturated_workers=4, draining=True)):
        assert not_ready_reason(state) is NotReady.DRAINING
        assert agent_line(state) == "drain"


def test_weight_follows_the_scarcer_of_workers_and_connections() -> None:
    # 4 workers x 100 connections; 300 open: a quarter of the room left, all workers free.
    crowded = replace(RUNNING, max_connections=100, connections=300)
    assert weight(crowded) == 25
    assert agent_line(crowded) == "up ready 25%"
    # Rounded up: a nearly idle host says 100%, not 99%.
    assert weight(replace(RUNNING, connections=3)) == 100
    # Every connection slot taken: still up, with the minimum share.
    assert weight(replace(RUNNING, max_connections=10, connections=40)) == MIN_UP_WEIGHT
    # A rolling reload with one slot replaced and one worker saturated: 2 of 4 slots free.
    assert weight(replace(RUNNING, phase=Phase.RELOADING, replacing_workers=1,
                          saturated_workers=1)) == 50
    # Nothing serves: 0 (the agent then says drain or down, never "0%").
    assert weight(replace(RUNNING, ready_workers=0)) == 0


def test_a_replacing_count_outside_a_reload_changes_nothing() -> None:
    # The supervisor may leave the batch count set a moment after the reload ends.
    assert agent_line(replace(RUNNING, replacing_workers=2)) == "up ready 100%"
    assert not replace(RUNNING, replacing_workers=2).reload_reduces_capacity


@pytest.mark.parametrize(("state", "status", "body"), [
    (RUNNING, OK, "live: 4 worker heartbeats fresh\n"),
    (replace(RUNNING, fresh_heartbeats=1), OK, "live: 1 worker heartbeat fresh\n"),
    # Busy, reloading or draining hosts are alive: a liveness failure means "restart me".
    (replace(RUNNING, saturated_workers=4, draining=True), OK, "live: 4 worker heartbeats fresh\n"),
    (HostState(Phase.STARTING, slots=2), UNAVAILABLE, "not live: no worker heartbeat is fresh (starting)\n"),
    (replace(RUNNING, fresh_heartbeats=0), UNAVAILABLE, "not live: no worker heartbeat is fresh (running)\n"),
    (replace(RUNNING, loop_running=False), UNAVAILABLE, "not live: the supervisor loop stalled\n"),
], ids=["ready", "one worker", "saturated and draining", "starting", "heartbeats stale", "loop stalled"])
def test_livez(state: HostState, status: HTTPStatus, body: str) -> None:
    answer = livez(state)
    assert (answer.status, answer.body) == (status, body)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"slots": 0}, "slots must be at least 1"),
    ({"slots": 2, "max_connections": 0}, "max_connections must be at least 1"),
    ({"slots": 2, "ready_workers": -1}, "ready_workers cannot be negative"),
    ({"slots": 2, "ready_workers": 1, "saturated_workers": 2}, "cannot exceed ready_workers"),
])
def test_impossible_states_are_refused_with_the_field_named(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HostState(Phase.RUNNING, **kwargs)


# -- the agent server, over real sockets ---------------------------------------------------------

class LoopThread:
    """An asyncio loop in a thread (as the supervisor runs one), so clients are plain sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], object], timeout: float = 30) -> object:
        async def run() -> object:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@contextmanager
def agent(state: Callable[[], HostState], **kwargs: float) -> Iterator[tuple[str, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    lt = LoopThread()
    server: AgentServer | None = None
    try:
        server = lt.call(lambda: AgentServer(state, **kwargs))  # type: ignore[assignment]
        assert server is not None
        lt.call(lambda: server.serve(listener))  # type: ignore[union-attr]
        yield listener.getsockname()
    finally:
        if server is not None:
            lt.call(server.close)
        lt.close()
        listener.close()


def ask(address: tuple[str, int], send: bytes = b"") -> bytes:
    """What HAProxy's agent-check does: connect, optionally send agent-send, read to EOF."""
    with socket.create_connection(address, timeout=30) as conn:
        if send:
            conn.sendall(send)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        return data


def test_agent_answers_one_line_per_connection_and_follows_the_state() -> None:
    current = [RUNNING]
    with agent(lambda: current[0]) as address:
        assert ask(address) == b"up ready 100%\n"
        current[0] = replace(RUNNING, draining=True)
        assert ask(address) == b"drain\n"
        current[0] = replace(RUNNING, ready_workers=0)
        assert ask(address) == b"down #no ready worker\n"


def test_agent_reads_the_agent_send_string_and_still_answers() -> None:
    with agent(lambda: RUNNING) as address:
        # HAProxy's agent-send, e.g. "be_web/srv1\n": consumed (no RST), the answer unchanged.
        assert ask(address, b"be_web/srv1\n") == b"up ready 100%\n"
        # More than the agent reads: the line still arrives first.
        assert ask(address, b"x" * 10000).startswith(b"up ready 100%\n")


def test_agent_does_not_wait_for_input_that_never_comes() -> None:
    # A client that sends nothing and keeps its side open gets the line and a FIN at once,
    # not after the read timeout (60 s here, far above the 30 s client timeout).
    with agent(lambda: RUNNING, read_timeout=60) as address, \
            socket.create_connection(address, timeout=30) as conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            assert chunk, f"closed before a whole line: {data!r}"
            data += chunk
        assert data == b"up ready 100%\n"
        assert conn.recv(4096) == b""  # half-closed by the agent


def test_agent_survives_a_failing_state_snapshot() -> None:
    calls = [0]

    def state() -> HostState:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("snapshot bug")
        return RUNNING

    with agent(state) as address:
        assert ask(address) == b""  # closed without an answer: HAProxy keeps the last state
        assert ask(address) == b"up ready 100%\n"


def test_agent_answers_more_clients_than_its_connection_limit() -> None:
    with agent(lambda: RUNNING, max_connections=2) as address:
        # Silent clients hold both slots until the read timeout (1 s); the rest queue, then pass.
        answers: list[bytes] = []
        threads = [threading.Thread(target=lambda: answers.append(ask(address))) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert answers == [b"up ready 100%\n"] * 10


def test_agent_refuses_a_socket_that_is_not_listening() -> None:
    async def serve_unbound() -> None:
        with socket.socket() as sock:
            AgentServer(lambda: RUNNING).serve(sock)

    with pytest.raises(ValueError, match="is not listening; call listen"):
        asyncio.run(serve_unbound())
