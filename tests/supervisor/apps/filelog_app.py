"""An app that, like a Django LOGGING config, logs each request to a file of its own (FILELOG_APP_PATH)."""

from __future__ import annotations

import logging
import os

_log = logging.getLogger("filelog_app")
_log.setLevel(logging.INFO)
_log.propagate = False
_log.addHandler(logging.FileHandler(os.environ["FILELOG_APP_PATH"]))


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    _log.info("served %s in %d", scope["path"], os.getpid())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
