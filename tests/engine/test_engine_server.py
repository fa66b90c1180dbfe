"""The Server API the worker drives: stats, pause/resume accepting, request_timeout, graceful shutdown."""

from __future__ import annotations

import json
import signal
import socket
import threading

import httpx

from engine_util import exchange, parse_responses, peer_closed, read_responses, recv_all, wait_until


def test_stats_count_requests_responses_durations_and_connections(make_server):
    proc = make_server(stats=True)
    with proc.connect() as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n" * 3 + b"GET /status/404 HTTP/1.1\r\nHost: t\r\n\r\n"
                     + b"GET /raise-before HTTP/1.1\r\nHost: t\r\n\r\n")
        read_responses(sock, 5)
    exchange(proc, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # a 400 from the parser

    def settled():
        s = proc.stats()
        return s if s["connections_open"] == 0 and s["requests_total"] == 6 else None

    stats = wait_until(settled, what="stats to settle")
    assert stats["responses"] == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 2, "5xx": 1}
    assert stats["connections_accepted"] == 2
    assert sum(stats["duration_counts"]) == 6
    assert len(stats["duration_counts"]) == len(stats["duration_buckets"]) + 1
    assert stats["duration_sum"] >= 0
    assert stats["in_flight"] == 0 and stats["oldest_in_flight"] is None


def test_stats_show_in_flight_requests(make_server):
    proc = make_server(stats=True)
    with proc.connect() as sock:
        sock.sendall(b"GET /slow-forever?id=inflight HTTP/1.1\r\nHost: t\r\n\r\n")
        stats = wait_until(lambda: (s := proc.stats())["in_flight"] == 1 and s, what="in-flight request")
        assert isinstance(stats["oldest_in_flight"], float)


def test_pause_and_resume_accepting(make_server):
    proc = make_server(stats=True)
    proc.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: proc.stats()["accepting"] is False, what="accepting paused")
    with proc.connect() as sock:  # lands in the backlog, not accepted
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.settimeout(1.0)
        try:
            assert sock.recv(100) == b""
            raise AssertionError("a paused engine answered")
        except socket.timeout:
            pass
        proc.proc.send_signal(signal.SIGUSR2)
        (resp,) = read_responses(sock, 1, timeout=15)
        assert resp.status == 200


def test_request_timeout_gives_504_before_the_response_starts(make_server):
    proc = make_server(settings={"request_timeout": 1.0})
    data = exchange(proc, b"GET /slow-forever?id=rt HTTP/1.1\r\nHost: t\r\n\r\n", timeout=20)
    (resp,) = parse_responses(data)
    assert resp.status == 504
    events = json.loads(parse_responses(exchange(proc, b"GET /events?id=rt HTTP/1.0\r\n\r\n"))[0].body)
    assert events == ["started", "cancelled"]
    assert "exceeded request_timeout" in proc.log_text()


def test_request_timeout_closes_a_started_response(make_server):
    proc = make_server(settings={"request_timeout": 1.0})
    data = exchange(proc, b"GET /slow-started HTTP/1.1\r\nHost: t\r\n\r\n", timeout=20)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"started" in body
    assert not body.endswith(b"0\r\n\r\n")


def test_graceful_shutdown_finishes_in_flight_requests(make_server):
    proc = make_server(shutdown_timeout=20)
    idle = proc.connect()
    idle.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    read_responses(idle, 1)
    busy = proc.connect()
    busy.sendall(b"GET /sleep?s=2&tag=inflight HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: json.loads(httpx.get(proc.url + "/concurrency").text)["now"] == 1, what="request running")
    proc.proc.send_signal(signal.SIGTERM)
    assert peer_closed(idle, timeout=5)  # idle keep-alive connections close at once
    (resp,) = read_responses(busy, 1, timeout=20)
    assert resp.status == 200 and resp.body == b"slept inflight"
    assert resp.header("connection") == "close"
    assert peer_closed(busy)
    assert proc.proc.wait(20) == 0
    idle.close()
    busy.close()


def test_graceful_shutdown_gives_up_after_the_timeout(make_server):
    proc = make_server(shutdown_timeout=1.0)
    with proc.connect() as sock:
        sock.sendall(b"GET /slow-forever?id=sd HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: "started" in httpx.get(proc.url + "/events?id=sd").text, what="request running")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0
        assert peer_closed(sock)
    assert "still busy" in proc.log_text()


def test_many_concurrent_clients(server):
    errors = []

    def client(n: int) -> None:
        try:
            with httpx.Client(base_url=server.url) as c:
                for i in range(20):
                    r = c.post("/echo", content=b"%d-%d" % (n, i))
                    assert r.content == b"%d-%d" % (n, i)
        except Exception as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_the_engine_never_calls_listen_on_its_sockets(make_server):
    # A listen() on an inherited socket would override systemd's Backlog= (and
    # trips SELinux policies): the backlog set by the socket's owner must survive.
    import shutil
    import subprocess

    import pytest

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is needed to read a listening socket's backlog")
    proc = make_server(backlog=77)
    assert parse_responses(exchange(proc, b"GET /hello HTTP/1.0\r\n\r\n"))[0].status == 200
    out = subprocess.run(["ss", "-ltnH", f"sport = :{proc.port}"], capture_output=True, text=True).stdout
    fields = out.split()
    assert fields[0] == "LISTEN" and fields[2] == "77", out


def test_request_timeout_answers_even_if_the_app_ignores_cancellation(make_server):
    proc = make_server(settings={"request_timeout": 1.0})
    data = exchange(proc, b"GET /swallows-cancel?id=sw HTTP/1.1\r\nHost: t\r\n\r\n", timeout=20)
    assert parse_responses(data)[0].status == 504
