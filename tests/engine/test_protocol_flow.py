"""HttpProtocol in-process: pipelining, Expect: 100-continue, flow control, deadlines, shutdown.

The harness clock (``wire.clock``) stands in for time.monotonic(), so a
deadline is reached by moving it and sweeping, as the server's tick does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fake_transport import WireFactory
from test_protocol_requests import echo, request

from util import parse_responses

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Gate:
    """An app that answers each request once the test opens its gate (by path), in any order."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def open(self, path: str) -> None:
        self.gates.setdefault(path, asyncio.Event()).set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        self.started.append(path)
        await self.gates.setdefault(path, asyncio.Event()).wait()
        body = path.encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"hi"})


def still_usable(conn: Any) -> None:
    """The connection answers one more request (a positive check that it was kept)."""
    before = len(parse_responses(conn.written))
    conn.send(request(target="/still"))
    assert conn.responses(before + 1)[-1].status == 200


# --------------------------------------------------------------------------- pipelining


def test_pipelined_requests_are_answered_in_order_even_when_the_first_is_slowest(wire: WireFactory) -> None:
    app = Gate()
    conn = wire(app)
    conn.send(request(target="/a") + request(target="/b") + request(target="/c"))
    assert app.started == ["/a"], "one request at a time per connection"
    assert not conn.transport.reading, "reading pauses while pipelined requests wait"
    for path in ("/c", "/b", "/a"):
        conn.call(app.open, path)
    assert [r.body for r in conn.responses(3)] == [b"/a", b"/b", b"/c"]
    assert app.started == ["/a", "/b", "/c"]
    assert conn.transport.reading, "reading resumes once the queue is empty"


def test_pipelined_requests_split_across_reads_are_all_answered(wire: WireFactory) -> None:
    conn = wire(hello)
    data = request(target="/1") + request(target="/2") + request(target="/3")
    conn.send(data[:30])
    conn.send(data[30:70])
    conn.send(data[70:])
    assert [r.body for r in conn.responses(3)] == [b"hi"] * 3


def test_pipelined_bodies_go_to_their_own_requests(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request("POST", headers=[("Content-Length", "3")], body=b"one")
              + request("POST", headers=[("Transfer-Encoding", "chunked")]) + b"3\r\ntwo\r\n0\r\n\r\n"
              + request("POST", headers=[("Content-Length", "5")], body=b"three"))
    assert [r.body for r in conn.responses(3)] == [b"one", b"two", b"three"]


# --------------------------------------------------------------------------- Expect: 100-continue


def test_expect_100_continue_is_answered_when_the_app_reads_the_body(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request("POST", headers=[("Expect", "100-continue"), ("Content-Length", "4")]))
    assert conn.written == CONTINUE, "the app waits for the body: the client is told to send it"
    conn.take()
    conn.send(b"data")
    resp = parse_responses(conn.take())[0]
    assert (resp.status, resp.body, resp.header("connection")) == (200, b"data", None)


def test_expect_100_continue_is_not_sent_when_the_app_answers_without_reading(wire: WireFactory) -> None:
    conn = wire(hello)
    conn.send(request("POST", headers=[("Expect", "100-continue"), ("Content-Length", "4")]))
    resp = conn.response()
    assert CONTINUE not in conn.written
    # The client still holds a body back: the connection cannot be reused.
    assert resp.header("connection") == "close"


def test_expect_100_continue_from_http10_gets_no_interim_response(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request("POST", version="1.0", headers=[("Expect", "100-continue"), ("Content-Length", "2")]))
    assert conn.written == b""
    conn.send(b"ok")
    assert parse_responses(conn.written)[0].body == b"ok"


# --------------------------------------------------------------------------- flow control


def test_reading_pauses_while_the_app_does_not_read_the_body_and_resumes_when_it_does(wire: WireFactory) -> None:
    taken = asyncio.Event()
    got: list[bytes] = []

    async def lazy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await taken.wait()
        while True:
            message = await receive()
            got.append(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % sum(map(len, got))})

    conn = wire(lazy, body_buffer_size=1024)
    conn.send(request("POST", headers=[("Content-Length", "4096")]) + b"x" * 2000)
    assert not conn.transport.reading, "over body_buffer_size unread: stop reading from the client"
    conn.call(taken.set)
    conn.wait_for(lambda: conn.transport.reading, "reading to resume once the app took the body")
    conn.send(b"y" * 2096)
    assert conn.response().body == b"4096"
    assert conn.transport.reading, "reading is on again for the next request"
    still_usable(conn)


def test_a_body_left_unread_and_complete_when_the_app_answers_does_not_keep_reading_paused(
        wire: WireFactory) -> None:
    """The whole body arrived, over body_buffer_size (reading paused), before the app answered
    without reading it: the next request on the connection is read and answered."""
    app = Gate()
    conn = wire(app, body_buffer_size=1024)
    conn.send(request("POST", target="/ignore", headers=[("Content-Length", "4096")]) + b"x" * 10)
    conn.send(b"x" * 4086)  # the rest in one read: over the limit, and the end of the body
    assert not conn.transport.reading, "over body_buffer_size unread: stop reading from the client"
    conn.call(lambda: app.open("/ignore"))
    assert conn.response().body == b"/ignore"
    assert conn.transport.reading, "the body is complete and answered: read the next request"
    app.open("/still")
    still_usable(conn)


