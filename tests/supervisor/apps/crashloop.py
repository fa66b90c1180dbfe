"""An ASGI app whose workers exit CRASHLOOP_AFTER seconds after lifespan startup, whether or
not they served anything: a crash loop (say, a background thread that always fails)."""

from __future__ import annotations

import asyncio
import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                asyncio.get_running_loop().call_later(float(os.environ.get("CRASHLOOP_AFTER", "0.3")), os._exit, 3)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"ok\n"})
