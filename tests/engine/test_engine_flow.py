"""HTTP/1.1 point 7: flow control both ways, disconnects seen by the app, send() on a closed connection."""

from __future__ import annotations

import json
import socket
import time

import pytest

from engine_util import exchange, parse_responses, read_responses, wait_until


def _events(proc, key: str):
    return json.loads(parse_responses(exchange(proc, b"GET /events?id=%s HTTP/1.0\r\n\r\n" % key.encode()))[0].body)


def test_reading_pauses_while_the_app_does_not_consume_the_body(make_server):
    proc = make_server(settings={"body_buffer_size": 65536})
    total = 64 * 1024 * 1024
    with proc.connect() as sock:
        sock.sendall(b"POST /slow-body?s=2&id=fc HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
        # While the app sleeps, the engine reads at most its buffer (plus one read):
        # the client soon cannot send more than the kernel's socket buffers hold.
        sock.setblocking(False)
        sent = 0
        chunk = b"u" * 65536
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < total / 2, f"{sent} bytes went in while the app read nothing"
        sock.setblocking(True)
        sock.settimeout(30)
        left = total - sent
        while left:
            n = sock.send(chunk[:min(left, len(chunk))])
            left -= n
        (resp,) = read_responses(sock, 1, timeout=60)
    info = json.loads(resp.body)
    assert info["total"] == total
    # The first receive() after the pause returns the bounded buffer, not everything.
    assert info["first"] <= 65536 + 256 * 1024


def test_send_waits_for_drain_when_the_client_is_slow(server):
    sock = server.connect()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big?id=dr&n=200&size=1048576 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(1.0)
        sent_chunks = _events(server, "dr")[0]
        # 200 MiB were offered; only what fits in the socket buffers left the app.
        assert sent_chunks < 50, sent_chunks
        # Reading everything lets the app finish.
        received = 0
        sock.settimeout(30)
        expected = 200 * 1048576
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        received = len(head.partition(b"\r\n\r\n")[2])
        while received < expected:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == expected
        assert _events(server, "dr")[0] == 200
    finally:
        sock.close()


def test_client_disconnect_mid_request_gives_http_disconnect(server):
    with server.connect() as sock:
        sock.sendall(b"POST /wait-disconnect?id=dc HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc")
        wait_until(lambda: "http.request" in _events(server, "dc"), what="app to read the first bytes")
    wait_until(lambda: "http.disconnect" in _events(server, "dc"), what="http.disconnect")


@pytest.mark.parametrize("key, stream, expected", [
    # No Content-Length: the stream may never end, and ASGI 2.4's OSError is how it learns to stop.
    ("cl", "1", "OSError:ClientDisconnected"),
    # The last body: accepted quietly, as uvicorn does (the app was finishing anyway, and an app
    # that logs the OSError as its own error, such as Datasette, would log a client's leaving).
    ("lb", "0", "send-ok"),
])
def test_a_send_on_a_closed_connection_raises_an_oserror_only_for_a_stream(server, key, stream, expected):
    with server.connect() as sock:
        sock.sendall(f"POST /wait-disconnect?id={key}&stream={stream} HTTP/1.1\r\nHost: t\r\n"
                     "Content-Length: 1000\r\n\r\nabc".encode())
        wait_until(lambda: "http.request" in _events(server, key), what="app to read the first bytes")
    events = wait_until(lambda: [e for e in _events(server, key) if ":" in e or e == "send-ok"],
                        what="the send attempt")
    assert events == [expected]


def test_disconnect_while_the_app_streams_raises_oserror_in_send(server):
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /big?id=sd&n=500&size=1048576 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: _events(server, "sd") and _events(server, "sd")[0] > 0, what="streaming to start")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    events = wait_until(lambda: len(_events(server, "sd")) == 3 and _events(server, "sd"), what="send failure")
    assert events[1:] == ["ClientDisconnected", True]


def test_receive_after_the_response_returns_http_disconnect(server):
    with server.connect() as sock:
        sock.sendall(b"GET /receive-after-response?id=rar HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_responses(sock, 1)[0].body == b"done"
        wait_until(lambda: _events(server, "rar") == ["http.disconnect"], what="receive() to end")
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection itself stays usable
        assert read_responses(sock, 1)[0].status == 200
