"""Unit tests of wsgi.input: the spooled body (inline mode) and the streaming input (threads)."""

from __future__ import annotations

import threading

import pytest

from corral.engine.wsgi.body import ClientDisconnected, SpooledBody, StreamingInput
from util import wait_until


def test_spooled_body_in_memory_below_threshold():
    body = SpooledBody(threshold=100)
    body.feed(b"line one\n")
    body.feed(b"line two\nrest")
    assert not body.spooled
    stream = body.finish()
    assert stream.readline() == b"line one\n"
    assert list(stream) == [b"line two\n", b"rest"]
    body.close()


def test_spooled_body_moves_to_a_temp_file_past_threshold(tmp_path):
    body = SpooledBody(threshold=1000, spool_dir=str(tmp_path))
    chunk = b"x" * 999 + b"\n"
    for _ in range(5):
        body.feed(chunk)
    assert body.spooled and body.size == 5000
    stream = body.finish()
    assert stream.read(10) == b"x" * 10
    assert stream.readline() == b"x" * 989 + b"\n"
    assert stream.readlines() == [chunk] * 4
    assert stream.read() == b""
    # The temp file is anonymous: nothing is left in the spool directory.
    assert list(tmp_path.iterdir()) == []
    body.close()
    assert stream.closed


def test_spooled_empty_body():
    assert SpooledBody(10).finish().read() == b""


class Supplier:
    """Stands in for the event loop: answers each request for more with the next queued item."""

    def __init__(self, items, then_eof=True):
        self.items = list(items)
        self.then_eof = then_eof
        self.requests = 0
        self.stream: StreamingInput | None = None

    def request_more(self):
        self.requests += 1
        # The real loop answers later, from another thread; answering from a
        # helper thread keeps that shape.
        threading.Thread(target=self.answer).start()

    def answer(self):
        if self.items:
            item = self.items.pop(0)
            if isinstance(item, BaseException):
                self.stream.feed_error(item)
            else:
                self.stream.feed(item)
        elif self.then_eof:
            self.stream.feed_eof()


def stream_of(items, then_eof=True):
    supplier = Supplier(items, then_eof)
    supplier.stream = StreamingInput(supplier.request_more)
    return supplier.stream, supplier


def test_streaming_read_sizes_and_lines():
    s, sup = stream_of([b"ab", b"c\nde", b"f\n", b"gh", b"\nlast"])
    assert s.read(1) == b"a"
    assert s.readline() == b"bc\n"
    assert s.readline(2) == b"de"
    assert s.readline() == b"f\n"
    assert list(s) == [b"gh\n", b"last"]
    assert s.read() == b"" and s.read(5) == b"" and s.readline() == b""
    assert sup.requests == 6  # one request per chunk, one for EOF: never more than asked


def test_streaming_read_all_and_readlines():
    s, _ = stream_of([b"1\n", b"2\n", b"3"])
    assert s.readlines() == [b"1\n", b"2\n", b"3"]
    s, _ = stream_of([b"x" * 1000] * 10)
    assert s.read() == b"x" * 10000
    s, _ = stream_of([b"abc", b"def"])
    assert s.read1(100) == b"abc"


def test_streaming_nothing_requested_until_read():
    s, sup = stream_of([b"data"])
    assert sup.requests == 0
    assert s.read(0) == b"" and sup.requests == 0
    assert s.read(4) == b"data" and sup.requests == 1


def test_streaming_disconnect_raises_in_reader():
    s, _ = stream_of([b"partial", ClientDisconnected("client disconnected before the request body was complete")])
    with pytest.raises(ClientDisconnected) as info:
        s.read()
    assert isinstance(info.value, OSError)
    with pytest.raises(ClientDisconnected):
        s.read(100)


def test_streaming_error_after_eof_is_ignored():
    s, _ = stream_of([])
    s.feed(b"done")
    s.feed_eof()
    s.feed_error(ClientDisconnected("late"))
    assert s.read() == b"done"
