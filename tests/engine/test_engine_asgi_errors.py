"""ASGI: app errors: 500 before the response starts, close after; invalid headers never reach the wire."""

from __future__ import annotations

import pytest

from engine_util import exchange, parse_responses, peer_closed, read_responses, wait_until


def test_exception_before_the_response_gives_500(server):
    data = exchange(server, b"GET /raise-before HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 500 and resp.header("connection") == "close"
    assert b"boom" not in data  # no traceback leaks to the client
    wait_until(lambda: "boom before the response" in server.log_text(), what="traceback in the log")


def test_exception_after_the_response_started_closes_the_connection(server):
    with server.connect() as sock:
        sock.sendall(b"GET /raise-after HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        sock.settimeout(10)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body.startswith(b"7\r\npartial\r\n")
    assert not body.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees the truncation


def test_app_returning_without_a_response_gives_500(server):
    (resp,) = parse_responses(exchange(server, b"GET /no-response HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert resp.status == 500


@pytest.mark.parametrize("kind", ["crlf", "lf", "nul", "name", "name-colon", "str"])
def test_invalid_response_headers_give_500_and_are_never_written(server, kind):
    data = exchange(server, b"GET /bad-header?kind=%s HTTP/1.1\r\nHost: t\r\n\r\n" % kind.encode())
    (resp,) = parse_responses(data)
    assert resp.status == 500
    assert b"pwned" not in data and b"x-evil" not in data.lower()


def test_server_keeps_serving_after_app_errors(server):
    with server.connect() as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_responses(sock, 1)[0].status == 200
