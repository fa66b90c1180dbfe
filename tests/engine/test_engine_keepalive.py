"""HTTP/1.1 point 1: keep-alive, Connection: close both ways, pipelining in order."""

from __future__ import annotations

import json

import pytest

from engine_util import assert_still_serves, exchange, parse_responses, peer_closed, read_responses

GET = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"


def test_http11_keeps_the_connection_alive_by_default(server):
    with server.connect() as sock:
        for _ in range(3):
            sock.sendall(GET)
            (resp,) = read_responses(sock, 1)
            assert resp.status == 200 and resp.body == b"Hello, world!"
            assert resp.header("connection") is None
        assert_still_serves(sock)


def test_http10_closes_unless_keep_alive_is_asked(server):
    data = exchange(server, b"GET /hello HTTP/1.0\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 200 and resp.body == b"Hello, world!"
    assert resp.header("connection") == "close"

    with server.connect() as sock:
        for _ in range(2):
            sock.sendall(b"GET /hello HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            (resp,) = read_responses(sock, 1)
            assert resp.status == 200
            assert resp.header("connection").lower() == "keep-alive"
        assert_still_serves(sock, b"GET /hello HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")


@pytest.mark.parametrize("value", [b"close", b"CLOSE", b"Close", b"keep-alive, Close"])
def test_connection_close_from_client_is_honoured_case_insensitively(server, value):
    with server.connect() as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: " + value + b"\r\n\r\n")
        (resp,) = read_responses(sock, 1)
        assert resp.status == 200 and resp.header("connection") == "close"
        assert peer_closed(sock)


def test_connection_close_from_app_closes_after_the_response(make_server):
    proc = make_server(app="frameworks:close_app")
    with proc.connect() as sock:
        sock.sendall(GET + GET)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    responses = parse_responses(data)
    assert len(responses) == 1  # the pipelined second request is never answered
    assert responses[0].header("connection").lower() == "close"


def test_pipelined_requests_are_answered_in_order_one_at_a_time(server):
    # The first request is the slowest: answers must still come back in order,
    # and the app must never see two of them at once.
    reqs = b"".join(b"GET /sleep?s=%s&tag=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (s, i)
                    for i, s in enumerate([b"0.3", b"0.01", b"0.1", b"0"]))
    with server.connect() as sock:
        sock.sendall(reqs + b"GET /concurrency HTTP/1.1\r\nHost: t\r\n\r\n")
        responses = read_responses(sock, 5)
    assert [r.body for r in responses[:4]] == [b"slept %d" % i for i in range(4)]
    assert json.loads(responses[4].body)["max"] == 1


def test_pipelined_requests_after_connection_close_are_not_answered(server):
    data = exchange(server, b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET + GET)
    responses = parse_responses(data)
    assert len(responses) == 1 and responses[0].status == 200


def test_upgrade_request_is_served_as_plain_http_then_closed(server):
    # An upgrade other than WebSocket (tests/engine/test_ws_*.py) is not supported: the
    # app answers as for any request, and whatever the client sends next (another
    # protocol) is never parsed as HTTP.
    data = exchange(server, b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n" + GET)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200]
    assert responses[0].header("connection") == "close"


def test_ipv6_listener(make_server):
    proc = make_server(bind="[::1]:0")
    import socket as _socket
    with _socket.create_connection(("::1", proc.port), timeout=10) as sock:
        sock.sendall(b"GET /scope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    scope = json.loads(parse_responses(data)[0].body)
    assert scope["client"][0] == "::1" and scope["server"] == ["::1", proc.port]
