"""HTTP/1.1 point 6: configurable limits and timeouts, each tested with small values."""

from __future__ import annotations

import socket
import time

from engine_util import exchange, parse_responses, peer_closed, read_responses, recv_all, wait_until

LIMITS = {"max_request_line": 100, "max_header_count": 5, "max_header_size": 300, "max_body_size": 1000}


def test_configured_size_limits(make_server):
    proc = make_server(settings=LIMITS)
    ok = exchange(proc, b"GET /" + b"a" * 90 + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert parse_responses(ok)[0].status == 200
    long_url = exchange(proc, b"GET /" + b"a" * 101 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert parse_responses(long_url)[0].status == 414

    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(4))
    ok = exchange(proc, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + headers[:-8] + b"\r\n")
    assert parse_responses(ok)[0].status == 200
    many = exchange(proc, b"GET / HTTP/1.1\r\nHost: t\r\n" + headers + b"X-9: 1\r\n\r\n")
    assert parse_responses(many)[0].status == 431
    big = exchange(proc, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 301 + b"\r\n\r\n")
    assert parse_responses(big)[0].status == 431

    ok = exchange(proc, b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n"
                  + b"x" * 1000)
    assert parse_responses(ok)[0].status == 200
    large = exchange(proc, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001)
    assert parse_responses(large)[0].status == 413


def test_a_header_line_that_never_ends_is_bounded(make_server):
    # httptools buffers an unfinished header line without telling us: the engine
    # must still stop it (here: 300 bytes of headers allowed; we send 200 kB in pieces).
    proc = make_server(settings=LIMITS)
    with proc.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        try:
            for _ in range(200):
                sock.sendall(b"v" * 1000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = recv_all(sock, timeout=10)
    assert parse_responses(data)[0].status == 431


def test_header_timeout_closes_a_silent_connection(make_server):
    proc = make_server(settings={"header_timeout": 1.0})
    with proc.connect() as sock:
        assert peer_closed(sock, timeout=15)


def test_header_timeout_stops_a_slowloris(make_server):
    proc = make_server(settings={"header_timeout": 1.0})
    with proc.connect() as sock:
        sock.settimeout(0.1)
        data = b""
        start = time.monotonic()
        closed = False
        for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 500:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                break
            if time.monotonic() - start > 20:
                break
        assert closed or peer_closed(sock, timeout=5)
    if data:
        assert parse_responses(data)[0].status == 408


def test_keepalive_timeout_closes_an_idle_connection(make_server):
    proc = make_server(settings={"keepalive_timeout": 1.0})
    with proc.connect() as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1)
        assert resp.status == 200
        assert peer_closed(sock, timeout=15)


def test_keepalive_timeout_does_not_cut_a_slow_request(make_server):
    proc = make_server(settings={"keepalive_timeout": 0.5})
    with proc.connect() as sock:
        sock.sendall(b"GET /sleep?s=1.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1)
        assert resp.status == 200 and resp.body.startswith(b"slept")


def test_header_timeout_applies_to_a_later_request_on_a_keep_alive_connection(make_server):
    # The idle keep-alive deadline is long; the head begun after it must still
    # get header_timeout (the sweep switches deadlines once the head starts).
    proc = make_server(settings={"header_timeout": 1.0, "keepalive_timeout": 300.0})
    with proc.connect() as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1)
        assert resp.status == 200
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Stalled: ")
        data = recv_all(sock, timeout=30)
    assert parse_responses(data)[0].status == 408


def test_keepalive_timeout_does_not_cut_a_request_head_in_progress(make_server):
    proc = make_server(settings={"keepalive_timeout": 1.0, "header_timeout": 300.0})
    with proc.connect() as sock, proc.connect() as control:
        for s in (sock, control):
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            (resp,) = read_responses(s, 1)
            assert resp.status == 200
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n")  # a head begun, not finished
        # Once the idle control connection is closed, its keep-alive deadline has
        # passed: the same one that was running on ``sock`` when its head began.
        assert peer_closed(control, timeout=30)
        sock.sendall(b"\r\n")
        (resp,) = read_responses(sock, 1)
        assert resp.status == 200


def test_body_timeout_closes_a_stalled_upload(make_server):
    proc = make_server(settings={"body_timeout": 1.0})
    with proc.connect() as sock:
        sock.sendall(b"POST /wait-disconnect?id=bt HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        data = recv_all(sock, timeout=15)
    assert parse_responses(data)[0].status == 408
    events = exchange(proc, b"GET /events?id=bt HTTP/1.0\r\n\r\n")
    assert b"http.disconnect" in events


def test_write_timeout_closes_a_client_that_stops_reading(make_server):
    proc = make_server(settings={"write_timeout": 1.0})
    sock = proc.connect()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big?id=wt&n=200&size=1048576 HTTP/1.1\r\nHost: t\r\n\r\n")

        def app_saw_failure() -> bool:
            events = parse_responses(exchange(proc, b"GET /events?id=wt HTTP/1.0\r\n\r\n"))[0].body
            return b"ClientDisconnected" in events

        wait_until(app_saw_failure, timeout=30, what="the app's send() to fail after write_timeout")
        assert "write_timeout" in proc.log_text()
    finally:
        sock.close()


def test_max_connections_stops_accepting_instead_of_refusing(make_server):
    proc = make_server(settings={"max_connections": 2}, stats=True)
    first, second = proc.connect(), proc.connect()
    try:
        # Both busy (an idle one would be closed to make room: test_engine_hardening_idle.py).
        for sock in (first, second):
            sock.sendall(b"GET /sleep?s=4 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: proc.stats()["in_flight"] == 2, 30, what="two requests in flight")
        # The third connection completes in the kernel backlog but is not accepted:
        # no 503, no response at all, while the two others stay open.
        third = proc.connect()
        third.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        third.settimeout(1.5)
        try:
            early = third.recv(65536)
        except socket.timeout:
            early = b""
        assert early == b""
        assert proc.stats()["connections_open"] == 2
        first.close()  # below the limit again: the third is accepted and served
        assert read_responses(second, 1, timeout=15)[0].status == 200
        (resp,) = read_responses(third, 1, timeout=15)
        assert resp.status == 200
        third.close()
    finally:
        first.close()
        second.close()
