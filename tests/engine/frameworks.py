"""Small apps for the engine tests that are not part of apps.app's routes."""

from __future__ import annotations

from typing import Any


async def close_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2"), (b"Connection", b"close")]})
    await send({"type": "http.response.body", "body": b"ok"})
