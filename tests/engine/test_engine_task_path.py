"""How ASGI requests' tasks start: corral's eager task where CPython's internals fit, standard tasks otherwise.

On Python 3.11 the eager task (``corral.engine.eagertask``) is built on private
asyncio internals; ``eagertask.internals_problem()`` checks them at start-up
and the engine falls back to standard asyncio tasks when they differ. These
tests pin the choice on this interpreter, the detection, and that the
fallback serves real requests over real sockets (in process, so the detection
can be forced to fail).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from corral.engine import asgi, eagertask
from corral.engine.asgi import TaskPath
from corral.engine.server import Server
from corral.engine.settings import EngineSettings
from util import Response, parse_responses

_DEADLINE = 30.0  # seconds: the machine is loaded


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/task: the class of the request's task; /wait: answers after suspending; /boom, /exit: raise;
    /hang: runs until request_timeout cancels it."""
    if scope["type"] != "http":
        return  # lifespan: not supported, served without it
    path = scope["path"]
    if path == "/wait":
        await asyncio.sleep(0.01)
    elif path == "/boom":
        raise ValueError("boom")
    elif path == "/exit":
        sys.exit(3)
    elif path == "/hang":
        await asyncio.sleep(3600)
    task = asyncio.current_task()
    body = type(task).__name__.encode() if task is not None else b"no task"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


async def _ask(port: int, requests: list[bytes]) -> list[Response]:
    """Send the requests one after the other on one connection; the responses, each read whole."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b""
    try:
        for count, request in enumerate(requests, 1):
            writer.write(request)
            while sum(r.complete for r in parse_responses(data)) < count:
                chunk = await asyncio.wait_for(reader.read(65536), _DEADLINE)
                if not chunk:
                    break
                data += chunk
    finally:
        writer.close()
    return parse_responses(data)


def serve(requests: list[list[bytes]], **settings: Any) -> list[list[Response]]:
    """Serve ``app`` with a Server on a real socket, in this process; one connection per list of requests."""

    async def main() -> list[list[Response]]:
        server = Server(app, EngineSettings(**settings), interface="asgi")
        await server.startup()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        try:
            await server.serve([listener])
            return [await _ask(listener.getsockname()[1], batch) for batch in requests]
        finally:
            await server.shutdown(5.0)
            listener.close()

    return uvloop.run(main())


@pytest.fixture
def standard_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The eager task's internals check forced to fail; the module's choice put back afterwards."""
    for name in ("_path", "_EagerTask", "_why_standard", "_reported"):
        monkeypatch.setattr(asgi, name, getattr(asgi, name))  # restored at teardown
    monkeypatch.setattr(eagertask, "internals_problem", lambda: "forced by a test")
    monkeypatch.setattr(asgi, "_reported", False)
    assert asgi.select_task_path() is TaskPath.STANDARD
    yield


def test_fast_path_is_chosen_on_this_interpreter() -> None:
    if sys.version_info >= (3, 12):
        assert asgi.task_path() is TaskPath.EAGER_C
        return
    assert eagertask.internals_problem() is None
    assert asgi.task_path() is TaskPath.EAGER_PY
    [ok, failing, exiting] = serve([[_get("/task"), _get("/wait")], [_get("/boom")], [_get("/exit")]])
    assert [(r.status, r.body) for r in ok] == [(200, b"EagerTask"), (200, b"EagerTask")]
    # An app that raises in its first step (no suspension) is answered 500 like any app error.
    assert [r.status for r in failing] == [500]
    assert [r.status for r in exiting] == [500]


def test_detection_names_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    if sys.version_info[:2] != (3, 11):
        assert "3.11" in (eagertask.internals_problem() or "")
        return
    real = vars(asyncio.tasks)["_PyTask"]

    class GrownTask(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._new_field = None  # a field a patch release might add

    monkeypatch.setattr(asyncio.tasks, "_PyTask", GrownTask)
    assert "_new_field" in (eagertask.internals_problem() or "")

    class Shrunk:  # a _PyTask without the name-mangled step
        pass

    monkeypatch.setattr(asyncio.tasks, "_PyTask", Shrunk)
    assert eagertask.internals_problem() == "asyncio.tasks._PyTask._Task__step is missing"
    monkeypatch.setattr(asyncio.tasks, "_PyTask", real)
    monkeypatch.delattr(asyncio.tasks, "_register_task")
    assert eagertask.internals_problem() == "asyncio.tasks._register_task is missing"


@pytest.mark.usefixtures("standard_path")
def test_fallback_serves_real_requests(caplog: pytest.LogCaptureFixture) -> None:
    if sys.version_info >= (3, 12):
        pytest.skip("Python >= 3.12 uses the C eager task, which needs no internals")
    with caplog.at_level(logging.INFO, logger="corral.engine"):
        [ok, failing, hanging] = serve([
            [_get("/task"), _get("/wait"), _get("/task")],  # keep-alive: one connection serves on
            [_get("/boom")],
            [_get("/hang")],
        ], request_timeout=1.0)
        [again] = serve([[_get("/exit")]])  # a second Server: the reason is logged once per process
    assert [(r.status, r.body) for r in ok] == [(200, b"Task"), (200, b"Task"), (200, b"Task")]
    assert [r.status for r in failing] == [500]
    assert [r.status for r in hanging] == [504]
    assert [r.status for r in again] == [500], "sys.exit() in the app is an app error, not the worker's exit"
    reasons = [r for r in caplog.records if "standard asyncio tasks" in r.getMessage()]
    assert len(reasons) == 1, [r.getMessage() for r in reasons]
    assert reasons[0].levelno == logging.INFO and "forced by a test" in reasons[0].getMessage()
