"""A client that leaves is not an application error (issue 12, defect 4).

A browser closing a Server-Sent-Events tab, or ``curl -I`` against a static
file, used to log ``ERROR Exception in ASGI application`` with a traceback
ending in ``ClientDisconnect``/``ClientDisconnected``. Now:

* a HEAD response's body, once its head is out and its length declared, is
  accepted and dropped even after the client left (it was never going to be
  written), and so is a GET's whose declared rest is short (at most 1 MiB:
  the app finishes quietly, as under uvicorn);
* a body without a length, or with more than 1 MiB still due, sent after the
  client left still raises ``ClientDisconnected``, an ``OSError`` (ASGI spec
  2.4: that is how a stream learns to stop), and the app's resulting
  exception is logged at debug, without a traceback;
* a real bug that runs after the client left is still an ERROR.
"""

from __future__ import annotations

import json
import socket
from typing import Iterator

import pytest

from engine_util import EngineProc, parse_responses, read_responses, wait_until

from corral.engine.cycle import ClientDisconnected, DisconnectCause, disconnect_cause

STATIC_LEN = len(b"body { color: teal; }\n" * 500)


@pytest.fixture(scope="module")
def starlette_server() -> Iterator[EngineProc]:
    proc = EngineProc(app="hardening_apps:starlette_app")
    try:
        yield proc
    finally:
        proc.cleanup()


