"""The supervisor's /metrics responder, over real sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from contextlib import contextmanager

import pytest

from corral.metrics.exposition import CONTENT_TYPE
from corral.metrics.queue import accept_queue
from corral.metrics.server import MetricsServer
from util import wait_until

BODY = "# HELP up_total x\n# TYPE up_total counter\nup_total 1\n"


class LoopThread:
    """An asyncio loop in a thread, as the supervisor runs one, so tests can be plain sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro_or_fn, timeout: float = 30):
        async def run():
            result = coro_or_fn()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@contextmanager
def served(render=lambda: BODY, family=socket.AF_INET, address=("127.0.0.1", 0), **kwargs):
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(8)
    lt = LoopThread()
    server = None
    try:
        server = lt.call(lambda: MetricsServer(render, **kwargs))
        lt.call(lambda: server.serve(listener))
        yield listener, lt
    finally:
        if server is not None:
            lt.call(server.close)
        lt.close()
        listener.close()


def connect(listener: socket.socket) -> socket.socket:
    c = socket.socket(listener.family, socket.SOCK_STREAM)
    c.settimeout(30)
    c.connect(listener.getsockname())
    return c


def exchange(listener: socket.socket, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes."""
    with connect(listener) as c:
        c.sendall(request)
        chunks = []
        while chunk := c.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def test_get_metrics():
    with served() as (listener, _):
        status, headers, body = split(exchange(
            listener, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"))
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert body.decode() == BODY


def test_render_runs_per_request_and_query_strings_are_ignored():
    calls = []

    def render() -> str:
        calls.append(1)
        return f"n {len(calls)}\n"
    with served(render) as (listener, _):
        assert split(exchange(listener, b"GET /metrics HTTP/1.0\r\n\r\n"))[2] == b"n 1\n"
        assert split(exchange(listener, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"))[2] == b"n 2\n"
        assert split(exchange(listener, b"GET http://h:9/metrics HTTP/1.1\r\n\r\n"))[2] == b"n 3\n"


def test_head_has_headers_only():
    with served() as (listener, _):
        status, headers, body = split(exchange(listener, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) == len(BODY)


@pytest.mark.parametrize("request_bytes,expected", [
    (b"GET / HTTP/1.1\r\n\r\n", 404),
    (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
    (b"GET /other/metrics HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405),
    (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
    (b"garbage\r\n\r\n", 400),
    (b"GET /metrics\r\n\r\n", 400),
    (b"GET /metrics FOO/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    (b"GET /m\xe9trics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\n\n", 200),       # bare LF, as some hand-written clients send
])
def test_bad_or_unknown_requests(request_bytes, expected):
    with served() as (listener, _):
        status, headers, body = split(exchange(listener, request_bytes))
    assert status == expected
    if status == 405:
        assert headers["allow"] == "GET, HEAD"
    if status == 404:
        assert b"/metrics" in body


def test_oversized_request_head_is_refused():
    with served(max_head_bytes=1024) as (listener, _):
        request = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
        assert split(exchange(listener, request))[0] == 431
        # A head just under the limit is fine.
        ok = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 900 + b"\r\n\r\n"
        assert split(exchange(listener, ok))[0] == 200


def test_slow_client_gets_408_and_is_closed():
    with served(timeout=0.5) as (listener, _):
        with connect(listener) as c:
            c.sendall(b"GET /metrics HTTP/1.1\r\n")   # never finishes its head
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        assert split(data)[0] == 408


def test_client_that_closes_without_a_request_does_not_hurt():
    with served() as (listener, _):
        for _ in range(5):
            connect(listener).close()
        assert split(exchange(listener, b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == 200


def test_render_failure_is_a_500_and_logged(caplog):
    def render() -> str:
        raise RuntimeError("boom")
    with caplog.at_level(logging.ERROR, logger="corral.metrics"):
        with served(render) as (listener, _):
            status, _, body = split(exchange(listener, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert status == 500 and b"log" in body
    assert any("rendering metrics failed" in r.message for r in caplog.records)


def test_response_arrives_whole_even_with_unread_request_body():
    # The server answers before reading the body; its lingering close must not reset
    # the connection and destroy the response.
    big = "x" * 300_000 + "\n"
    with served(lambda: big) as (listener, _):
        request = b"GET /metrics HTTP/1.1\r\nContent-Length: 20000\r\n\r\n" + b"b" * 20000
        status, headers, body = split(exchange(listener, request))
    assert status == 200 and body.decode() == big


def test_many_scrapes_in_parallel():
    with served() as (listener, _):
        results = []

        def scrape():
            results.append(split(exchange(listener, b"GET /metrics HTTP/1.1\r\n\r\n"))[0])
        threads = [threading.Thread(target=scrape) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == [200] * 40


def test_unix_socket(tmp_path):
    with served(family=socket.AF_UNIX, address=str(tmp_path / "metrics.sock")) as (listener, _):
        assert split(exchange(listener, b"GET /metrics HTTP/1.1\r\n\r\n"))[2].decode() == BODY


def test_the_backlog_is_left_as_the_owner_set_it():
    # asyncio's create_server would call listen(100) again and override systemd's Backlog=.
    with served() as (listener, _):
        assert accept_queue(listener).max == 8


def test_a_socket_that_is_not_listening_is_refused():
    s = socket.socket()
    lt = LoopThread()
    try:
        server = lt.call(lambda: MetricsServer(lambda: BODY))
        with pytest.raises(ValueError, match="not listening"):
            lt.call(lambda: server.serve(s))
    finally:
        lt.close()
        s.close()


def test_close_ends_open_connections_and_keeps_the_listener():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    lt = LoopThread()
    try:
        server = lt.call(lambda: MetricsServer(lambda: BODY, timeout=60))
        lt.call(lambda: server.serve(listener))
        with connect(listener) as c:
            wait_until(lambda: accept_queue(listener).depth == 0, what="connection accepted")
            lt.call(server.close)
            assert c.recv(10) == b""          # closed by the server
        assert listener.fileno() != -1
        assert accept_queue(listener) is not None
    finally:
        lt.close()
        listener.close()
