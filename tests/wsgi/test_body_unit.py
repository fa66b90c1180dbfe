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


class Loop:
    """Stands in for the event loop: records pause/resume decisions."""

    def __init__(self):
        self.resumes = 0
        self.first_reads = 0

    def resume(self):
        self.resumes += 1

    def first_read(self):
        self.first_reads += 1


def feeder(stream: StreamingInput, chunks, then_eof=True):
    def run():
        for chunk in chunks:
            stream.feed(chunk)
        if then_eof:
            stream.feed_eof()
    t = threading.Thread(target=run)
    t.start()
    return t


def test_streaming_read_sizes_and_lines():
    loop = Loop()
    s = StreamingInput(high_water=1 << 20, resume=loop.resume, on_first_read=loop.first_read)
    t = feeder(s, [b"ab", b"c\nde", b"f\n", b"gh", b"\nlast"])
    assert s.read(1) == b"a"
    assert s.readline() == b"bc\n"
    assert s.readline(2) == b"de"
    assert s.readline() == b"f\n"
    assert list(s) == [b"gh\n", b"last"]
    assert s.read() == b"" and s.read(5) == b"" and s.readline() == b""
    t.join()
    assert loop.first_reads <= 1


def test_streaming_read_all_and_readlines():
    s = StreamingInput(high_water=1 << 20, resume=lambda: None)
    t = feeder(s, [b"1\n", b"2\n", b"3"])
    assert s.readlines() == [b"1\n", b"2\n", b"3"]
    t.join()
    s = StreamingInput(high_water=1 << 20, resume=lambda: None)
    t = feeder(s, [b"x" * 1000] * 10)
    assert s.read() == b"x" * 10000
    t.join()


def test_streaming_first_read_callback_fires_when_read_blocks():
    loop = Loop()
    s = StreamingInput(high_water=1 << 20, resume=loop.resume, on_first_read=loop.first_read)
    result = []
    reader = threading.Thread(target=lambda: result.append(s.read(3)))
    reader.start()
    wait_until(lambda: loop.first_reads == 1, what="first-read callback (100 Continue)")
    s.feed(b"abc")
    reader.join(10)
    assert result == [b"abc"]


def test_streaming_flow_control_pauses_and_resumes():
    loop = Loop()
    s = StreamingInput(high_water=100, resume=loop.resume)
    assert s.feed(b"x" * 50) is False
    assert s.feed(b"x" * 60) is True  # above high water: the loop must pause reading
    assert s.read(10) == b"x" * 10  # still above low water (25): no resume yet
    assert loop.resumes == 0
    s.read(80)
    assert loop.resumes == 1  # below low water: reading resumes
    assert s.feed(b"y" * 200) is True
    assert s.read(150) == b"x" * 20 + b"y" * 130


def test_streaming_reader_needing_more_than_high_water_resumes_the_loop():
    loop = Loop()
    s = StreamingInput(high_water=10, resume=loop.resume)
    assert s.feed(b"a" * 12) is True
    out = []
    reader = threading.Thread(target=lambda: out.append(s.read(30)))
    reader.start()
    wait_until(lambda: loop.resumes >= 1, what="resume while the reader waits")
    s.feed(b"b" * 12)
    s.feed(b"c" * 12)
    reader.join(10)
    assert out == [b"a" * 12 + b"b" * 12 + b"c" * 6]


def test_streaming_disconnect_raises_in_reader():
    s = StreamingInput(high_water=100, resume=lambda: None)
    s.feed(b"partial")
    errors = []

    def read_all():
        try:
            s.read()
        except ClientDisconnected as exc:
            errors.append(exc)

    reader = threading.Thread(target=read_all)
    reader.start()
    s.feed_error(ClientDisconnected("client disconnected before the request body was complete"))
    reader.join(10)
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    with pytest.raises(ClientDisconnected):
        s.read(100)


def test_streaming_error_after_eof_is_ignored():
    s = StreamingInput(high_water=100, resume=lambda: None)
    s.feed(b"done")
    s.feed_eof()
    s.feed_error(ClientDisconnected("late"))
    assert s.read() == b"done"
