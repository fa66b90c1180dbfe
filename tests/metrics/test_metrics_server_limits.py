"""The /metrics responder under a connection flood: a header timeout, and a slot for every scrape.

Silent and half-sent requests used to hold all 16 slots for the whole 10 s
timeout, so Prometheus (whose default scrape timeout is 10 s) waited in the
kernel queue and failed. Now the head must arrive within ``header_timeout``
and, when every slot is taken, the oldest connection that is not being
answered is closed for the newcomer.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import yaml

from corral.metrics.queue import accept_queue
from test_metrics_server import BODY, connect, exchange, served, split
from util import CORRAL, REPO, free_port, stop_process, wait_until

HALF_HEAD = b"GET /metrics HTTP/1.1\r\nHo"


def closed_by_server(sock: socket.socket) -> bool:
    """True if the server has closed ``sock`` and nothing is left to read (peeks: consumes nothing)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def read_response(sock: socket.socket) -> bytes:
    """One whole response (framed by its Content-Length), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(split(head + b"\r\n\r\n")[1]["content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def small_buffer_client(listener: socket.socket) -> socket.socket:
    """A client whose receive buffer stays small (no autotuning), so a large response cannot fit in it."""
    c = socket.socket(listener.family, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.settimeout(30)
    c.connect(listener.getsockname())
    return c


def scrape(address: tuple[str, int], timeout: float) -> tuple[int, bytes]:
    """One scrape that must be answered within ``timeout`` seconds: (status, body)."""
    with socket.create_connection(address, timeout=timeout) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    status, _, body = split(data)
    return status, body


def open_flood(listener: socket.socket, count: int) -> list[socket.socket]:
    """``count`` connections that hold on: every other one silent, the rest with half a request head."""
    flood = []
    for i in range(count):
        c = connect(listener)
        if i % 2:
            c.sendall(HALF_HEAD)
        flood.append(c)
    return flood


def test_silent_and_half_sent_connections_cannot_lock_out_a_scrape():
    """The supervisor's defaults (16 slots, 10 s timeout); 24 clients hold connections; a scrape is answered."""
    with served() as (listener, _):
        flood = open_flood(listener, 24)  # 16 slots and served()'s backlog of 8
        try:
            wait_until(lambda: accept_queue(listener).depth <= 8, what="the flood taken from the accept queue")
            status, body = scrape(listener.getsockname(), timeout=5.0)  # well within Prometheus's 10 s scrape timeout
            assert status == 200 and body.decode() == BODY
        finally:
            for c in flood:
                c.close()


def test_the_oldest_idle_connections_make_room_and_are_reported_once(caplog):
    with caplog.at_level(logging.WARNING, logger="corral.metrics"):
        with served(timeout=60.0, header_timeout=60.0) as (listener, _):
            flood = []
            for c in open_flood(listener, 24):
                flood.append(c)
                wait_until(lambda: accept_queue(listener).depth == 0, what="each flood connection accepted")
            try:
                status, body = scrape(listener.getsockname(), timeout=30.0)
                assert status == 200 and body.decode() == BODY
                # 25 accepted into 16 slots: the 9 oldest were closed, the newest kept theirs.
                wait_until(lambda: all(closed_by_server(c) for c in flood[:9]),
                           what="the 9 oldest flood connections closed")
                assert not any(closed_by_server(c) for c in flood[9:])
            finally:
                for c in flood:
                    c.close()
    reports = [r.message for r in caplog.records if "idle or slow" in r.message]
    assert len(reports) == 1, reports  # one report, not one line per closed connection


def test_a_client_that_does_not_send_its_head_in_time_gets_408():
    with served(header_timeout=1.0, timeout=60.0) as (listener, _):
        start = time.monotonic()
        with connect(listener) as c:
            c.sendall(HALF_HEAD)
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        elapsed = time.monotonic() - start
    assert split(data)[0] == 408
    assert elapsed < 30  # header_timeout (1 s), not timeout (60 s), with room for a loaded machine


def test_the_default_header_timeout_is_a_few_seconds():
    """Prometheus sends its request at once: a silent client is dropped well before a 10 s scrape timeout."""
    with served() as (listener, _):
        start = time.monotonic()
        with connect(listener) as c:
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        elapsed = time.monotonic() - start
    assert split(data)[0] == 408
    assert 4.0 <= elapsed < 9.0, elapsed


