"""An app that starts a thread at import: a preload violation (the zygote must refuse it)."""

from __future__ import annotations

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), name="app-poller", daemon=True).start()


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"ok\n"})
