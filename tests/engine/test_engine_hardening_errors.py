"""ASGI apps that fail outside their coroutine, or with SystemExit/KeyboardInterrupt, get a 500.

Issue 13 item 5: a middleware whose plain ``__call__`` raised, or ``sys.exit()``
in a handler, gave the client an empty reply ("Fatal error on transport"). Now
each is an application error: 500, a logged traceback, and the worker keeps
serving.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from engine_util import EngineProc, read_responses, wait_until


@pytest.fixture(scope="module")
def errors_server() -> Iterator[EngineProc]:
    proc = EngineProc(app="hardening_apps:errors_app", settings={"lifespan": "off"})
    try:
        yield proc
    finally:
        proc.cleanup()


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode()


@pytest.mark.parametrize("path, logged", [
    ("/sync-raise", "RuntimeError: sync boom in middleware"),
    ("/sync-none", "returned None instead of a coroutine"),
    ("/exit", "SystemExit: 3"),
    ("/exit-later", "SystemExit: 4"),
    ("/interrupt", "KeyboardInterrupt"),
    ("/interrupt-later", "KeyboardInterrupt"),
])
def test_the_failure_is_a_500_and_the_worker_serves_on(errors_server, path, logged):
    with errors_server.connect(timeout=30) as sock:
        sock.sendall(get(path))
        (failed,) = read_responses(sock, 1, timeout=30)
    assert failed.status == 500 and failed.header("connection") == "close"
    with errors_server.connect(timeout=30) as sock:  # the worker serves on
        sock.sendall(get("/after"))
        (after,) = read_responses(sock, 1, timeout=30)
    assert after.status == 200 and after.body == b"ok /after"
    assert errors_server.proc.poll() is None
    log = wait_until(lambda: (text := errors_server.log_text()) and logged in text and text, 30,
                     what=f"{logged!r} in the log")
    assert "Fatal error on transport" not in log


def test_the_log_says_what_happened_and_names_the_request(errors_server):
    with errors_server.connect(timeout=30) as sock:
        sock.sendall(get("/exit?why=log"))
        assert read_responses(sock, 1, timeout=30)[0].status == 500
    log = wait_until(lambda: (text := errors_server.log_text()) and "/exit" in text and text, 30,
                     what="the failed request in the log")
    line = next(line for line in log.splitlines() if "SystemExit" in line and "ERROR" in line)
    assert "GET /exit" in line and "serving on" in line
