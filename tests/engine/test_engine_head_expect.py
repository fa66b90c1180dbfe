"""HTTP/1.1 point 2: HEAD keeps Content-Length but sends no body; 100-continue only on demand."""

from __future__ import annotations

import socket

from engine_util import parse_responses, peer_closed, read_responses


def test_head_sends_no_body_but_keeps_the_apps_content_length(server):
    with server.connect() as sock:
        sock.sendall(b"HEAD /head-cl HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1, head=True)
        assert resp.status == 200 and resp.header("content-length") == "10"
        # Nothing follows the head: the next response starts right after it.
        sock.sendall(b"GET /head-cl HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        sock.settimeout(5)
        while b"0123456789" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert data.endswith(b"\r\n\r\n0123456789")


def test_head_of_a_streamed_response_has_no_body_and_no_chunked_framing(server):
    with server.connect() as sock:
        sock.sendall(b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        sock.settimeout(5)
        while not data.endswith(b"Hello, world!"):
            data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert rest.startswith(b"HTTP/1.1 200 OK")


def _send_head_with_expect(sock: socket.socket, path: bytes, length: int) -> None:
    sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                 b"Content-Length: %d\r\n\r\n" % length)


def test_expect_100_continue_is_sent_when_the_app_reads_the_body(server):
    with server.connect() as sock:
        _send_head_with_expect(sock, b"/echo", 5)
        sock.settimeout(10)
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # a 1xx carries no body
        sock.sendall(b"hello")
        (resp,) = read_responses(sock, 1)
        assert resp.status == 200 and resp.body == b"hello"
        assert resp.header("connection") is None  # still keep-alive


def test_expect_100_continue_is_not_sent_when_the_app_does_not_read(server):
    with server.connect() as sock:
        _send_head_with_expect(sock, b"/early", 5)
        data = b""
        sock.settimeout(10)
        while b"early" not in data:
            data += sock.recv(65536)
        assert b"100 Continue" not in data
        (resp,) = parse_responses(data)
        assert resp.status == 200 and resp.body == b"early"
        # The client still holds a body we never asked for: the connection closes.
        assert resp.header("connection") == "close"
        assert peer_closed(sock)


def test_unknown_expectation_gets_417(server):
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: something-else\r\nContent-Length: 1\r\n\r\nx")
        (resp,) = read_responses(sock, 1)
        assert resp.status == 417
        assert peer_closed(sock)


def test_http10_client_never_gets_100_continue(server):
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        sock.settimeout(1.0)
        try:
            early = sock.recv(65536)
        except socket.timeout:
            early = b""
        assert b"100 Continue" not in early
        sock.sendall(b"hi")
        data = early
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            data += chunk
    (resp,) = parse_responses(data)
    assert resp.status == 200 and resp.body == b"hi"
