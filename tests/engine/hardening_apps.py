"""Apps for tests/engine/test_engine_hardening_*.py (run inside tests/engine/serve.py, never in pytest).

``errors_app``: an app object whose plain (not async) ``__call__`` dispatches,
as middleware does, so that it can fail before any coroutine exists, and
handlers that end in ``sys.exit()`` or ``KeyboardInterrupt``.

``starlette_app``: Server-Sent Events, static files and a Datasette-style file
sender, to see how the engine treats clients that leave. What the apps saw is
kept in ``OUTCOMES`` and read back with ``GET /outcomes``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = tempfile.mkdtemp(prefix="corral-hardening-static-")
STATIC_BODY = b"body { color: teal; }\n" * 500
with open(os.path.join(STATIC_DIR, "style.css"), "wb") as _f:
    _f.write(STATIC_BODY)

# What each app run ended with, by its ?id= key: "completed", "stopped" or an exception's type name.
OUTCOMES: dict[str, str] = {}


# ---------------------------------------------------------------- errors_app

async def _respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _handler(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/exit":
        sys.exit(3)
    if path == "/exit-later":
        await asyncio.sleep(0.01)
        sys.exit(4)
    if path == "/interrupt":
        raise KeyboardInterrupt
    if path == "/interrupt-later":
        await asyncio.sleep(0.01)
        raise KeyboardInterrupt
    await _respond(send, 200, b"ok " + path.encode())


class _Middleware:
    """Middleware with a plain __call__ that hands back the wrapped app's coroutine."""

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return _no_lifespan(receive, send)
        if scope["path"] == "/sync-raise":
            raise RuntimeError("sync boom in middleware")
        if scope["path"] == "/sync-none":
            return None  # a plain function posing as an ASGI app
        return _handler(scope, receive, send)


async def _no_lifespan(receive: Any, send: Any) -> None:
    raise RuntimeError("no lifespan here")


errors_app = _Middleware()


# ---------------------------------------------------------------- starlette_app

def _key(scope: dict[str, Any]) -> str:
    return dict(p.partition("=")[::2] for p in scope["query_string"].decode().split("&"))["id"]


class _Recorded:
    """A plain ASGI endpoint for Starlette that records how it ended in OUTCOMES[?id=].

    The record is written just before the exception reaches the engine,
    which handles the end of the task (and logs) in the next loop iteration.
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        key = _key(scope)
        OUTCOMES[key] = "running"
        try:
            await self.fn(scope, receive, send)
        except BaseException as exc:
            OUTCOMES[key] = type(exc).__name__ + (" (an OSError)" if isinstance(exc, OSError) else "")
            raise
        OUTCOMES[key] = "completed"


async def sse(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Server-Sent Events, one every 20 ms, until the client leaves."""
    async def events() -> Any:
        n = 0
        while True:
            yield f"data: event {n}\n\n"
            n += 1
            await asyncio.sleep(0.02)

    await StreamingResponse(events(), media_type="text/event-stream")(scope, receive, send)


async def file(request: Request) -> FileResponse:
    return FileResponse(os.path.join(STATIC_DIR, "style.css"), media_type="text/css")


async def outcomes(request: Request) -> JSONResponse:
    return JSONResponse(OUTCOMES)


async def send_file(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Datasette's asgi_send_file, in short: the head goes out with the first of several chunks.

    After the first chunk it waits for the client to leave (curl -I leaves as
    soon as it has the head of a HEAD response), then sends the rest.
    ``?length=no`` leaves out the Content-Length (a stream, maybe endless); ``?length=big`` sends
    the file as the start of a 2 MiB download (a rest too long to finish quietly).
    """
    chunks = [STATIC_BODY[i:i + 4096] for i in range(0, len(STATIC_BODY), 4096)]
    headers = [(b"content-type", b"text/css")]
    if b"length=big" in scope["query_string"]:
        headers.append((b"content-length", str(2 << 20).encode()))
    elif b"length=no" not in scope["query_string"]:
        headers.append((b"content-length", str(len(STATIC_BODY)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": chunks[0], "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass
    for i, chunk in enumerate(chunks[1:], 1):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})


async def bug_after_disconnect(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A real bug that happens to run after the client left: still an application error."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass
    raise ZeroDivisionError("a bug unrelated to the client leaving")


starlette_app = Starlette(routes=[
    Route("/sse", _Recorded(sse)),
    Route("/file", file),
    Route("/outcomes", outcomes),
    Route("/send-file", _Recorded(send_file)),
    Route("/bug-after-disconnect", _Recorded(bug_after_disconnect)),
    Mount("/static", StaticFiles(directory=STATIC_DIR)),
])
