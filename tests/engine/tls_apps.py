"""Apps for the TLS tests: each answers with what the server told it about the connection."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

# A file for wsgi.file_wrapper: large enough that sendfile would take several writes.
FILE_BYTES = bytes(range(256)) * 4096  # 1 MiB
_FILE = os.path.join(tempfile.gettempdir(), f"corral-tls-file-{os.getpid()}.bin")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: the scope's scheme and tls extension as JSON (WebSockets: sent as one text message)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    info = {"scheme": scope["scheme"], "extensions": scope.get("extensions") or {}}
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(info)})
        await send({"type": "websocket.close", "code": 1000})
        return
    while (await receive()).get("more_body"):
        pass
    body = json.dumps(info).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    """WSGI: /file sends FILE_BYTES through wsgi.file_wrapper; anything else, the URL scheme."""
    if environ["PATH_INFO"] == "/file":
        if not os.path.exists(_FILE):
            with open(_FILE, "wb") as f:
                f.write(FILE_BYTES)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(_FILE, "rb"))
    body = json.dumps({"url_scheme": environ["wsgi.url_scheme"], "port": environ["SERVER_PORT"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
