"""The zygote tests' ASGI app: tells which process answered and what its random state is.

GET /           pid, parent pid, a random number drawn in this request, the app's VERSION file
GET /leak?mib=N keeps N more MiB of private memory (a leak a USS policy must catch)
At import it fails when FAIL_IMPORT exists next to it (a broken deploy), and sleeps
ZY_IMPORT_SLEEP seconds (an app with a slow import), and as many more as an IMPORT_SLEEP file
next to it says (a deploy whose import hangs).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if (HERE / "FAIL_IMPORT").exists():
    raise RuntimeError("zyapp: the deploy is broken (FAIL_IMPORT exists)")
time.sleep(float(os.environ.get("ZY_IMPORT_SLEEP", "0")))
if (HERE / "IMPORT_SLEEP").exists():  # a deploy whose import hangs
    time.sleep(float((HERE / "IMPORT_SLEEP").read_text()))
VERSION = (HERE / "VERSION").read_text().strip() if (HERE / "VERSION").exists() else "1"
IMPORTED_IN = os.getpid()
# Seeded at import, as some apps do: with preload that runs once, in the zygote, and each worker's
# draws must still differ (random's os.register_at_fork hook reseeds its global instance).
random.seed(1234)
_leak: list[bytearray] = []
FIRST_DRAW: list[float] = []  # the worker's first random number, drawn at lifespan startup


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                FIRST_DRAW.append(random.random())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/leak":
        mib = int((scope.get("query_string") or b"mib=1").decode().partition("=")[2] or 1)
        for _ in range(mib):
            chunk = bytearray(1 << 20)
            for i in range(0, len(chunk), 4096):  # touch every page: it becomes private memory
                chunk[i] = 1
            _leak.append(chunk)
    body = json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "random": random.random(),
                       "first": FIRST_DRAW[0] if FIRST_DRAW else None,
                       "version": VERSION, "imported_in": IMPORTED_IN}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
