"""Unit tests of WSGI status/header validation and encoding (response splitting refused)."""

from __future__ import annotations

import pytest

from corral.engine.contracts import HeadFlag
from corral.engine.wire import InvalidResponse
from corral.engine.wsgi.head import encode_headers, encode_status


def test_status_encoded_and_memoised():
    assert encode_status("200 OK") == (200, b"HTTP/1.1 200 OK\r\n")
    assert encode_status("418 I'm a teapot") == (418, b"HTTP/1.1 418 I'm a teapot\r\n")
    assert encode_status("200 OK") is encode_status("200 OK")


@pytest.mark.parametrize("status", ["200", "99 Low", "100 Continue", "600 High", "abc OK", "200 OK\r\nX: y", b"200 OK", 200, "2000 x"])
def test_bad_status_rejected(status):
    with pytest.raises(InvalidResponse):
        encode_status(status)


def test_headers_block_length_and_close():
    block, length, close, flags = encode_headers([("Content-Type", "text/plain"), ("Content-Length", "13")])
    assert block == b"Content-Type: text/plain\r\nContent-Length: 13"
    assert (length, close, flags) == (13, False, 0)
    assert encode_headers([]) == (b"", None, False, 0)
    # the app's own Date/Server replace the engine's
    flags = encode_headers([("Date", "x"), ("Server", "y")])[3]
    assert flags == HeadFlag.DATE | HeadFlag.SERVER
    assert type(flags) is int, "a plain int: IntFlag arithmetic is slow on the per-response path"
    # hop-by-hop fields are the server's: dropped, but "close" is honoured
    block, length, close, _ = encode_headers([("Connection", "Close"), ("Transfer-Encoding", "chunked"),
                                              ("Keep-Alive", "timeout=5"), ("X-A", "1")])
    assert (block, length, close) == (b"X-A: 1", None, True)
    # identical duplicate Content-Length is folded into one
    assert encode_headers([("Content-Length", "5"), ("content-length", "5")])[0] == b"Content-Length: 5"
    # latin-1 values go out as the bytes they stand for
    assert encode_headers([("X-Name", "caf\xe9")])[0] == b"X-Name: caf\xe9"
    # a two-item list is accepted, as gunicorn does
    assert encode_headers([["X-L", "v"]])[0] == b"X-L: v"


@pytest.mark.parametrize("headers", [
    [("X-Evil", "a\r\nSet-Cookie: stolen=1")],
    [("X-Evil", "a\nb")],
    [("X-Evil", "a\rb")],
    [("X-Evil", "nul\x00")],
    [("X-Evil", "bell\x07")],
    [("X Evil", "v")],
    [("X-Evil:", "v")],
    [("X-Evil\r\n", "v")],
    [("X-Num", 1)],
    [(b"X-Bytes", "v")],
    [("X-Euro", "\u20ac")],
    [("Content-Length", "12a")],
    [("Content-Length", "5"), ("Content-Length", "6")],
    [("a", "b", "c")],
    (("X", "tuple-of-headers"),),
    "X: y",
])
def test_bad_headers_rejected(headers):
    with pytest.raises(InvalidResponse):
        encode_headers(headers)


def test_memoised_result_is_revalidated_for_different_lists():
    good = [("X", "v")]
    encode_headers(good)
    with pytest.raises(InvalidResponse):
        encode_headers([("X", "v\r\nY: z")])


def test_encode_head_memoised_and_204_without_length():
    from corral.engine.wsgi.head import encode_head
    h = [("Content-Type", "text/plain"), ("Content-Length", "2")]
    assert encode_head("200 OK", h) == (200, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n",
                                        2, False, 0, True)
    assert encode_head("200 OK", list(h)) is encode_head("200 OK", h)
    assert encode_head("204 No Content", [("Content-Length", "0")]) == (204, b"HTTP/1.1 204 No Content\r\n",
                                                                        None, False, 0, False)
    # "plain": what the simple-request shortcut may send as it is.
    assert encode_head("200 OK", [("Connection", "close")])[3:] == (True, 0, False)
    assert encode_head("200 OK", [("Date", "x")])[5] is False
    assert encode_head("304 Not Modified", [])[5] is False
    # The app's own reason phrase is what the client gets (PEP 3333: the status as given).
    assert encode_head("200 Fine, Thanks", [])[1] == b"HTTP/1.1 200 Fine, Thanks\r\n"
    with pytest.raises(InvalidResponse):
        encode_head("200 OK", [("X", "a\nb")])
    with pytest.raises(InvalidResponse):
        encode_head("2OO OK", h)