def outcomes(proc: EngineProc) -> dict[str, str]:
    with proc.connect(timeout=20) as sock:
        sock.sendall(b"GET /outcomes HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,) = read_responses(sock, 1, timeout=20)
    return json.loads(resp.body)


def outcome(proc: EngineProc, key: str, *done: str) -> str:
    """How the app run with ``?id=key`` ended, once it ended with one of ``done``.

    The engine handles the end of the app's task one loop iteration after the
    app recorded it; one more request on a new connection comes after that, so
    what the engine logged about the run is in the log once this returns.
    """
    def ended() -> str | None:
        value = outcomes(proc).get(key)
        return value if value in done else None
    value = wait_until(ended, 30, interval=0.1, what=f"app run {key} to end with one of {done}")
    outcomes(proc)
    return value


def errors_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    sock.settimeout(20)
    data = b""
    while data.count(marker) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {count} x {marker!r}: {data[:300]!r}"
        data += chunk
    return data


def test_a_client_leaving_a_server_sent_events_stream_is_no_error(starlette_server):
    start = len(starlette_server.log_text())
    with starlette_server.connect() as sock:
        sock.sendall(b"GET /sse?id=sse HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        data = read_until(sock, b"data: event", 3)
    assert data.startswith(b"HTTP/1.1 200") and b"text/event-stream" in data
    # The stream learnt that the client left (Starlette turns our OSError into ClientDisconnect)...
    assert outcome(starlette_server, "sse", "ClientDisconnect") == "ClientDisconnect"
    # ... and nobody calls that an error.
    assert errors_in(starlette_server.log_text()[start:]) == []


@pytest.mark.parametrize("path", ["/static/style.css", "/file"])
def test_head_of_a_starlette_file_like_curl_i(starlette_server, path):
    start = len(starlette_server.log_text())
    with starlette_server.connect() as sock:
        sock.sendall(b"HEAD %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
        data = read_until(sock, b"\r\n\r\n")
    (resp,) = parse_responses(data, head=True)
    assert resp.status == 200
    assert resp.header("content-length") == str(STATIC_LEN)
    assert resp.header("content-type").startswith("text/css")
    assert resp.header("etag") and resp.header("last-modified")
    assert data.endswith(b"\r\n\r\n")  # no body bytes
    # Two requests later, what the engine logged about the HEAD is in the log.
    outcomes(starlette_server)
    outcomes(starlette_server)
    assert errors_in(starlette_server.log_text()[start:]) == []


def test_head_whose_body_is_sent_after_the_client_left_is_no_error(starlette_server):
    # Datasette's static files: the head goes out with the first chunk, curl -I
    # leaves, the app sends the rest of a body that HEAD never writes.
    start = len(starlette_server.log_text())
    with starlette_server.connect() as sock:
        sock.sendall(b"HEAD /send-file?id=head HTTP/1.1\r\nHost: t\r\n\r\n")
        data = read_until(sock, b"\r\n\r\n")
    (resp,) = parse_responses(data, head=True)
    assert resp.status == 200 and resp.header("content-length") == str(STATIC_LEN)
    assert data.endswith(b"\r\n\r\n")
    assert outcome(starlette_server, "head", "completed", "ClientDisconnected (an OSError)") == "completed"
    assert errors_in(starlette_server.log_text()[start:]) == []


def test_a_head_stream_without_length_still_learns_that_the_client_left(starlette_server):
    # Without a Content-Length the body may never end (Server-Sent Events on a
    # HEAD): the app must learn that the client left, quietly.
    start = len(starlette_server.log_text())
    with starlette_server.connect() as sock:
        sock.sendall(b"HEAD /send-file?id=head-stream&length=no HTTP/1.1\r\nHost: t\r\n\r\n")
        data = read_until(sock, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert outcome(starlette_server, "head-stream", "completed", "ClientDisconnected (an OSError)") \
        == "ClientDisconnected (an OSError)"
    assert errors_in(starlette_server.log_text()[start:]) == []


def test_a_get_whose_client_left_with_a_short_rest_due_completes_quietly(starlette_server):
    # A browser that stops loading a script or an icon: the app finishes as under uvicorn, and an
    # app that would log the OSError as its own error (Datasette does) has nothing to log.
    start = len(starlette_server.log_text())
    with starlette_server.connect() as sock:
        sock.sendall(b"GET /send-file?id=get HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(sock, b"\r\n\r\n")
    assert outcome(starlette_server, "get", "completed", "ClientDisconnected (an OSError)") == "completed"
    assert errors_in(starlette_server.log_text()[start:]) == []


@pytest.mark.parametrize("length", ["no", "big"])
def test_a_get_stream_or_long_download_whose_client_left_learns_it_from_an_oserror(starlette_server, length):
    # Without a Content-Length, or with more than a MiB still due: the app must stop, quietly.
    key = f"get-{length}"
    start = len(starlette_server.log_text())
    with starlette_server.connect() as sock:
        sock.sendall(f"GET /send-file?id={key}&length={length} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        read_until(sock, b"\r\n\r\n")
    assert outcome(starlette_server, key, "completed", "ClientDisconnected (an OSError)") \
        == "ClientDisconnected (an OSError)"
    assert errors_in(starlette_server.log_text()[start:]) == []


def test_a_bug_after_the_client_left_is_still_an_error(starlette_server):
    start = len(starlette_server.log_text())
    with starlette_server.connect() as sock:
        sock.sendall(b"GET /bug-after-disconnect?id=bug HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(sock, b"partial")
    assert outcome(starlette_server, "bug", "ZeroDivisionError") == "ZeroDivisionError"
    log = wait_until(lambda: (text := starlette_server.log_text()[start:]) and "ZeroDivisionError" in text
                     and text, 30, what="the bug in the log")
    assert any("Exception in ASGI application (GET /bug-after-disconnect)" in line for line in errors_in(log))
    assert "ZeroDivisionError: a bug unrelated to the client leaving" in log


class ClientDisconnect(Exception):
    """Stands for Starlette's exception of that name (matched by name)."""


def _raise_in_handler(handler_exc: BaseException) -> BaseException:
    try:
        try:
            raise ClientDisconnected("the client closed the connection")
        except OSError:
            raise handler_exc
    except BaseException as exc:
        return exc


def test_which_exceptions_count_as_the_client_leaving():
    assert disconnect_cause(ClientDisconnected()) == DisconnectCause.IS
    assert disconnect_cause(ClientDisconnect()) == DisconnectCause.IS
    # Starlette: raise ClientDisconnect() inside "except OSError".
    assert disconnect_cause(_raise_in_handler(ClientDisconnect())) == DisconnectCause.IS
    # Raised while handling the disconnect: one info line, no traceback.
    assert disconnect_cause(_raise_in_handler(RuntimeError("in the handler"))) == DisconnectCause.AFTER
    assert disconnect_cause(ZeroDivisionError()) == DisconnectCause.NONE
    assert disconnect_cause(OSError("disk full")) == DisconnectCause.NONE
    # A task group: only if every member is the client leaving.
    assert disconnect_cause(ExceptionGroup("g", [ClientDisconnected(), ClientDisconnect()])) == DisconnectCause.IS
    assert disconnect_cause(ExceptionGroup("g", [ClientDisconnected(), ValueError()])) == DisconnectCause.NONE