def test_send_waits_while_the_transport_is_paused_and_goes_on_after_resume(wire: WireFactory) -> None:
    sent: list[int] = []

    async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
            sent.append(i)
        await send({"type": "http.response.body", "body": b""})

    conn = wire(stream)
    conn.pause_writing()  # the client is not reading
    conn.send(request())
    assert sent == [], "the first send() waits for the transport to drain"
    assert b"part0;" in conn.written and b"part1;" not in conn.written
    conn.resume_writing()
    resp = conn.response()
    assert (sent, resp.body) == ([0, 1, 2], b"part0;part1;part2;")


def test_write_buffer_limit_is_set_on_the_transport(wire: WireFactory) -> None:
    conn = wire(hello, write_buffer_size=12345)
    assert conn.transport.high_water == 12345


# --------------------------------------------------------------------------- deadlines


def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout(wire: WireFactory) -> None:
    conn = wire(hello, keepalive_timeout=65)
    conn.send(request())
    conn.response()
    conn.clock.advance(64)
    conn.sweep()
    still_usable(conn)  # just inside the timeout: the connection is kept and answers
    conn.clock.advance(66)
    conn.sweep()
    conn.wait_closed()
    assert not conn.transport.aborted, "an idle connection is closed gracefully"


def test_a_head_that_does_not_complete_within_header_timeout_gets_408(wire: WireFactory) -> None:
    conn = wire(hello, header_timeout=10)
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
    conn.clock.advance(11)
    conn.sweep()
    resp = conn.response()
    assert (resp.status, resp.header("connection")) == (408, "close")
    conn.wait_closed()


def test_a_silent_new_connection_is_closed_after_header_timeout_without_a_response(wire: WireFactory) -> None:
    conn = wire(hello, header_timeout=10)
    conn.clock.advance(11)
    conn.sweep()
    conn.wait_closed()
    assert conn.written == b""


def test_body_that_stops_arriving_gets_408_after_body_timeout(wire: WireFactory) -> None:
    conn = wire(echo, body_timeout=5)
    conn.send(request("POST", headers=[("Content-Length", "10")]) + b"abc")
    conn.clock.advance(4)
    conn.send(b"de")  # bytes arriving restart the body deadline
    conn.clock.advance(4)
    conn.sweep()
    assert conn.written == b"", "the body deadline counts from the last bytes"
    conn.clock.advance(2)
    conn.sweep()
    assert conn.response().status == 408
    conn.wait_closed()


def test_client_that_does_not_read_is_dropped_after_write_timeout(wire: WireFactory) -> None:
    conn = wire(hello, write_timeout=30)
    conn.pause_writing()
    conn.clock.advance(31)
    conn.sweep()
    conn.wait_closed()
    assert conn.transport.aborted, "a client that stopped reading is aborted, not closed gracefully"


def test_request_over_request_timeout_is_cancelled_and_answered_504(wire: WireFactory) -> None:
    cancelled: list[bool] = []

    async def forever(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    conn = wire(forever, request_timeout=5)
    conn.send(request())
    conn.clock.advance(6)
    conn.sweep()
    assert conn.response().status == 504
    assert cancelled == [True]


# --------------------------------------------------------------------------- shutdown and eviction


def test_evict_closes_an_idle_connection_but_not_a_busy_one(wire: WireFactory) -> None:
    app = Gate()
    busy = wire(app)
    busy.send(request(target="/slow"))
    assert busy.protocol.evict() is False
    idle = wire(hello)
    idle.send(request())
    idle.response()
    assert idle.protocol.evict() is True
    idle.wait_closed()
    busy.call(app.open, "/slow")
    assert busy.response().body == b"/slow"


def test_drain_for_shutdown_finishes_the_current_response_with_close(wire: WireFactory) -> None:
    app = Gate()
    conn = wire(app)
    conn.send(request(target="/slow"))
    conn.call(conn.protocol.drain_for_shutdown)
    assert not conn.transport.closed, "a busy connection finishes its response"
    conn.call(app.open, "/slow")
    resp = conn.response()
    assert (resp.body, resp.header("connection")) == (b"/slow", "close")
    conn.wait_closed()


def test_drain_for_shutdown_closes_an_idle_connection_at_once(wire: WireFactory) -> None:
    conn = wire(hello)
    conn.send(request())
    conn.response()
    conn.call(conn.protocol.drain_for_shutdown)
    conn.wait_closed()


def test_draining_context_answers_with_connection_close(wire: WireFactory) -> None:
    conn = wire(hello)
    conn.ctx.draining = True
    conn.send(request())
    assert conn.response().header("connection") == "close"
    conn.wait_closed()


# --------------------------------------------------------------------------- WSGI on the same protocol


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi:" + body]


def test_wsgi_simple_request_is_served_inline(wire: WireFactory) -> None:
    conn = wire(wsgi_hello, interface="wsgi")
    conn.send(request() + request(target="/2"))
    assert [r.body for r in conn.responses(2)] == [b"wsgi:", b"wsgi:"]
    assert conn.ctx.stats.requests_total == 2


def test_wsgi_request_with_body(wire: WireFactory) -> None:
    conn = wire(wsgi_hello, interface="wsgi")
    conn.send(request("POST", headers=[("Content-Length", "4")], body=b"body"))
    resp = conn.response()
    assert (resp.status, resp.body, resp.header("server")) == (200, b"wsgi:body", "corral")
