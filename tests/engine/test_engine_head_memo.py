"""The memo of validated ASGI response heads (corral.engine.cycle._HEADS).

start_response() memoises a validated head whole, keyed by (status, header
pairs). These tests check that the memo never lets an invalid head through,
never grows without bound, and gives exactly the bytes a fresh validation gives.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from corral.engine import cycle as cycle_mod
from corral.engine.cycle import Cycle
from corral.engine.wire import InvalidResponse


def _fresh_cycle() -> Cycle:
    # start_response() reads only these fields; no connection is needed.
    c = Cycle.__new__(Cycle)
    c.response_started = False
    c.keep_alive = True
    return c


def _start(status: Any, headers: Any) -> Cycle:
    c = _fresh_cycle()
    c.start_response(status, headers)
    return c


@pytest.fixture(autouse=True)
def empty_memo() -> Iterator[None]:
    saved = dict(cycle_mod._HEADS)
    cycle_mod._HEADS.clear()
    yield
    cycle_mod._HEADS.clear()
    cycle_mod._HEADS.update(saved)


def test_second_identical_head_is_a_memo_hit_with_the_same_bytes() -> None:
    headers = [(b"Content-Type", b"text/plain"), (b"content-length", b"13")]
    first = _start(200, headers)
    assert len(cycle_mod._HEADS) == 1
    second = _start(200, [(b"Content-Type", b"text/plain"), (b"content-length", b"13")])
    assert len(cycle_mod._HEADS) == 1
    assert first._head == second._head == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                           b"content-length: 13\r\n")
    assert second._length == 13 and second.status == 200


def test_status_is_part_of_the_key() -> None:
    a = _start(200, [(b"x-a", b"1")])
    b = _start(404, [(b"x-a", b"1")])
    assert a._head.startswith(b"HTTP/1.1 200 ") and b._head.startswith(b"HTTP/1.1 404 ")
    assert len(cycle_mod._HEADS) == 2


def test_invalid_head_is_refused_every_time_and_never_memoised() -> None:
    bad = [(b"x-evil", b"a\r\nset-cookie: stolen=1")]
    for _ in range(2):
        with pytest.raises(InvalidResponse):
            _start(200, bad)
    assert cycle_mod._HEADS == {}


def test_a_float_status_is_refused_even_when_the_int_is_memoised() -> None:
    _start(200, [(b"x-a", b"1")])
    with pytest.raises(InvalidResponse):
        _start(200.0, [(b"x-a", b"1")])


def test_unhashable_pairs_are_validated_and_not_memoised() -> None:
    c = _start(200, [[b"x-list", b"ok"]])
    assert c._head == b"HTTP/1.1 200 OK\r\nx-list: ok\r\n"
    assert cycle_mod._HEADS == {}
    with pytest.raises(InvalidResponse):
        _start(200, [[b"x-list", b"bad\nvalue"]])


def test_a_generator_of_headers_is_consumed_once() -> None:
    c = _start(200, ((n, v) for n, v in [(b"x-gen", b"1"), (b"content-length", b"2")]))
    assert c._head == b"HTTP/1.1 200 OK\r\nx-gen: 1\r\ncontent-length: 2\r\n"
    assert c._length == 2


def test_headers_that_are_not_iterable_are_an_invalid_response() -> None:
    with pytest.raises(InvalidResponse):
        _start(200, 42)


def test_connection_close_from_the_memo_still_ends_keep_alive() -> None:
    headers = [(b"connection", b"close")]
    _start(200, headers)
    c = _start(200, headers)  # from the memo
    assert c.keep_alive is False


def test_long_heads_are_not_memoised() -> None:
    _start(200, [(b"x-big", b"v" * (cycle_mod._HEAD_MEMO_BYTES + 1))])
    assert cycle_mod._HEADS == {}


def test_the_memo_is_bounded() -> None:
    limit = cycle_mod._HEADS_LIMIT
    for i in range(limit + 50):
        _start(200, [(b"x-n", str(i).encode())])
    assert len(cycle_mod._HEADS) == limit
    # Past the bound, heads are still validated and served correctly.
    c = _start(200, [(b"x-n", b"new")])
    assert c._head.endswith(b"x-n: new\r\n")
    with pytest.raises(InvalidResponse):
        _start(200, [(b"x-n", b"\x00")])
