"""ASGI apps for the WebSocket tests (tests/engine/test_ws_*.py).

``app`` routes by path; each route is a small raw-ASGI WebSocket handler. HTTP
requests get a JSON view of what the WebSocket routes recorded (``/events?id=``),
so a test can check what the app saw, over a second connection.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

# What routes saw, by the id in their query string (for /events).
EVENTS: dict[str, list[Any]] = {}


def _query(scope: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


def _record(scope: dict[str, Any], event: Any) -> None:
    key = _query(scope).get("id")
    if key:
        EVENTS.setdefault(key, []).append(event)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


async def _closed(key: str, timeout: float = 120.0) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(isinstance(e, dict) and "disconnect" in e for e in EVENTS.get(key, [])):
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    return EVENTS.get(key, [])


async def _http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    q = _query(scope)
    kind = b"application/json"
    if scope["path"] == "/events":
        body = json.dumps(EVENTS.get(q.get("id", ""), [])).encode()
    elif scope["path"] == "/closed":
        # Answers once the WebSocket with this id has closed: a page that loads this script has
        # its load event (and a headless browser's --dump-dom) wait for its socket's close.
        body = json.dumps(await _closed(q.get("id", ""))).encode()
        kind = b"text/javascript"
    elif scope["path"] == "/page":  # a page for a browser (test_ws_clients.py)
        with open(os.environ["WS_TEST_PAGE"], "rb") as f:
            body = f.read()
        kind = b"text/html; charset=utf-8"
    else:
        body = b"plain http: " + scope["path"].encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started_by"] = "lifespan"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await _http(scope, receive, send)
        return
    _record(scope, "app called")
    route = ROUTES.get(scope["path"].rsplit("/", 1)[-1])
    if route is None:
        await receive()
        await send({"type": "websocket.close"})
        return
    await route(scope, receive, send)


async def echo(scope, receive, send) -> None:
    """Echo every message; record the disconnect."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _record(scope, {"disconnect": message["code"], "reason": message.get("reason", "")})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def scope_route(scope, receive, send) -> None:
    """Accept, send the scope as JSON, then close."""
    await receive()
    await send({"type": "websocket.accept"})
    view = {k: _jsonable(v) for k, v in scope.items() if k != "state"}
    view["state"] = dict(scope["state"])
    await send({"type": "websocket.send", "text": json.dumps(view)})
    await send({"type": "websocket.close", "code": 1000})


async def subprotocol(scope, receive, send) -> None:
    """Accept with the subprotocol and headers the query names."""
    await receive()
    q = _query(scope)
    message: dict[str, Any] = {"type": "websocket.accept"}
    if "pick" in q:
        message["subprotocol"] = q["pick"]
    if "header" in q:
        name, _, value = q["header"].partition(":")
        message["headers"] = [(name.encode(), value.encode())]
    await send(message)
    await send({"type": "websocket.send", "text": "hello"})
    await receive()


async def deny(scope, receive, send) -> None:
    """websocket.close before accept: 403."""
    await receive()
    await send({"type": "websocket.close", "code": 1000})
    _record(scope, (await receive()))


async def http_response(scope, receive, send) -> None:
    """Refuse through the websocket.http.response extension."""
    assert "websocket.http.response" in scope["extensions"]
    await receive()
    await send({"type": "websocket.http.response.start", "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
    await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"token"})


async def raise_before(scope, receive, send) -> None:
    await receive()
    raise RuntimeError("boom before accept")


async def raise_after(scope, receive, send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    raise RuntimeError("boom after accept")


async def returns(scope, receive, send) -> None:
    """Accept, send one message, return without closing."""
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "bye"})


async def no_answer(scope, receive, send) -> None:
    """Return without accepting or refusing."""
    await receive()


async def close_with(scope, receive, send) -> None:
    """Close with the code and reason the query names, then record what receive() says."""
    q = _query(scope)
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": int(q.get("code", 1000)), "reason": q.get("reason", "")})
    _record(scope, await receive())
    try:
        await send({"type": "websocket.send", "text": "after close"})
    except OSError as exc:
        _record(scope, {"send_after_close": type(exc).__name__})


async def send_after_disconnect(scope, receive, send) -> None:
    """Wait for the peer to leave, then try to send."""
    await receive()
    await send({"type": "websocket.accept"})
    message = await receive()
    _record(scope, {"disconnect": message.get("code")})
    try:
        await send({"type": "websocket.send", "text": "too late"})
    except OSError as exc:
        _record(scope, {"send_raised": type(exc).__name__, "is_oserror": isinstance(exc, OSError)})


async def flood(scope, receive, send) -> None:
    """Send ``mib`` MiB in 256 KiB messages as fast as send() lets it; record the outcome."""
    q = _query(scope)
    await receive()
    await send({"type": "websocket.accept"})
    chunk = b"x" * 262144
    total = int(q.get("mib", 64)) * 4
    sent = 0
    try:
        for _ in range(total):
            await send({"type": "websocket.send", "bytes": chunk})
            sent += 1
            _record_progress(scope, sent)
    except OSError as exc:
        _record(scope, {"send_raised": type(exc).__name__, "sent": sent})
        return
    _record(scope, {"done": sent})
    await receive()


PROGRESS: dict[str, int] = {}


def _record_progress(scope: dict[str, Any], sent: int) -> None:
    key = _query(scope).get("id")
    if key:
        PROGRESS[key] = sent
        EVENTS[key + "-progress"] = [sent]


async def slow_reader(scope, receive, send) -> None:
    """Accept, then read one message only when told to (over /events ids): the queue fills up."""
    await receive()
    await send({"type": "websocket.accept"})
    await asyncio.sleep(float(_query(scope).get("wait", 2)))
    count = 0
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _record(scope, {"received": count, "disconnect": message["code"]})
            return
        count += 1
        if count % 50 == 0:
            _record(scope, {"received": count})


async def idle(scope, receive, send) -> None:
    """Accept and wait for the disconnect (keepalive tests)."""
    await receive()
    await send({"type": "websocket.accept"})
    message = await receive()
    _record(scope, {"disconnect": message["code"]})


async def ticker(scope, receive, send) -> None:
    """Accept, then send a numbered message every 5 ms until sending fails; record how many went out."""
    await receive()
    await send({"type": "websocket.accept"})
    sent = 0
    try:
        while True:
            await send({"type": "websocket.send", "text": str(sent)})
            sent += 1
            await asyncio.sleep(0.005)
    except OSError:
        _record(scope, {"sent": sent})


async def collect(scope, receive, send) -> None:
    """Accept, receive until the disconnect, record every message and the disconnect."""
    await receive()
    await send({"type": "websocket.accept"})
    messages = []
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _record(scope, {"messages": messages, "disconnect": message["code"], "reason": message.get("reason")})
            return
        messages.append(message.get("text") if message.get("text") is not None else message["bytes"].hex())


ROUTES = {
    "collect": collect,
    "ticker": ticker,
    "echo": echo,
    "scope": scope_route,
    "subprotocol": subprotocol,
    "deny": deny,
    "http-response": http_response,
    "raise-before": raise_before,
    "raise-after": raise_after,
    "returns": returns,
    "no-answer": no_answer,
    "close-with": close_with,
    "send-after-disconnect": send_after_disconnect,
    "flood": flood,
    "slow-reader": slow_reader,
    "idle": idle,
}


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app: a WebSocket handshake reaches it as the plain HTTP request it is."""
    body = f"wsgi {environ['REQUEST_METHOD']} upgrade={environ.get('HTTP_UPGRADE')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
