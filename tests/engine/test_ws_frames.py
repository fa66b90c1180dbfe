"""WebSocket frames over raw sockets: protocol errors and their close codes, fragments, pings, closing."""

from __future__ import annotations

import struct

import httpx
import pytest

from engine_util import EngineProc, served, wait_until
from ws_util import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_frame, frame, open_raw


@pytest.fixture(scope="module")
def ws_server():
    # A small message limit, so the 1009 cases stay small.
    yield from served("ws_apps:app", settings={"ws_max_message_size": 4096})


def _events(proc: EngineProc, key: str) -> list:
    return httpx.get(f"{proc.url}/events?id={key}", timeout=20).json()


def _app_saw(proc: EngineProc, key: str) -> dict:
    """The disconnect the echo route recorded."""
    return wait_until(lambda: [e for e in _events(proc, key) if isinstance(e, dict)], what="the disconnect")[0]


# Each case: bytes a broken client sends after the handshake, and the close code the server must send.
BROKEN = {
    "unmasked-frame": (frame(TEXT, b"hi", mask=False), 1002),
    "rsv1-without-deflate": (frame(TEXT, b"hi", rsv=4), 1002),
    "rsv2": (frame(TEXT, b"hi", rsv=2), 1002),
    "rsv3": (frame(BINARY, b"hi", rsv=1), 1002),
    "opcode-3": (frame(3, b"hi"), 1002),
    "opcode-11": (frame(11, b""), 1002),
    "ping-of-126-bytes": (frame(PING, b"p" * 126), 1002),
    "fragmented-ping": (frame(PING, b"p", fin=False), 1002),
    "fragmented-close": (frame(CLOSE, struct.pack("!H", 1000), fin=False), 1002),
    "continuation-first": (frame(CONT, b"x"), 1002),
    "text-inside-a-fragmented-message": (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
    "invalid-utf8": (frame(TEXT, b"ok \xff\xfe"), 1007),
    "truncated-utf8": (frame(TEXT, "é".encode()[:1]), 1007),
    "invalid-utf8-in-a-first-fragment": (frame(TEXT, b"\xc3\x28", fin=False), 1007),
    "utf8-cut-at-the-end": (frame(TEXT, b"a", fin=False) + frame(CONT, "é".encode()[:1]), 1007),
    "close-code-999": (close_frame(999), 1002),
    "close-code-1005": (close_frame(1005), 1002),
    "close-code-1006": (close_frame(1006), 1002),
    "close-code-2000": (close_frame(2000), 1002),
    "close-with-1-byte": (frame(CLOSE, b"\x03"), 1002),
    "close-reason-not-utf8": (close_frame(1000, b"\xff"), 1007),
    "message-over-the-limit": (frame(BINARY, b"x" * 4097), 1009),
    "fragments-over-the-limit": (frame(BINARY, b"x" * 3000, fin=False) + frame(CONT, b"x" * 1500), 1009),
    "huge-declared-length": (frame(BINARY, b"", length=1 << 40), 1009),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_protocol_error_closes_with_its_code(ws_server, name):
    data, code = BROKEN[name]
    ws = open_raw(ws_server, f"/echo?id=broken-{name}")
    try:
        assert ws.status == 101
        ws.send(data)
        close = ws.read_close()
        assert close.close_code == code, close
        assert ws.at_eof(), "the server must drop the TCP connection after failing the WebSocket"
    finally:
        ws.close()
    # The app learns why (the code the server failed the connection with), and nothing was echoed.
    assert _app_saw(ws_server, f"broken-{name}")["disconnect"] == code
    assert "Traceback" not in ws_server.log_text()


def test_fragmented_messages_are_reassembled_with_pings_between(ws_server):
    ws = open_raw(ws_server, "/echo")
    try:
        text = "héllo wörld".encode()
        cut = text.index(b"\xc3") + 1  # split inside a two-byte UTF-8 sequence
        ws.send(frame(TEXT, text[:cut], fin=False) + frame(PING, b"in between") + frame(CONT, text[cut:-3], fin=False)
                + frame(CONT, text[-3:]))
        pong = ws.read()
        assert (pong.opcode, pong.payload) == (PONG, b"in between")
        echoed = ws.read()
        assert (echoed.opcode, echoed.payload, echoed.fin) == (TEXT, text, True)
        ws.send(frame(BINARY, b"\x00\x01", fin=False) + frame(CONT, b"", fin=False) + frame(CONT, b"\x02"))
        echoed = ws.read()
        assert (echoed.opcode, echoed.payload) == (BINARY, b"\x00\x01\x02")
    finally:
        ws.close()


def test_ping_is_answered_with_the_same_payload(ws_server):
    ws = open_raw(ws_server, "/echo")
    try:
        for payload in (b"", b"abc", bytes(range(125))):
            ws.send(frame(PING, payload))
            pong = ws.read()
            assert (pong.opcode, pong.payload) == (PONG, payload)
        ws.send(frame(PONG, b"unsolicited") + frame(TEXT, b"still open"))
        assert ws.read().payload == b"still open"
    finally:
        ws.close()


def test_message_at_the_limit_passes(ws_server):
    ws = open_raw(ws_server, "/echo")
    try:
        ws.send(frame(BINARY, b"y" * 4096))
        assert ws.read().payload == b"y" * 4096
    finally:
        ws.close()


@pytest.mark.parametrize("code,reason", [(1000, b""), (1001, b"going"), (4000, "bye ünïcode".encode())])
def test_client_close_is_echoed_and_reaches_the_app(ws_server, code, reason):
    key = f"client-close-{code}"
    ws = open_raw(ws_server, f"/collect?id={key}")
    try:
        # In one packet: messages before the close still reach the app, in order.
        ws.send(frame(TEXT, b"one") + frame(BINARY, b"\x02") + close_frame(code, reason))
        close = ws.read_close()
        assert close.close_code == code and close.payload[2:] == reason
        assert ws.at_eof()
    finally:
        ws.close()
    assert _app_saw(ws_server, key) == {"messages": ["one", "02"], "disconnect": code, "reason": reason.decode()}


def test_empty_close_frame_is_1005_for_the_app(ws_server):
    ws = open_raw(ws_server, "/echo?id=empty-close")
    try:
        ws.send(close_frame(None))
        close = ws.read_close()
        assert close.payload == b""
        assert ws.at_eof()
    finally:
        ws.close()
    assert _app_saw(ws_server, "empty-close")["disconnect"] == 1005


def test_lost_tcp_connection_is_1006_for_the_app(ws_server):
    ws = open_raw(ws_server, "/echo?id=lost")
    ws.send(frame(TEXT, b"x"))
    assert ws.read().payload == b"x"
    ws.close()
    assert _app_saw(ws_server, "lost")["disconnect"] == 1006


def test_app_close_code_reaches_the_client_and_send_after_close_raises(ws_server):
    ws = open_raw(ws_server, "/close-with?id=app-close&code=4001&reason=done")
    try:
        close = ws.read_close()
        assert close.close_code == 4001 and close.payload[2:] == b"done"
        ws.send(close_frame(4001))
        assert ws.at_eof()
    finally:
        ws.close()
    events = wait_until(lambda: len(_events(ws_server, "app-close")) == 3 and _events(ws_server, "app-close"))
    assert events[1] == {"type": "websocket.disconnect", "code": 4001, "reason": ""}
    assert events[2] == {"send_after_close": "ClientDisconnected"}


def test_invalid_close_code_from_the_app_is_an_app_error(ws_server):
    ws = open_raw(ws_server, "/close-with?code=1006")
    try:
        assert ws.read_close().close_code == 1011
    finally:
        ws.close()
    wait_until(lambda: "cannot be sent" in ws_server.log_text(), what="the app error in the log")


def test_send_after_the_peer_left_raises_an_oserror(ws_server):
    ws = open_raw(ws_server, "/send-after-disconnect?id=late")
    ws.close()
    events = wait_until(lambda: len(_events(ws_server, "late")) == 3 and _events(ws_server, "late"))
    assert events[1] == {"disconnect": 1006}
    assert events[2] == {"send_raised": "ClientDisconnected", "is_oserror": True}


def test_exception_after_accept_closes_with_1011(ws_server):
    ws = open_raw(ws_server, "/raise-after")
    try:
        ws.send(frame(TEXT, b"go"))
        assert ws.read_close().close_code == 1011
    finally:
        ws.close()
    wait_until(lambda: "boom after accept" in ws_server.log_text(), what="the traceback in the log")


def test_app_that_returns_closes_with_1000_after_its_messages(ws_server):
    ws = open_raw(ws_server, "/returns")
    try:
        assert ws.read().payload == b"bye"
        assert ws.read_close().close_code == 1000
        ws.send(close_frame(1000))
        assert ws.at_eof()
    finally:
        ws.close()


def test_peer_that_never_answers_the_close_is_dropped_after_the_close_timeout(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws_close_timeout": 1.0})
    ws = open_raw(proc, "/returns")
    try:
        assert ws.read_close().close_code == 1000
        # Keep the socket open and silent: the server must not wait forever.
        assert ws.at_eof(timeout=20)
    finally:
        ws.close()
    wait_until(lambda: "ws_close_timeout" in proc.log_text(), what="the drop to be logged")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_send_fast_path_frames_match_the_websockets_serializer(opcode, length):
    from websockets.frames import Frame, Opcode

    from corral.engine.websocket.connection import frame_head

    payload = b"p" * length
    assert frame_head(opcode, length) + payload == Frame(Opcode(opcode), payload).serialize(mask=False)


def test_large_messages_both_ways_at_every_length_boundary(ws_server):
    ws = open_raw(ws_server, "/echo")
    try:
        for n in (125, 126, 127, 4095, 4096):
            ws.send(frame(BINARY, b"b" * n))
            got = ws.read()
            assert (got.opcode, len(got.payload)) == (BINARY, n)
            ws.send(frame(TEXT, b"t" * n))
            got = ws.read()
            assert (got.opcode, got.payload) == (TEXT, b"t" * n)
    finally:
        ws.close()
