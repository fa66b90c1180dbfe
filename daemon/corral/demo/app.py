"""The demo ASGI app served by ``make run`` (``corral run corral.demo.app:app``).

Routes:
  /            a hello page
  /echo        echoes the request body back (POST)
  /stream      a chunked streaming response
  /info        the ASGI scope as JSON, minus the non-serialisable bits
"""

from __future__ import annotations

import json
import os
from typing import Any

HELLO = b"Hello from corral!\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await _respond(send, 200, bytes(body), b"application/octet-stream")
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(5):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/info":
        info = {k: v for k, v in scope.items() if k not in ("state", "headers", "raw_path", "query_string")}
        info["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        info["pid"] = os.getpid()
        await _respond(send, 200, json.dumps(info, default=str).encode(), b"application/json")
    elif path == "/":
        await _respond(send, 200, HELLO, b"text/plain; charset=utf-8")
    else:
        await _respond(send, 404, b"not found\n", b"text/plain; charset=utf-8")


async def _respond(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
