"""HTTP/1.1 point 4: response framing chosen by the server; Content-Length violations are contained."""

from __future__ import annotations

import pytest

from engine_util import exchange, parse_responses, peer_closed, read_responses, wait_until


def test_streamed_response_is_chunked_for_http11(server):
    with server.connect() as sock:
        sock.sendall(b"GET /stream?n=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1)
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.header("content-length") is None
    assert resp.body == b"part0;part1;part2;"


def test_streamed_response_is_close_delimited_for_http10(server):
    data = exchange(server, b"GET /stream?n=3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"content-length" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"part0;part1;part2;"  # ... and the server closed the connection to end it


def test_single_message_body_gets_a_content_length(server):
    with server.connect() as sock:
        sock.sendall(b"GET /stream?n=0 HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1)
    assert resp.header("content-length") == "0" and resp.header("transfer-encoding") is None


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_carry_no_body_and_no_chunked_framing(server, status):
    with server.connect() as sock:
        sock.sendall(b"GET /status/%d HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n" % status)
        data = b""
        sock.settimeout(5)
        while not data.endswith(b"Hello, world!"):
            data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status)
    assert b"transfer-encoding" not in head.lower()
    assert b"should-not-appear" not in data
    assert rest.startswith(b"HTTP/1.1 200 OK")  # the app's body was dropped: framing intact


def test_304_keeps_the_apps_content_length_but_204_drops_it(server):
    with server.connect() as sock:
        sock.sendall(b"GET /status/304?cl=17 HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1, head=True)
        assert resp.header("content-length") == "17"
        sock.sendall(b"GET /status/204?cl=17 HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1, head=True)
        assert resp.header("content-length") is None


def test_app_sending_a_1xx_status_gets_500(server):
    data = exchange(server, b"GET /informational HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 500


def test_body_longer_than_content_length_in_one_message_becomes_500(server):
    data = exchange(server, b"GET /more-than-cl?first=1&id=m1 HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 500 and b"AAAA" not in data  # closed by exchange() returning
    wait_until(lambda: "longer than its Content-Length" in server.log_text(), what="error log")


def test_body_longer_than_content_length_later_closes_without_extra_bytes(server):
    data = exchange(server, b"GET /more-than-cl?id=m2 HTTP/1.1\r\nHost: t\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"AAAAA"  # the 10 B bytes would overflow the declared 10: none is sent
    events = exchange(server, b"GET /events?id=m2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert b"InvalidResponse" in events


@pytest.mark.parametrize("first", [True, False])
def test_body_shorter_than_content_length_closes_the_connection(server, first):
    q = b"first=1" if first else b"x=1"
    with server.connect() as sock:
        sock.sendall(b"GET /less-than-cl?" + q + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert peer_closed(sock)
    wait_until(lambda: "shorter than its Content-Length" in server.log_text(), what="error log")
