"""WebSocket flow control and limits: a slow reader, a fast sender, keepalive pings, max_connections, shutdown."""

from __future__ import annotations

import select
import signal
import socket
import time

import httpx
import psutil
import pytest

from engine_util import EngineProc, exchange, parse_responses, wait_until
from ws_util import BINARY, CLOSE, PING, PONG, TEXT, close_frame, frame, open_raw

MiB = 1 << 20


def _events(proc: EngineProc, key: str) -> list:
    return httpx.get(f"{proc.url}/events?id={key}", timeout=20).json()


def _rss(proc: EngineProc) -> int:
    return psutil.Process(proc.proc.pid).memory_info().rss


def _settled(read, hold: float = 1.0, timeout: float = 60.0):
    """Wait until ``read()`` returns the same value for ``hold`` seconds; return it."""
    last = read()
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= hold:
            return last
    raise AssertionError(f"{read} never settled (last {last!r})")


def test_app_sending_to_a_client_that_stops_reading_waits_and_memory_stays_bounded(make_server):
    # 256 MiB sent in 256 KiB messages to a client that reads nothing: send() must wait
    # (write_buffer_size), so the worker holds about one message plus the kernel's buffers.
    proc = make_server(app="ws_apps:app")
    total_mib = 256
    rss_before = _rss(proc)
    ws = open_raw(proc, f"/flood?id=flood&mib={total_mib}")
    try:
        assert ws.status == 101
        progress = lambda: (_events(proc, "flood-progress") or [0])[0]  # noqa: E731
        wait_until(lambda: progress() > 0, what="the app to start sending")
        stalled_at = _settled(progress)
        held = stalled_at * 256 * 1024
        growth = _rss(proc) - rss_before
        assert held < 64 * MiB, f"the app got {held >> 20} MiB out to a client that reads nothing"
        assert growth < 48 * MiB, f"worker RSS grew {growth >> 20} MiB"
        # Then the client reads: everything arrives, in order, and the app finishes.
        received = 0
        while received < total_mib * MiB:
            got = ws.read(timeout=60)
            assert got is not None and got.opcode == BINARY and len(got.payload) == 256 * 1024
            received += len(got.payload)
        assert wait_until(lambda: _events(proc, "flood"), what="the app to finish") == [
            "app called", {"done": total_mib * 4}]
    finally:
        ws.close()


def test_app_that_reads_slowly_pauses_reading_from_the_client(make_server):
    # ws_max_queue: 2 unread messages, then the server reads no more: a client pushing 64 MiB
    # gets stuck in its socket buffers instead of the worker buffering it all.
    proc = make_server(app="ws_apps:app", settings={"ws_max_queue": 2})
    ws = open_raw(proc, "/slow-reader?id=slow&wait=1000")
    message = frame(BINARY, b"m" * MiB)
    count = 64
    data = message * count
    rss_before = _rss(proc)
    try:
        sock = ws.sock
        sock.setblocking(False)
        sent = 0
        stuck_since = None
        while sent < len(data):
            _, writable, _ = select.select([], [sock], [], 0.2)
            if writable:
                try:
                    sent += sock.send(data[sent:sent + MiB])
                    stuck_since = None
                    continue
                except BlockingIOError:
                    pass
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > 1.5:
                break
        assert sent < 40 * MiB, f"the server took {sent >> 20} MiB the app did not read"
        growth = _rss(proc) - rss_before
        assert growth < 32 * MiB, f"worker RSS grew {growth >> 20} MiB"
    finally:
        ws.close()


