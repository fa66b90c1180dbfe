"""HTTP/1.1 point 3: request bodies by Content-Length and chunked, trailers kept out of the scope."""

from __future__ import annotations

import hashlib
import json
import os

import httpx

from engine_util import read_responses


def test_content_length_body(server):
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
        (resp,) = read_responses(sock, 1)
    assert resp.status == 200 and resp.body == b"hello world"


def test_chunked_body_in_pieces(server):
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        sock.sendall(b"6;ext=1\r\n world\r\n")
        sock.sendall(b"0\r\n\r\n")
        (resp,) = read_responses(sock, 1)
    assert resp.status == 200 and resp.body == b"hello world"


def test_trailers_never_appear_in_scope_headers(server):
    with server.connect() as sock:
        sock.sendall(b"POST /echo-info HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     b"Trailer: x-checksum\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-Checksum: 123\r\nX-Other-Trailer: 1\r\n\r\n")
        (resp,) = read_responses(sock, 1)
        info = json.loads(resp.body)
        assert info["body"] == "abc"
        assert info["headers"] == ["host", "transfer-encoding", "trailer"]
        # The connection is still in sync after the trailers.
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1)
        assert resp.body == b"Hello, world!"


def test_large_upload_streams_through(server):
    body = os.urandom(8 * 1024 * 1024)
    r = httpx.post(server.url + "/echo", content=body, timeout=60)
    assert r.status_code == 200
    assert r.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
    assert r.content == body


def test_large_chunked_upload(server):
    parts = [os.urandom(100_000) for _ in range(30)]
    r = httpx.post(server.url + "/echo", content=iter(parts), timeout=60)
    assert r.status_code == 200
    assert r.headers["x-body-sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
