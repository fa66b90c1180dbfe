"""Starlette and FastAPI apps with WebSocket routes, for tests/engine/test_ws_frameworks.py.

``GET /disconnects`` reports what the WebSocket handlers recorded (codes of the
``WebSocketDisconnect`` exceptions they caught), so a test can check it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import Depends, FastAPI, Query, WebSocket as FastAPIWebSocket, WebSocketDisconnect as FastAPIDisconnect
from fastapi import WebSocketException, status
from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

RECORDED: dict[str, Any] = {}


async def disconnects(request: Request) -> JSONResponse:
    return JSONResponse(RECORDED)


# ---------------------------------------------------------------- Starlette

@contextlib.asynccontextmanager
async def _lifespan(app: Any):
    yield {"greeting": "hi"}


async def st_echo(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol=(websocket.scope["subprotocols"] or [None])[0])
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"echo: {text}")
    except WebSocketDisconnect as exc:
        RECORDED["starlette-echo"] = exc.code


async def st_info(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"greeting": websocket.state.greeting, "name": websocket.path_params["name"],
                               "q": websocket.query_params.get("q"), "url": str(websocket.url)})
    await websocket.close(code=4001, reason="done")


async def st_bytes(websocket: WebSocket) -> None:
    await websocket.accept()
    async for data in websocket.iter_bytes():
        await websocket.send_bytes(data[::-1])


async def st_deny(websocket: WebSocket) -> None:
    await websocket.close(code=1008)


async def st_denial_response(websocket: WebSocket) -> None:
    await websocket.send_denial_response(PlainTextResponse("teapot says no", status_code=418))


async def st_uncaught(websocket: WebSocket) -> None:
    # WebSocketDisconnect is not caught: it leaves the app when the client goes.
    await websocket.accept()
    while True:
        await websocket.receive_text()


class Counter(WebSocketEndpoint):
    encoding = "json"

    async def on_connect(self, websocket: WebSocket) -> None:
        self.count = 0
        await websocket.accept()

    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        self.count += data["add"]
        await websocket.send_json({"count": self.count})

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        RECORDED["starlette-endpoint"] = close_code


starlette_app = Starlette(lifespan=_lifespan, routes=[
    Route("/disconnects", disconnects),
    WebSocketRoute("/echo", st_echo),
    WebSocketRoute("/info/{name}", st_info),
    WebSocketRoute("/bytes", st_bytes),
    WebSocketRoute("/deny", st_deny),
    WebSocketRoute("/denial-response", st_denial_response),
    WebSocketRoute("/uncaught", st_uncaught),
    WebSocketRoute("/counter", Counter),
])


# ---------------------------------------------------------------- FastAPI

fastapi_app = FastAPI()
fastapi_app.add_api_route("/disconnects", disconnects)


async def require_token(websocket: FastAPIWebSocket, token: str | None = Query(default=None)) -> str:
    """A dependency: no valid token, no WebSocket (policy violation before accept: 403)."""
    if token != "secret":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason="bad token")
    return token


@fastapi_app.websocket("/items/{item_id}/ws")
async def fa_items(websocket: FastAPIWebSocket, item_id: int, token: str = Depends(require_token)) -> None:
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_json()
            await websocket.send_json({"item_id": item_id, "token": token, "data": data})
    except FastAPIDisconnect as exc:
        RECORDED["fastapi-items"] = {"code": exc.code, "reason": exc.reason}


@fastapi_app.websocket("/boom")
async def fa_boom(websocket: FastAPIWebSocket) -> None:
    await websocket.accept()
    await websocket.receive_text()
    raise ValueError("fastapi handler failed")
