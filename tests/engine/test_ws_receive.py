"""The WebSocket receive path in-process: whatever way the bytes are cut, the app gets the same
messages in the same order, and every frame the fast path leaves to websockets' ServerProtocol
(control frames, fragments, frames too big to hold, protocol errors) is judged by it.

A ``WebSocketConnection`` on the harness's ``FakeTransport``; frames are built by ``ws_util.frame``
(masked, as a client sends them). The app's side is read with ``next_message()``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from fake_transport import FakeTransport
from websockets.protocol import State
from websockets.server import ServerProtocol
from ws_util import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_frame, frame

from corral.engine.settings import EngineSettings
from corral.engine.stats import EngineStats
from corral.engine.websocket.connection import WebSocketConnection

MAX = 100_000  # ws_max_message_size of these connections


class Conn:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_size: int = MAX) -> None:
        settings = replace(EngineSettings(), ws_max_message_size=max_size, ws_max_queue=10_000,
                           ws_ping_interval=None)
        self.stats = EngineStats()
        self.stats.connections_open = 1
        ctx: Any = SimpleNamespace(settings=settings, stats=self.stats, monotonic=lambda: 1000.0,
                                   write_buffer_size=1 << 20, write_timeout=30.0, loop=loop,
                                   connections=set(), connection_closed=lambda: None, ws_close_code=1001)
        self.proto = ServerProtocol(max_size=max_size, state=State.OPEN, logger=logging.getLogger("test.ws"))
        self.conn = WebSocketConnection(ctx, None, self.proto, "test", lambda: None)  # type: ignore[arg-type]
        self.transport = FakeTransport(loop, self.conn)
        self.conn.transport = self.transport
        self.conn.start(b"")

    def feed(self, data: bytes, cuts: list[int] | None = None) -> None:
        """``data`` in pieces cut at ``cuts`` (offsets), each its own data_received()."""
        edges = [0, *(cuts or []), len(data)]
        for start, end in itertools.pairwise(edges):
            if end > start:
                self.conn.data_received(data[start:end])

    def messages(self) -> list[str | bytes]:
        got = []
        while (message := self.conn.next_message()) is not None:
            got.append(message)
        return got

    def close_code(self) -> int | None:
        """The code of the close frame the server wrote, if any."""
        out = bytes(self.transport.data)
        while out:
            opcode, length = out[0] & 0x0F, out[1] & 0x7F
            head = 2 if length < 126 else 4 if length == 126 else 10
            if length == 126:
                length = struct.unpack("!H", out[2:4])[0]
            if opcode == CLOSE:
                return struct.unpack("!H", out[head:head + 2])[0]
            out = out[head + length:]
        return None


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def zero_masked(opcode: int, payload: bytes) -> bytes:
    """A frame masked with the key 0000, so its payload is on the wire as is (RFC 6455 allows it)."""
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", len(payload)) + b"\0\0\0\0" + payload


# A message too long to hold whose payload, on the wire, reads as frames: a receiver that lost
# its place in it would deliver "smuggled" messages.
SMUGGLER = frame(TEXT, b"smuggled") * 6000

# A conversation that mixes what the fast path takes with what it leaves to ServerProtocol.
STREAM = [
    (frame(TEXT, b"hello"), "hello"),
    (frame(BINARY, b"\x00\x01\x02"), b"\x00\x01\x02"),
    (frame(PING, b"p1"), None),
    (frame(TEXT, "é".encode() * 100), "é" * 100),  # 16-bit length
    (frame(TEXT, b"frag-", fin=False) + frame(PING, b"p2") + frame(CONT, b"ment"), "frag-ment"),
    (frame(BINARY, b""), b""),
    (frame(PONG, b"unsolicited"), None),
    (frame(BINARY, bytes(range(256)) * 300), bytes(range(256)) * 300),  # 76,800 B: 64-bit length
    (zero_masked(BINARY, SMUGGLER), SMUGGLER),
    (frame(TEXT, b"after"), "after"),
]
DATA = b"".join(f for f, _ in STREAM)
EXPECTED = [m for _, m in STREAM if m is not None]


def test_a_conversation_in_one_piece(loop):
    c = Conn(loop)
    c.feed(DATA)
    assert c.messages() == EXPECTED
    assert c.proto.state is State.OPEN and c.close_code() is None
    assert c.stats.ws.messages_in == len(EXPECTED)
    assert c.stats.ws.bytes_in == sum(len(m.encode() if isinstance(m, str) else m) for m in EXPECTED)
    # The pings were answered (by ServerProtocol), one pong each, in order.
    assert bytes(c.transport.data) == frame(PONG, b"p1", mask=False) + frame(PONG, b"p2", mask=False)


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 64, 1000, 4096, 65536])
def test_the_same_conversation_cut_every_few_bytes(loop, step):
    c = Conn(loop)
    c.feed(DATA, list(range(step, len(DATA), step)))
    assert c.messages() == EXPECTED
    assert c.proto.state is State.OPEN and c.close_code() is None


def test_cut_at_every_offset_of_the_small_frames(loop):
    head = b"".join(f for f, _ in STREAM[:7])  # all but the big frame: every single cut point
    expected = [m for _, m in STREAM[:7] if m is not None]
    for cut in range(1, len(head)):
        c = Conn(loop)
        c.feed(head, [cut])
        assert c.messages() == expected, cut


@pytest.mark.parametrize("data, code", [
    (frame(TEXT, b"hi", mask=False), 1002),  # unmasked
    (frame(TEXT, b"hi", rsv=4), 1002),  # RSV1 with no extension
    (frame(TEXT, b"ok \xff"), 1007),  # invalid UTF-8 (the fast path's own check)
    (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),  # a new message inside a fragmented one
    (frame(BINARY, b"x" * (MAX + 1)), 1009),  # over ws_max_message_size
    (frame(BINARY, b"", length=1 << 40), 1009),  # a huge declared length, never held
    (frame(3, b"hi"), 1002),  # a reserved opcode
])
@pytest.mark.parametrize("split", [False, True])
def test_protocol_errors_after_a_good_message_close_with_their_code(loop, data, code, split):
    c = Conn(loop)
    good = frame(TEXT, b"first")
    stream = good + data + frame(TEXT, b"never delivered")
    c.feed(stream, list(range(1, len(stream))) if split else None)
    assert c.messages() == ["first"]
    assert c.close_code() == code
    assert c.proto.state is not State.OPEN


def test_a_close_frame_ends_the_fast_path_and_nothing_after_it_is_delivered(loop):
    c = Conn(loop)
    c.feed(frame(TEXT, b"one") + close_frame(1000) + frame(TEXT, b"late"))
    assert c.messages() == ["one"]
    assert c.conn.ended and c.conn.code == 1000
    assert c.close_code() == 1000  # ServerProtocol echoed the close


def test_eof_in_the_middle_of_a_held_frame_is_an_abnormal_closure(loop):
    c = Conn(loop)
    data = frame(TEXT, b"complete") + frame(TEXT, b"cut short")
    c.feed(data[:-3])
    assert c.messages() == ["complete"]
    c.conn.eof_received()
    c.conn.connection_lost(None)
    assert c.conn.code == 1006


@pytest.mark.parametrize("step", [None, 1, 7, 4096, 65536])
def test_a_long_frame_whose_payload_reads_as_frames_is_one_message(loop, step):
    c = Conn(loop)
    data = zero_masked(BINARY, SMUGGLER) + frame(TEXT, b"after")
    c.feed(data, None if step is None else list(range(step, len(data), step)))
    got = c.messages()
    assert len(got) == 2 and got[0] == SMUGGLER and got[1] == "after", f"{len(got)} messages"
