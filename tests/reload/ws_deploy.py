"""A deployable WebSocket app for the reload tests: it says its version and pid on connect, then
sends numbered messages, so that a client can tell which code it reached and whether any message
sent before a close was lost."""

from __future__ import annotations

from pathlib import Path

WS_APP = '''\
"""Says its version and pid, then sends numbered messages every {tick} s until the client leaves."""
import asyncio
import os

__version__ = {version!r}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    if scope["type"] == "http":
        body = (__version__ + "\\n").encode()
        await send({{"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()),
                                (b"x-worker-pid", str(os.getpid()).encode())]}})
        await send({{"type": "http.response.body", "body": body}})
        return
    await receive()  # websocket.connect
    await send({{"type": "websocket.accept"}})
    await send({{"type": "websocket.send", "text": f"hello {{__version__}} {{os.getpid()}}"}})

    async def ticks():
        n = 0
        while True:
            await send({{"type": "websocket.send", "text": f"n {{n}}"}})
            n += 1
            await asyncio.sleep({tick!r})

    ticker = asyncio.ensure_future(ticks())
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        ticker.cancel()
'''


def write_ws_app(directory: Path, version: str, *, tick: float = 0.02) -> Path:
    """(Re)write ``deployapp.py`` (the module the reload configs load), as a deploy does."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "deployapp.py"
    path.write_text(WS_APP.format(version=version, tick=tick))
    for cached in (directory / "__pycache__").glob("deployapp.*.pyc"):
        cached.unlink()
    return path
