"""wsgi.input over real sockets: every read style, chunked bodies, 100-continue, bounded memory."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from wsgi_util import MODE_IDS, MODES, chunked, recv_response, request, wait_until

BODY = b"first line\nsecond line\n" + b"x" * 300 + b"\nno newline at the end"
LINES = [line.decode() for line in BODY.splitlines(keepends=True)]


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("read_mode", ["read", "readn", "readline", "readline-limit", "readlines", "iter"])
def test_read_styles(server, framing, read_mode):
    headers = {"Transfer-Encoding": "chunked"} if framing == "chunked" else {}
    payload = chunked(BODY, 17) if framing == "chunked" else BODY
    r = request(server, "POST", f"/body?mode={read_mode}", headers=headers, body=payload)
    assert r.status == 200, r.body
    got = r.json()
    assert got["length"] == len(BODY)
    assert got["sha256"] == hashlib.sha256(BODY).hexdigest()
    if read_mode == "readn":
        assert got["max_piece"] <= 7
    if read_mode == "readline-limit":
        assert got["max_piece"] <= 5
    if read_mode in ("readline", "readlines", "iter"):
        assert got["lines"] == LINES


def test_chunked_body_has_no_content_length(server):
    r = request(server, "POST", "/environ", headers={"Transfer-Encoding": "chunked"}, body=chunked(b"abc"))
    env = r.json()
    assert "CONTENT_LENGTH" not in env and env["wsgi.input_terminated"] is True


def test_body_sent_slowly_in_pieces(server):
    """A body that trickles in (threads: streamed to the app; inline: collected first)."""
    body = os.urandom(200_000)
    with server.connect() as sock:
        sock.sendall(b"POST /body?mode=stream HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 20_000):
            sock.sendall(body[i:i + 20_000])
        r = recv_response(sock)
    assert r.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_expect_100_continue(server):
    with server.connect() as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        r = recv_response(sock)
    assert r.json()["length"] == 5


def test_unread_body_is_discarded_and_connection_reused(server):
    with server.connect() as sock:
        sock.sendall(b"POST /body?mode=ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100000)
        assert recv_response(sock).json() == {"ignored": True}
        sock.sendall(b"GET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        assert recv_response(sock).json()["REQUEST_METHOD"] == "GET"


def test_client_gone_mid_upload_leaves_server_healthy(server):
    with server.connect() as sock:
        sock.sendall(b"POST /body?mode=stream HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"q" * 1000)
    # Whatever happened to that request, the server answers the next ones.
    for _ in range(3):
        assert request(server, "GET", "/environ").status == 200
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize("threads", MODES, ids=MODE_IDS)
def test_large_upload_memory_bounded(make_server, threads):
    """A 256 MiB upload: streamed to the app (threads) or spooled to a temp file (inline); RSS stays flat."""
    srv = make_server(threads=threads, settings={"max_body_size": None, "wsgi_spool_threshold": 1 << 20})
    request(srv, "POST", "/body?mode=stream", body=b"warm-up" * 1000)
    baseline = srv.rss()
    total = 256 << 20
    block = os.urandom(1 << 20)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], srv.rss())
            except Exception:
                return
            done.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sha = hashlib.sha256()
    try:
        with srv.connect(timeout=120) as sock:
            sock.sendall(b"POST /body?mode=stream HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(total // len(block)):
                sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
                sha.update(block)
            sock.sendall(b"0\r\n\r\n")
            r = recv_response(sock)
    finally:
        done.set()
        sampler.join()
    assert r.json() == {"length": total, "sha256": sha.hexdigest()}
    growth = peak[0] - baseline
    assert growth < 48 << 20, f"RSS grew by {growth >> 20} MiB during a {total >> 20} MiB upload"


def test_no_100_continue_when_threaded_app_ignores_the_body(make_server):
    """Threads: 100 Continue goes out only when the app reads wsgi.input (inline collects the body first)."""
    srv = make_server(threads=2)
    with srv.connect() as sock:
        sock.sendall(b"POST /body?mode=ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        r = recv_response(sock)
        assert r.status == 200 and r.json() == {"ignored": True}
        assert r.header("connection") == "close"  # the withheld body is never read: the connection ends
