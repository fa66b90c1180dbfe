"""Responses over real sockets: framing, start_response/exc_info, write(), close(), files, HEAD."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from wsgi_util import connection_closed, recv_response, request, wait_until


def test_single_item_list_gets_content_length(server):
    r = request(server, "GET", "/multi")
    assert r.body == b"one,two,three"
    assert r.header("content-length") == "13" or r.header("transfer-encoding") == "chunked"
    r = request(server, "GET", "/environ")
    assert r.header("content-length") == str(len(r.body))


def test_generator_without_length_is_chunked_for_http11(server):
    r = request(server, "GET", "/stream?n=4")
    assert r.header("transfer-encoding") == "chunked" and r.header("content-length") is None
    assert r.body == b"".join(f"chunk {i}\n".encode() for i in range(4))
    assert r.complete


def test_generator_without_length_is_close_delimited_for_http10(server):
    r = request(server, "GET", "/stream?n=3", version="1.0")
    assert r.header("transfer-encoding") is None and r.header("connection") == "close"
    assert r.body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_lazy_start_response_inside_generator(server):
    r = request(server, "GET", "/empty-first")
    assert (r.status, r.body) == (201, b"late start")


def test_write_callable(server):
    r = request(server, "GET", "/write")
    assert r.body == b"written twice then returned"
    with server.connect() as sock:
        for _ in range(2):  # the declared length is respected across write() and the iterable
            sock.sendall(b"GET /write-length HTTP/1.1\r\nHost: t\r\n\r\n")
            r = recv_response(sock)
            assert r.header("content-length") == "11" and r.body == b"hello world" and r.complete


def test_exc_info_before_body_replaces_the_head(server):
    r = request(server, "GET", "/exc-before")
    assert r.status == 503 and r.body == b"custom error page"
    assert r.header("x-first") is None


def test_exc_info_after_body_reraises_and_closes(server):
    with server.connect() as sock:
        sock.sendall(b"GET /exc-after HTTP/1.1\r\nHost: t\r\n\r\n")
        r = recv_response(sock)
        assert r.status == 200 and not r.complete  # the chunked body is cut off, never terminated
        assert b"never sent" not in r.body
    wait_until(lambda: "went wrong after the body started" in server.log_text(), what="the re-raised error logged")


@pytest.mark.parametrize("path,logged", [
    ("/twice", "start_response() called a second time without exc_info"),
    ("/no-start", "without calling start_response()"),
    ("/raises", "boom from the app"),
    ("/bad-header", "response splitting"),
])
def test_app_errors_give_500(server, path, logged):
    r = request(server, "GET", path)
    assert r.status == 500
    assert b"injected" not in r.raw and b"unreachable" not in r.raw
    wait_until(lambda: logged in server.log_text(), what=f"log line {logged!r}")


def test_error_mid_body_closes_the_connection(server):
    with server.connect() as sock:
        sock.sendall(b"GET /fails-midway HTTP/1.1\r\nHost: t\r\n\r\nGET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        r = recv_response(sock)
        assert r.status == 200 and not r.complete and r.body == b"first part"
        assert connection_closed(sock)  # the pipelined request is never answered


def test_204_has_no_body_or_length(server):
    with server.connect() as sock:
        sock.sendall(b"GET /no-content HTTP/1.1\r\nHost: t\r\n\r\nGET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        r = recv_response(sock)
        assert r.status == 204 and r.header("content-length") is None and r.header("transfer-encoding") is None
        assert recv_response(sock).json()["PATH_INFO"] == "/environ"  # framing intact after it


def test_app_headers_kept_and_hop_by_hop_handled(server):
    with server.connect() as sock:
        sock.sendall(b"GET /custom-headers HTTP/1.1\r\nHost: t\r\n\r\n")
        r = recv_response(sock)
        assert [v for k, v in r.headers if k.lower() == "set-cookie"] == ["a=1", "b=2"]
        assert r.header("server") == "my-app" and r.header_names().count("server") == 1
        assert r.header("connection") == "close"
        assert connection_closed(sock)  # the app's Connection: close is honoured


def test_head_keeps_length_sends_no_body(server):
    with server.connect() as sock:
        sock.sendall(b"HEAD /environ HTTP/1.1\r\nHost: t\r\n\r\nGET /multi HTTP/1.1\r\nHost: t\r\n\r\n")
        head = recv_response(sock, head_only=True)
        assert head.status == 200 and int(head.header("content-length")) > 0
        assert recv_response(sock).body == b"one,two,three"  # no stray body bytes before it


# ---------------------------------------------------------------- close()

def test_close_called_after_normal_iteration(server, tmp_path):
    marker = tmp_path / "closed"
    r = request(server, "GET", f"/tracked?marker={marker}&chunks=3")
    assert len(r.body) == 3 * 65536
    wait_until(marker.exists, what="close() of the response iterable")
    assert marker.read_text().startswith("closed after 3 chunks")


def test_close_called_when_iteration_fails(server, tmp_path):
    marker = tmp_path / "closed"
    request(server, "GET", f"/tracked-error?marker={marker}")
    wait_until(marker.exists, what="close() after a failing iterable")


def test_close_called_when_client_disconnects(server, mode, tmp_path):
    """An endless response: the client reads a little and leaves; close() must still run."""
    marker = tmp_path / "closed"
    log_start = len(server.log_text())
    sock = server.connect()
    sock.sendall(f"GET /tracked?marker={marker} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    got = b""
    while len(got) < 200_000:
        got += sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # reset: the server's next writes fail
    wait_until(marker.exists, timeout=30, what="close() after the client disconnected")
    text = marker.read_text()
    if mode:
        assert "corral-wsgi" in text  # close() ran on the thread that ran the app
    assert request(server, "GET", "/environ").status == 200
    log = server.log_text()[log_start:]  # a disconnect is not an app error
    assert "never retrieved" not in log and "Traceback" not in log, log


# ---------------------------------------------------------------- wsgi.file_wrapper

@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "data.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    return path


def _sendfile_calls(server) -> int:
    return request(server, "GET", "/sendfile-count").json()["calls"]


def test_file_wrapper_uses_sendfile(server, big_file):
    before = _sendfile_calls(server)
    r = request(server, "GET", f"/file?path={big_file}")
    data = big_file.read_bytes()
    assert r.header("content-length") == str(len(data))
    assert hashlib.sha256(r.body).digest() == hashlib.sha256(data).digest()
    assert _sendfile_calls(server) > before


def test_file_wrapper_from_offset_and_with_shorter_length(server, big_file):
    data = big_file.read_bytes()
    r = request(server, "GET", f"/file?path={big_file}&offset=1000")
    assert r.body == data[1000:]
    r = request(server, "GET", f"/file?path={big_file}&offset=10&length=5000")
    assert r.header("content-length") == "5000" and r.body == data[10:5010]


def test_file_wrapper_longer_length_than_file_closes(server, big_file):
    size = big_file.stat().st_size
    with server.connect() as sock:
        sock.sendall(f"GET /file?path={big_file}&length={size + 10} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        r = recv_response(sock)
        assert not r.complete and len(r.body) == size
    wait_until(lambda: "Content-Length" in server.log_text(), what="the short file logged")


def test_file_wrapper_keeps_connection_usable(server, big_file):
    data = big_file.read_bytes()
    with server.connect() as sock:
        for _ in range(3):
            sock.sendall(f"GET /file?path={big_file}&offset=7 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert recv_response(sock).body == data[7:]
        sock.sendall(f"HEAD /file?path={big_file} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head = recv_response(sock, head_only=True)
        assert head.header("content-length") == str(len(data))
        sock.sendall(b"GET /multi HTTP/1.1\r\nHost: t\r\n\r\n")
        assert recv_response(sock).body == b"one,two,three"


def test_file_wrapper_non_file_is_iterated(server, big_file):
    before = _sendfile_calls(server)
    r = request(server, "GET", f"/file?path={big_file}&bytesio=1")
    assert r.body == big_file.read_bytes()
    assert _sendfile_calls(server) == before


def test_file_download_to_slow_reader(server, tmp_path):
    """More than the socket buffers hold, read slowly: sendfile must wait for writability and resume."""
    path = tmp_path / "large.bin"
    data = os.urandom(12 * 1024 * 1024)
    path.write_bytes(data)
    with server.connect() as sock:
        sock.sendall(f"GET /file?path={path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        _head, _, body = got.partition(b"\r\n\r\n")
        while len(body) < len(data):
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the whole file arrived"
            body += chunk
            if len(body) < 4 * 1024 * 1024:
                time.sleep(0.001)  # a slow client: the server's socket buffer fills up
        assert body == data
        sock.sendall(b"GET /multi HTTP/1.1\r\nHost: t\r\n\r\n")
        assert recv_response(sock).body == b"one,two,three"
