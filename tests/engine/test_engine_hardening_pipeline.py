"""The head-size limit counts the bytes of one request head exactly, however the reads fall.

A read that began inside one request head and ended inside a later one used to
add all of its bytes to the later head's count: long pipelines then got a false
431 (issue 13, item 4). These tests drive one HttpProtocol in-process, over a
stand-in transport, with the same byte stream cut into reads at every position
and of every size; then once over a real socket, as the issue reported it.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Iterable

import pytest
import uvloop

from engine_util import parse_responses, read_responses

from corral.engine.asgi import ASGIInterface
from corral.engine.context import EngineContext
from corral.engine.protocol import HttpProtocol
from corral.engine.settings import EngineSettings

# Small limits keep the streams short: a head may hold max_head_bytes bytes.
SMALL = EngineSettings(max_request_line=64, max_header_size=256, max_header_count=8)


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request at once with its path and the body it got."""
    body = b""
    more = scope["method"] in ("POST", "PUT")
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    payload = scope["path"].encode() + b":" + str(len(body)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class FakeTransport:
    """What HttpProtocol uses of an asyncio transport; keeps the bytes written."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.reading = True
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str) -> Any:
        # What a plain TCP transport answers; anything else (ssl_object: not TLS) is None.
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class Harness:
    """One engine context on a private uvloop; each feed() is one connection fed read by read."""

    def __init__(self, settings: EngineSettings = SMALL) -> None:
        self.loop = uvloop.new_event_loop()
        self.ctx = EngineContext(self.loop, echo_app, settings, ASGIInterface.cycle_class, {})

    def close(self) -> None:
        self.loop.close()

    def feed(self, reads: Iterable[bytes]) -> FakeTransport:
        """Deliver ``reads`` as the loop would: one data_received per read, none while reading is paused."""
        conn = HttpProtocol(self.ctx)
        transport = FakeTransport()
        pending = list(reads)

        def step() -> None:
            # From a plain loop callback, as uvloop calls data_received (never inside a task).
            if not transport.closing and pending and transport.reading:
                conn.data_received(pending.pop(0))
            if pending and not transport.closing:
                self.loop.call_soon(step)
            else:
                self.loop.stop()

        conn.connection_made(transport)  # type: ignore[arg-type]
        self.loop.call_soon(step)
        self.loop.run_forever()
        conn.connection_lost(None)
        return transport


@pytest.fixture
def harness() -> Any:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def gets(n: int) -> bytes:
    return b"".join(b"GET /r%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(n))


def answered(transport: FakeTransport) -> list[tuple[int, bytes]]:
    return [(r.status, r.body) for r in parse_responses(bytes(transport.out))]


def expect_all_answered(transport: FakeTransport, n: int, what: str) -> None:
    got = answered(transport)
    statuses = sorted({status for status, _ in got})
    assert len(got) == n and statuses == [200], f"{what}: {len(got)} responses of {n}, statuses {statuses}"
    assert [body.split(b":")[0] for _, body in got] == [b"/r%d" % i for i in range(n)], what


def test_a_read_from_one_head_into_a_later_one_is_not_a_431(harness):
    # 60 requests (~1,900 bytes) against heads of at most ~1,400 bytes. The middle
    # read starts inside head number k (every k) and ends inside the last head.
    stream = gets(60)
    assert len(stream) > harness.ctx.max_head_bytes
    cut_end = len(stream) - 5
    for i in range(1, cut_end):
        transport = harness.feed([stream[:i], stream[i:cut_end], stream[cut_end:]])
        expect_all_answered(transport, 60, f"reads split at {i} and {cut_end}")


def test_pipelines_cut_into_reads_of_every_size_are_answered(harness):
    # 150 requests (~4,900 bytes): reads up to ~3.5 times the head limit, each
    # starting and ending at a different place in a head.
    stream = gets(150)
    for size in list(range(1, 400)) + list(range(400, len(stream) + 1, 11)):
        reads = [stream[i:i + size] for i in range(0, len(stream), size)]
        expect_all_answered(harness.feed(reads), 150, f"reads of {size} bytes")


def test_pipelines_with_bodies_cut_at_every_position(harness):
    # Bodies that look like request heads (and hold CRLF CRLF) must not confuse the count.
    tricky = b"GET /fake HTTP/1.1\r\nHost: t\r\n\r\n" * 3
    parts = []
    for i in range(25):  # the last one is a GET: the middle read ends inside its head
        if i % 3 == 1:
            parts.append(b"POST /r%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (i, len(tricky))
                         + tricky)
        elif i % 3 == 2:
            parts.append(b"POST /r%d HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" % i
                         + b"%x\r\n" % len(tricky) + tricky + b"\r\n0\r\n\r\n")
        else:
            parts.append(b"GET /r%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
    stream = b"".join(parts)
    cut_end = len(stream) - 5
    for i in range(1, cut_end):
        transport = harness.feed([stream[:i], stream[i:cut_end], stream[cut_end:]])
        expect_all_answered(transport, 25, f"reads split at {i} and {cut_end}")


@pytest.mark.parametrize("over", [0, 1])
def test_the_limit_is_exact_for_a_head_that_never_ends(harness, over):
    # After 20 answered requests, a head whose last header line never ends: it is
    # refused with 431 as soon as it holds one byte more than max_head_bytes, and
    # not before, wherever the reads are cut.
    limit = harness.ctx.max_head_bytes
    start = b"GET /last HTTP/1.1\r\nHost: t\r\nX-Endless: "
    head = start + b"v" * (limit + over - len(start))
    stream = gets(20) + head
    for size in list(range(1, 80)) + list(range(80, len(stream) + 1, 7)) + [len(stream)]:
        reads = [stream[i:i + size] for i in range(0, len(stream), size)]
        got = answered(harness.feed(reads))
        statuses = [status for status, _ in got]
        assert statuses[:20] == [200] * 20, f"reads of {size}"
        if over:
            assert statuses[20:] == [431], f"reads of {size}: a head of {limit + 1} bytes, got {statuses[20:]}"
        else:
            assert statuses[20:] == [], f"reads of {size}: a head of {limit} bytes, got {statuses[20:]}"


def test_a_head_after_a_body_is_still_bounded(harness):
    # After a request body the count may start late (a body can hold anything),
    # but a head that never ends is refused within one read of the limit.
    limit = harness.ctx.max_head_bytes
    stream = (b"POST /r0 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
              + b"GET /last HTTP/1.1\r\nHost: t\r\nX-Endless: " + b"v" * (3 * limit))
    for size in (1, 7, 100, limit // 2, limit, 2 * limit):
        reads = [stream[i:i + size] for i in range(0, len(stream), size)]
        statuses = [status for status, _ in answered(harness.feed(reads))]
        assert statuses == [200, 431], f"reads of {size}: {statuses}"


def _send_in_thread(sock: socket.socket, data: bytes) -> threading.Thread:
    def run() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("attempt", range(3))
def test_5002_pipelined_requests_after_a_split_head_are_all_answered(server, attempt):
    # Issue 13 item 4, over a socket: the first head in two pieces with a pause
    # between them, then 5,000 more requests in one go (reads of ~75 kB and more).
    first = b"GET /hello HTTP/1.1\r\nHo"
    rest = b"st: t\r\n\r\n" + b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n" * 5001
    with server.connect(timeout=60) as sock:
        sock.sendall(first)
        read_nothing_for(sock, 0.3)
        sender = _send_in_thread(sock, rest)
        responses = read_responses(sock, 5002, timeout=120)
        sender.join(30)
    statuses = [r.status for r in responses if r.complete]
    assert len(statuses) == 5002 and set(statuses) == {200}, \
        f"{len(statuses)} responses; statuses {sorted(set(statuses))}"


def read_nothing_for(sock: socket.socket, seconds: float) -> None:
    """The server answers nothing to half a head (and keeps the connection)."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(100)
    except socket.timeout:
        return
    raise AssertionError(f"unexpected bytes for half a request head: {data!r}")
