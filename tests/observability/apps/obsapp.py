"""An ASGI app for the observability tests.

  /               200 "ok <pid>"
  /status/NNN     answers with status NNN (responses by status class)
  /raise          raises: the engine logs the error and answers 500
  /echo           reads the request body and answers with its length (never its content)
  /sleep?s=N      answers after N seconds (asyncio.sleep)

Every response carries ``x-worker-pid``.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    status = 200
    body = f"ok {os.getpid()}\n".encode()
    if path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
    elif path == "/raise":
        raise RuntimeError("obsapp: deliberate failure for the error log")
    elif path == "/echo":
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = f"received {size} bytes\n".encode()
    elif path == "/sleep":
        await asyncio.sleep(float(parse_qs(scope["query_string"].decode()).get("s", ["1"])[0]))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            (b"x-worker-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})