def test_reading_resumes_when_the_app_catches_up(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws_max_queue": 2})
    ws = open_raw(proc, "/slow-reader?id=catch-up&wait=1")
    try:
        for i in range(200):
            ws.send(frame(TEXT, b"%d" % i + b"." * 20000))
        ws.send(close_frame(1000))
        assert ws.read_close().close_code == 1000
    finally:
        ws.close()
    events = wait_until(lambda: [e for e in _events(proc, "catch-up") if "disconnect" in e]
                        if _events(proc, "catch-up") else None, what="the app to read everything")
    assert events == [{"received": 200, "disconnect": 1000}]


def test_peer_that_stops_answering_pings_is_closed_with_1011(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws_ping_interval": 0.5, "ws_ping_timeout": 1.0})
    ws = open_raw(proc, "/idle?id=no-pong")
    try:
        got = ws.read()
        assert got.opcode == PING and len(got.payload) == 4
        # No pong: the server gives up after ws_ping_timeout.
        assert ws.read_close().close_code == 1011
        assert ws.at_eof()
    finally:
        ws.close()
    assert wait_until(lambda: len(_events(proc, "no-pong")) == 2 and _events(proc, "no-pong"))[1] == {
        "disconnect": 1011}
    assert "ws_ping_timeout" in proc.log_text()


def test_peer_that_answers_pings_stays_connected(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws_ping_interval": 0.5, "ws_ping_timeout": 1.0})
    ws = open_raw(proc, "/echo")
    try:
        payloads = set()
        while len(payloads) < 4:  # four rounds: well past one ping_timeout
            got = ws.read()
            assert got.opcode == PING, got
            payloads.add(got.payload)
            ws.send(frame(PONG, got.payload))
        ws.send(frame(TEXT, b"alive"))
        got = ws.read()
        while got.opcode == PING:
            ws.send(frame(PONG, got.payload))
            got = ws.read()
        assert got.payload == b"alive"
    finally:
        ws.close()


def test_no_pings_when_the_interval_is_off(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws_ping_interval": None})
    ws = open_raw(proc, "/echo")
    try:
        ws.sock.settimeout(2.0)
        with pytest.raises(socket.timeout):
            ws.sock.recv(1)
    finally:
        ws.close()


def test_websockets_count_against_max_connections_and_are_never_evicted(make_server):
    proc = make_server(app="ws_apps:app", settings={"max_connections": 2})
    first, second = open_raw(proc, "/echo"), open_raw(proc, "/echo")
    third = proc.connect()
    try:
        assert first.status == second.status == 101
        third.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        third.settimeout(1.5)
        with pytest.raises(socket.timeout):
            third.recv(1)  # not accepted: the worker is at max_connections
        for ws in (first, second):  # and neither WebSocket was closed to make room
            ws.send(frame(TEXT, b"still here"))
            assert ws.read().payload == b"still here"
        first.send(close_frame(1000))
        assert first.read_close().close_code == 1000
        third.settimeout(20)
        data = b""
        while chunk := third.recv(65536):
            data += chunk
        assert parse_responses(data)[0].status == 200
    finally:
        for ws in (first, second):
            ws.close()
        third.close()


def test_shutdown_closes_websockets_with_1001_after_their_messages(make_server):
    proc = make_server(app="ws_apps:app")
    ws = open_raw(proc, "/echo")
    try:
        ws.send(frame(TEXT, b"before"))
        assert ws.read().payload == b"before"
        proc.proc.send_signal(signal.SIGTERM)
        close = ws.read_close()
        assert close.close_code == 1001
        ws.send(close_frame(1001))
        assert ws.at_eof()
    finally:
        ws.close()
    assert proc.proc.wait(30) == 0


def test_http_keeps_working_next_to_open_websockets(make_server):
    proc = make_server(app="ws_apps:app")
    sockets = [open_raw(proc, "/echo") for _ in range(20)]
    try:
        for _ in range(5):
            (resp,) = parse_responses(exchange(proc, b"GET /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
            assert resp.status == 200
        for ws in sockets:
            ws.send(frame(TEXT, b"ok"))
        assert all(ws.read().payload == b"ok" for ws in sockets)
    finally:
        for ws in sockets:
            ws.close()



def test_shutdown_is_prompt_when_an_app_that_reads_nothing_has_a_full_queue(make_server):
    # Reading is paused (the queue is full), so the server cannot see the client leave; the
    # closing handshake of the shutdown must read on to finish, not wait for ws_close_timeout.
    proc = make_server(app="ws_apps:app", settings={"ws_max_queue": 2, "ws_close_timeout": 30.0},
                       shutdown_timeout=30.0)
    ws = open_raw(proc, "/slow-reader?wait=1000")
    try:
        for _ in range(8):
            ws.send(frame(BINARY, b"m" * 300000))
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert ws.read_close().close_code == 1001
        ws.send(close_frame(1001))
        assert ws.at_eof()
        assert proc.proc.wait(30) == 0
        assert time.monotonic() - start < 10.0
    finally:
        ws.close()


def _read_ticks_until_close(ws) -> tuple[list[int], int]:
    ticks = []
    while True:
        got = ws.read()
        assert got is not None, "the TCP connection ended without a close frame"
        if got.opcode == TEXT:
            ticks.append(int(got.payload))
        elif got.opcode == CLOSE:
            return ticks, got.close_code


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 1001), (signal.SIGHUP, 1012)])
def test_shutdown_close_code_and_no_message_lost(make_server, sig, code):
    # SIGHUP makes serve.py shut down with restart=True, as a reload or a recycle does.
    proc = make_server(app="ws_apps:app")
    ws = open_raw(proc, "/ticker?id=ticker")
    try:
        first = ws.read()
        assert first.payload == b"0"
        proc.proc.send_signal(sig)
        ticks, got_code = _read_ticks_until_close(ws)
        assert got_code == code
        ws.send(close_frame(code))
        assert ws.at_eof()
    finally:
        ws.close()
    assert proc.proc.wait(30) == 0
    # Every message the app sent before the close arrived, in order, before the close frame.
    assert [0] + ticks == list(range(len(ticks) + 1))


def test_ws_drain_timeout_lets_websockets_run_before_closing(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws_drain_timeout": 2.0}, shutdown_timeout=30.0)
    ws = open_raw(proc, "/echo")
    try:
        proc.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        ws.send(frame(TEXT, b"still served while draining"))
        assert ws.read().payload == b"still served while draining"
        close = ws.read_close()
        assert close.close_code == 1001
        assert time.monotonic() - start >= 1.5
        ws.send(close_frame(1001))
        assert ws.at_eof()
    finally:
        ws.close()
    assert proc.proc.wait(30) == 0
