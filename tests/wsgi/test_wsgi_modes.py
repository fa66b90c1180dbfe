"""Execution modes: inline vs thread pool, pool backpressure, and request deadlines."""

from __future__ import annotations

import os
import threading

import pytest

from wsgi_util import recv_response, request, wait_until


def test_inline_runs_on_the_loop_thread(make_server):
    srv = make_server(threads=0)
    assert request(srv, "GET", "/thread").json() == {"thread": "MainThread", "multithread": False}


def test_pool_runs_requests_in_parallel(make_server):
    """Four requests that can only finish when all four are inside the app at once."""
    srv = make_server(threads=4)
    results: list[int] = []

    def call() -> None:
        results.append(request(srv, "GET", "/barrier?n=4").status)

    callers = [threading.Thread(target=call) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(60)
    assert results == [200] * 4
    names = {request(srv, "GET", "/thread").json()["thread"] for _ in range(8)}
    assert names and all(n.startswith("corral-wsgi-") for n in names)


def _stats_refreshed(srv, times: int) -> None:
    """Wait until the server's stats file was rewritten ``times`` more times (its loop is running)."""
    seen = [os.stat(srv.stats_path).st_mtime_ns]

    def advanced() -> bool:
        mtime = os.stat(srv.stats_path).st_mtime_ns
        if mtime != seen[-1]:
            seen.append(mtime)
        return len(seen) > times

    wait_until(advanced, what="stats file refreshes")


def test_pool_backpressure_stops_accepting(make_server, tmp_path):
    """With every thread busy the worker leaves new connections in the backlog, then takes them."""
    srv = make_server(threads=2)
    gate = tmp_path / "open"
    socks = []
    try:
        for _ in range(2):
            sock = srv.connect()
            sock.sendall(f"GET /gate?path={gate} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            socks.append(sock)
        wait_until(lambda: srv.stats()["in_flight"] == 2, what="two requests inside the app")
        accepted = srv.stats()["connections_accepted"]
        late = srv.connect()  # completes in the kernel backlog
        late.sendall(b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
        socks.append(late)
        _stats_refreshed(srv, 5)
        assert srv.stats()["connections_accepted"] == accepted, "accepted a connection with no thread free"
        gate.write_text("open")
        assert [recv_response(s).status for s in socks] == [200, 200, 200]
        wait_until(lambda: srv.stats()["connections_accepted"] == accepted + 1, what="the late connection accepted")
    finally:
        for s in socks:
            s.close()


def test_pool_queue_on_open_connections(make_server, tmp_path):
    """Requests on connections already open wait for a thread and are all answered."""
    srv = make_server(threads=1)
    gate = tmp_path / "open"
    socks = [srv.connect() for _ in range(3)]
    try:
        for s in socks:
            s.sendall(b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
        assert [recv_response(s).status for s in socks] == [200, 200, 200]
        first = socks[0]
        first.sendall(f"GET /gate?path={gate} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        for s in socks[1:]:
            s.sendall(b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: srv.stats()["in_flight"] == 3, what="one running, two queued")
        gate.write_text("open")
        assert [recv_response(s).status for s in socks] == [200, 200, 200]
    finally:
        for s in socks:
            s.close()


def test_threaded_request_past_deadline_logs_stack_504_and_asks_recycle(make_server):
    srv = make_server(threads=2, settings={"request_timeout": 1.0})
    r = request(srv, "GET", "/stuck?seconds=4")
    assert r.status == 504
    log = srv.log_text()
    assert "past request_timeout" in log and "stuck_in_the_app" in log  # the thread's stack
    wait_until(lambda: srv.stats()["wants_recycle"], what="wants_recycle in the stats")
    assert "/stuck" in srv.stats()["wants_recycle"]
    assert request(srv, "GET", "/thread").status == 200  # the other thread still serves


def test_inline_request_past_deadline_logs_stack_and_asks_recycle(make_server):
    """The loop is blocked, so the watch thread reports it while the app is still running."""
    srv = make_server(threads=0, settings={"request_timeout": 1.0})
    sock = srv.connect()
    try:
        sock.sendall(b"GET /stuck?seconds=4 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: "stuck_in_the_app" in srv.log_text(), what="the stack of the blocked loop")
        assert "past request_timeout" in srv.log_text()
        assert recv_response(sock).status == 200  # it cannot be cancelled; it finishes late
    finally:
        sock.close()
    wait_until(lambda: srv.stats()["wants_recycle"], what="wants_recycle in the stats")


def test_no_deadline_no_recycle(make_server):
    srv = make_server(threads=1)
    assert request(srv, "GET", "/stuck?seconds=1.5").status == 200
    assert srv.stats()["wants_recycle"] is None


def test_request_queued_past_deadline_gets_504_without_running(make_server, tmp_path):
    srv = make_server(threads=1, settings={"request_timeout": 1.0})
    waiting = srv.connect()  # accepted now, used once the only thread is busy
    stuck = srv.connect()
    try:
        wait_until(lambda: srv.stats()["connections_accepted"] == 2, what="both connections accepted")
        stuck.sendall(b"GET /stuck?seconds=4 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: srv.stats()["in_flight"] == 1, what="the stuck request running")
        marker = tmp_path / "ran"
        waiting.sendall(f"GET /tracked?marker={marker}&chunks=1 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert recv_response(waiting).status == 504
        assert recv_response(stuck).status == 504
        wait_until(lambda: "waited" in srv.log_text() and "for a free thread" in srv.log_text(),
                   what="the queued request's warning")
        # The pool is FIFO: once a new request is answered, the queued one was dequeued before it.
        assert request(srv, "GET", "/thread").status == 200
        assert not marker.exists()  # the queued app never ran: its iterable was never created
    finally:
        waiting.close()
        stuck.close()
