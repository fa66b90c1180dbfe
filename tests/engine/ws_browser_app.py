"""A Starlette app for the browser test: a page whose script opens a WebSocket, sends a message and
writes the echo (and how the socket ended) into the DOM."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

PAGE = """<!doctype html>
<html><head><title>corral websocket</title></head>
<body><p id="state">loading</p><p id="echo"></p><p id="closed"></p>
<script>
const state = document.getElementById("state");
const ws = new WebSocket(`ws://${location.host}/echo`);
ws.onopen = () => { state.textContent = "open"; ws.send("hello from chromium"); };
ws.onmessage = (event) => {
  document.getElementById("echo").textContent = event.data;
  ws.close(1000, "done");
};
ws.onclose = (event) => { document.getElementById("closed").textContent = "closed " + event.code; };
ws.onerror = () => { state.textContent = "error"; };
</script></body></html>
"""


async def page(request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo: {text} (via {websocket.scope['http_version']}, "
                              f"{websocket.scope['scheme']})")
    await websocket.receive()  # the browser's close


app = Starlette(routes=[Route("/", page), WebSocketRoute("/echo", echo)])
