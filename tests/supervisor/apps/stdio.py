"""An ASGI app that prints on every request and answers with what its fds 0-2 are
(``0:chr 1:reg 2:reg``), for the tests of corral started with closed standard fds."""

from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISSOCK, "sock"), (stat.S_ISCHR, "chr"), (stat.S_ISREG, "reg"), (stat.S_ISFIFO, "fifo"))


def _kind(fd: int) -> str:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "closed"
    return next((name for test, name in _KINDS if test(mode)), "other")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    print(f"stdio app: {scope['method']} {scope['path']}", flush=True)  # fails if fd 1 is a listening socket
    body = " ".join(f"{fd}:{_kind(fd)}" for fd in (0, 1, 2)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()),
                            (b"x-worker-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})
