"""A Starlette app for the browser test: a page whose script opens a WebSocket, sends a message and
writes the echo (and how the socket ended) into the DOM.

The page then loads ``/wait.js``, which the app answers only once the WebSocket is over: until then
the page has not finished loading, so Chromium's ``--dump-dom`` (which does not wait for WebSocket
traffic: its virtual time runs on while only a WebSocket is busy) cannot dump it before the echo."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, Response
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
</script>
<script src="/wait.js"></script></body></html>
"""

_done: asyncio.Event | None = None  # set when the page's WebSocket ended (one page per test)


def _done_event() -> asyncio.Event:
    global _done
    if _done is None:
        _done = asyncio.Event()
    return _done


async def page(request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo: {text} (via {websocket.scope['http_version']}, "
                              f"{websocket.scope['scheme']})")
    await websocket.receive()  # the browser's close
    _done_event().set()


async def wait_js(request) -> Response:
    try:
        await asyncio.wait_for(_done_event().wait(), 60)
    except TimeoutError:
        pass  # the DOM then shows what went wrong
    return Response("", media_type="text/javascript")


app = Starlette(routes=[Route("/", page), Route("/wait.js", wait_js), WebSocketRoute("/echo", echo)])
