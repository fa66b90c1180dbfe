"""An ASGI app for supervisor tests: each route misbehaves in one way on purpose.

  /            200 "ok <pid>"
  /pid         the worker's pid
  /sleep?s=N   answers after N seconds (asyncio.sleep: the loop stays free)
  /block?s=N   blocks the event loop with time.sleep for N seconds (a hung worker)
  /leak?mb=N   keeps N MiB allocated for the life of the worker (a leaking worker)
  /fds?n=N     keeps N more file descriptors open (an fd leak)
  /exit        the worker exits at once with status 7 (a crash)

Environment: PROBE_STARTUP_DELAY (seconds of lifespan startup), PROBE_FAIL_STARTUP
(lifespan startup fails), PROBE_VERSION (echoed in the x-probe-version header).
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import parse_qs

_hoard: list[bytearray] = []
_files: list = []
VERSION = os.environ.get("PROBE_VERSION", "1").encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(float(os.environ.get("PROBE_STARTUP_DELAY", "0")))
                if os.environ.get("PROBE_FAIL_STARTUP"):
                    await send({"type": "lifespan.startup.failed", "message": "probe: database unreachable"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode())
    path = scope["path"]
    if path == "/sleep":
        await asyncio.sleep(float(query.get("s", ["1"])[0]))
    elif path == "/block":
        time.sleep(float(query.get("s", ["1"])[0]))
    elif path == "/leak":
        _hoard.append(bytearray(int(float(query.get("mb", ["1"])[0]) * 1048576)))
        for chunk in _hoard:  # touch every page so it counts in USS/RSS
            chunk[::4096] = b"\1" * len(chunk[::4096])
    elif path == "/fds":
        _files.extend(open(os.devnull) for _ in range(int(query.get("n", ["1"])[0])))
    elif path == "/exit":
        os._exit(7)
    body = f"ok {os.getpid()}\n".encode() if path != "/pid" else str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            (b"x-probe-version", VERSION), (b"x-worker-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})