def test_connections_being_answered_keep_their_slots_and_newcomers_wait_in_the_kernel_queue():
    """Only connections being answered are never closed for another: newcomers then wait their turn."""
    big = "x" * (8 << 20) + "\n"  # more than the readers' small buffers hold: sending blocks until read
    with served(lambda: big, max_connections=2, timeout=60) as (listener, _):
        readers = [small_buffer_client(listener) for _ in range(2)]
        for c in readers:
            c.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            assert c.recv(16, socket.MSG_PEEK).startswith(b"HTTP/1.1 200")  # being answered; read no more yet
        waiting = connect(listener)
        try:
            wait_until(lambda: accept_queue(listener).depth == 1, what="the third client in the accept queue")
            assert not any(closed_by_server(c) for c in readers)
            # One reader takes its whole response: its slot frees and the waiting client is served.
            data = b""
            while chunk := readers[0].recv(1 << 20):
                data += chunk
            status, _, body = split(data)
            assert status == 200 and len(body) == len(big)
            readers[0].close()
            waiting.sendall(b"HEAD /metrics HTTP/1.1\r\n\r\n")
            data = b""
            while chunk := waiting.recv(65536):
                data += chunk
            assert split(data)[0] == 200
            wait_until(lambda: accept_queue(listener).depth == 0, what="the waiting client accepted")
        finally:
            for c in readers + [waiting]:
                c.close()


def test_scrapers_that_just_connected_are_not_closed_for_each_other():
    """A burst of scrapers over max_connections: a newcomer does not close the connections that
    were accepted a moment ago and have not sent their request heads yet (they get HEAD_GRACE);
    it waits its turn, and every one is answered."""

    def status_of(c: socket.socket) -> int | None:
        try:
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        except ConnectionResetError:
            return None
        return split(data)[0] if data else None

    with served(max_connections=2, timeout=60) as (listener, _):
        first = [connect(listener) for _ in range(2)]
        wait_until(lambda: accept_queue(listener).depth == 0, what="the first two accepted")
        newcomer = connect(listener)
        clients = [*first, newcomer]
        try:
            for c in clients:
                c.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            statuses = [status_of(c) for c in clients]
        finally:
            for c in clients:
                c.close()
    assert statuses == [200, 200, 200]


def test_a_full_server_closes_a_connection_that_had_its_response_before_an_idle_newcomer_waits():
    """A client that read its response but keeps the connection open is closable too."""
    with served(max_connections=1, timeout=60) as (listener, _):
        with connect(listener) as lingering:
            lingering.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            assert split(read_response(lingering))[0] == 200  # and it keeps its side open
            # The only slot is the lingering one's: it is closed, and the newcomer answered.
            assert split(exchange(listener, b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == 200


def test_corral_run_answers_a_scrape_during_a_connection_flood(tmp_path: Path) -> None:
    """End to end: the supervisor's own listener on metrics_bind, 24 held connections, then a scrape."""
    port, metrics_port = free_port(), free_port()
    config = {"app": "wsgi_hardening_apps:upload", "app_dir": str(REPO / "tests" / "wsgi"), "workers": 1,
              "bind": [f"127.0.0.1:{port}"], "metrics_bind": [f"127.0.0.1:{metrics_port}"],
              "control_socket": str(tmp_path / "control.sock")}
    (tmp_path / "corral.yaml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "corral.log", "wb") as log:
        proc = subprocess.Popen([CORRAL, "run", "--config", str(tmp_path / "corral.yaml")],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    flood: list[socket.socket] = []
    try:
        listener_address = ("127.0.0.1", metrics_port)
        wait_until(lambda: scrape(listener_address, 10.0)[0] == 200, timeout=60,
                   what="corral serving /metrics")
        for i in range(24):
            c = socket.create_connection(listener_address, timeout=30)
            if i % 2:
                c.sendall(HALF_HEAD)
            flood.append(c)
        status, body = scrape(listener_address, 5.0)  # within Prometheus's 10 s scrape timeout
        assert status == 200 and b"corral_" in body
    finally:
        for c in flood:
            c.close()
        stop_process(proc)

