"""HTTP/1.1 point 5: bad requests get the right status, then the connection closes.

Every case is followed, on the same connection and in the same write, by a
valid request: it must never be answered.
"""

from __future__ import annotations

import socket
import time

import pytest

from engine_util import exchange, parse_responses, recv_all

FOLLOW = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
H = b"Host: t\r\n"

CASES = {
    # malformed request line or headers
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "extra-token-in-request-line": (b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n", 400),
    "unknown-lowercase-method": (b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "header-without-colon": (b"GET / HTTP/1.1\r\n" + H + b"NoColonHere\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\n" + H + b"X-Bad : 1\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n continued\r\n\r\n", 400),
    "nul-in-header": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    "bare-lf": (b"GET / HTTP/1.1\n" + H + b"\n", 400),
    "non-ascii-in-target": (b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "relative-target": (b"GET foo/bar HTTP/1.1\r\n" + H + b"\r\n", 400),
    # framing conflicts (request smuggling vectors)
    "cl-and-te": (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\n", 400),
    "te-and-cl": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                  b"0\r\n\r\n", 400),
    "differing-duplicate-cl": (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n"
                               b"abcd", 400),
    "cl-list": (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    "cl-negative": (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    "te-final-not-chunked": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\nabc", 400),
    "te-gzip-only": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
    "te-obfuscated-prefix": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    "te-obfuscated-space-before-colon": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n"
                                         b"0\r\n\r\n", 400),
    "te-obfuscated-vtab": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    "te-duplicated": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"
                      b"\r\n\r\n0\r\n\r\n", 400),
    "te-in-http10": (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "bad-chunk-size": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", 400),
    "chunk-missing-crlf": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
                           400),
    # Host
    "second-host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "no-host-in-1.1": (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    "second-host-in-1.0": (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # target '*'
    "star-with-get": (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    # versions
    "http-2.0": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    "http-1.2": (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    "http-3.0": (b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    "http-0.9": (b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    # limits (defaults: 8192-byte URL, 100 headers, 64 KiB of headers, 100 MiB body)
    "url-too-long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    "too-many-headers": (b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
                         431),
    "headers-too-big": (b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
    "body-too-large-by-cl": (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 104857601\r\n\r\n", 413),
    # methods and upgrades we do not serve
    "connect": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    "upgrade-with-body": (b"POST /echo HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
                          b"Content-Length: 3\r\n\r\nabc", 400),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_gets_status_then_close(server, name):
    request, status = CASES[name]
    data = exchange(server, request + FOLLOW)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [status], data[:300]
    assert responses[0].header("connection") == "close"
    assert b"Hello, world!" not in data  # the follow-up request was never answered


def test_bad_request_after_good_pipelined_ones_is_answered_in_order(server):
    data = exchange(server, FOLLOW + FOLLOW + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + FOLLOW)
    assert [r.status for r in parse_responses(data)] == [200, 200, 400]


def test_options_star_is_served(server):
    data = exchange(server, b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 200


def test_http10_without_host_is_served(server):
    data = exchange(server, b"GET /hello HTTP/1.0\r\n\r\n")
    assert parse_responses(data)[0].status == 200


def test_body_over_limit_is_refused_before_it_is_sent(server):
    # Only the head is sent: the 413 must come without the server waiting for the body.
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999999\r\n\r\n")
        data = recv_all(sock, timeout=10)
    assert parse_responses(data)[0].status == 413


def test_streamed_chunked_body_over_limit_gets_413(make_server):
    proc = make_server(settings={"max_body_size": 100_000})
    with proc.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        data = b""
        chunk = b"%x\r\n%s\r\n" % (10_000, b"z" * 10_000)
        sock.settimeout(5)
        try:
            for _ in range(50):  # 500 kB, far over the limit
                sock.sendall(chunk)
                time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = recv_all(sock, timeout=10)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [413]


def test_garbage_never_crashes_the_server(server):
    for blob in (b"\x00" * 1000, b"\r\n" * 100, b"GET " + b"/" * 5000, bytes(range(256)) * 10):
        with server.connect() as sock:
            sock.sendall(blob)
            sock.shutdown(socket.SHUT_WR)
            data = recv_all(sock, timeout=10)
        assert not data.startswith(b"HTTP/1.1 2")
    assert exchange(server, b"GET /hello HTTP/1.0\r\n\r\n").endswith(b"Hello, world!")
