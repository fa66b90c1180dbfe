"""ASGI apps the engine tests serve (run inside tests/engine/serve.py, never in pytest).

``app`` routes on the path; what the app saw server-side (exceptions from send,
http.disconnect messages, ...) is recorded per ``?id=`` key and read back with
``GET /events?id=KEY``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qs

EVENTS: dict[str, list[Any]] = {}
ACTIVE = {"now": 0, "max": 0}


def _query(scope: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


def _record(key: str, event: Any) -> None:
    EVENTS.setdefault(key, []).append(event)


async def _read_body(receive: Any) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected while sending the body")
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                   content_type: bytes = b"text/plain") -> None:
    hdrs = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _scope_json(scope: dict[str, Any]) -> bytes:
    out = {k: v for k, v in scope.items() if k not in ("headers", "raw_path", "query_string", "state")}
    out["raw_path"] = scope["raw_path"].decode("latin-1")
    out["query_string"] = scope["query_string"].decode("latin-1")
    out["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
    out["state"] = {k: v for k, v in scope.get("state", {}).items() if isinstance(v, (str, int))}
    out["has_state"] = "state" in scope
    return json.dumps(out).encode()


async def lifespan(receive: Any, send: Any, state: dict[str, Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state["started_by"] = "lifespan"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, scope["state"])
        return
    path = scope["path"]
    q = _query(scope)
    key = q.get("id", "")
    handler = ROUTES.get(path.rstrip("/") or "/")
    if handler is None and path.startswith("/status/"):
        handler = status_route
    if handler is None:
        handler = scope_route  # any other path: show the scope
    await handler(scope, receive, send, q, key)


async def hello(scope, receive, send, q, key):
    await _respond(send, 200, b"Hello, world!")


async def scope_route(scope, receive, send, q, key):
    await _respond(send, 200, _scope_json(scope), content_type=b"application/json")


async def echo(scope, receive, send, q, key):
    body = await _read_body(receive)
    await _respond(send, 200, body, [(b"x-body-sha256", hashlib.sha256(body).hexdigest().encode())])


async def echo_info(scope, receive, send, q, key):
    """Echo metadata: body length, chunk count, and the header names the app saw."""
    body = await _read_body(receive)
    info = {"length": len(body), "body": body.decode("latin-1")[:200],
            "headers": [k.decode() for k, _ in scope["headers"]]}
    await _respond(send, 200, json.dumps(info).encode(), content_type=b"application/json")


async def stream(scope, receive, send, q, key):
    n = int(q.get("n", "3"))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for i in range(n):
        await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def head_cl(scope, receive, send, q, key):
    await _respond(send, 200, b"0123456789")


async def status_route(scope, receive, send, q, key):
    status = int(scope["path"].rsplit("/", 1)[1])
    headers = [(b"content-type", b"text/plain")]
    if "cl" in q:
        headers.append((b"content-length", q["cl"].encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"should-not-appear"})


async def more_than_cl(scope, receive, send, q, key):
    """Declares 10 bytes; ``first`` sends 15 in one message, else 5 + 10 in two."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
    try:
        if "first" in q:
            await send({"type": "http.response.body", "body": b"A" * 15})
        else:
            await send({"type": "http.response.body", "body": b"A" * 5, "more_body": True})
            await send({"type": "http.response.body", "body": b"B" * 10})
    except Exception as exc:
        _record(key, type(exc).__name__)
        raise


async def less_than_cl(scope, receive, send, q, key):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
    if "first" in q:
        await send({"type": "http.response.body", "body": b"A" * 4})
    else:
        await send({"type": "http.response.body", "body": b"A" * 4, "more_body": True})
        await send({"type": "http.response.body", "body": b"B" * 2})


async def bad_header(scope, receive, send, q, key):
    kind = q.get("kind", "crlf")
    bad = {
        "crlf": (b"x-evil", b"a\r\nset-cookie: pwned=1"),
        "lf": (b"x-evil", b"a\nset-cookie: pwned=1"),
        "nul": (b"x-evil", b"a\x00b"),
        "name": (b"x-evil\r\nset-cookie", b"pwned=1"),
        "name-colon": (b"x-evil: y", b"1"),
        "str": ("x-evil", "text"),
    }[kind]
    await send({"type": "http.response.start", "status": 200, "headers": [bad, (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def raise_before(scope, receive, send, q, key):
    raise RuntimeError("boom before the response")


async def raise_after(scope, receive, send, q, key):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom after the response started")


async def no_response(scope, receive, send, q, key):
    return None


async def sleep_route(scope, receive, send, q, key):
    ACTIVE["now"] += 1
    ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
    try:
        await asyncio.sleep(float(q.get("s", "0.2")))
    finally:
        ACTIVE["now"] -= 1
    await _respond(send, 200, f"slept {q.get('tag', '')}".encode())


async def concurrency(scope, receive, send, q, key):
    await _respond(send, 200, json.dumps(ACTIVE).encode())


async def early(scope, receive, send, q, key):
    """Answers without reading the request body."""
    await _respond(send, 200, b"early")


async def slow_body(scope, receive, send, q, key):
    """Sleeps before reading, then reports how many bytes the first receive() returned."""
    await asyncio.sleep(float(q.get("s", "1.0")))
    first = await receive()
    total = len(first.get("body", b""))
    sizes = [total]
    more = first.get("more_body", False)
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        sizes.append(len(message.get("body", b"")))
        total += sizes[-1]
        more = message.get("more_body", False)
    _record(key, {"first": sizes[0], "total": total, "max": max(sizes)})
    await _respond(send, 200, json.dumps({"first": sizes[0], "total": total, "max": max(sizes)}).encode())


async def big(scope, receive, send, q, key):
    """Streams ``n`` chunks of ``size`` bytes, recording how many went out (send blocks on drain)."""
    n = int(q.get("n", "100"))
    size = int(q.get("size", str(1 << 20)))
    chunk = b"x" * size
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(n * size).encode())]})
    EVENTS[key] = [0]
    try:
        for _ in range(n):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            EVENTS[key][0] += 1
        await send({"type": "http.response.body", "body": b""})
    except BaseException as exc:
        EVENTS[key].append(type(exc).__name__)
        EVENTS[key].append(isinstance(exc, OSError))
        raise


async def wait_disconnect(scope, receive, send, q, key):
    """Reads until http.disconnect, records it, then sends a whole answer, or with ``stream=1`` the
    first chunk of a stream without a length (which must raise OSError)."""
    while True:
        message = await receive()
        _record(key, message["type"])
        if message["type"] == "http.disconnect":
            break
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late", "more_body": q.get("stream") == "1"})
        _record(key, "send-ok")
    except OSError as exc:
        _record(key, f"OSError:{type(exc).__name__}")
    except Exception as exc:
        _record(key, f"other:{type(exc).__name__}")


async def events(scope, receive, send, q, key):
    await _respond(send, 200, json.dumps(EVENTS.get(key, [])).encode(), content_type=b"application/json")


async def slow_forever(scope, receive, send, q, key):
    _record(key, "started")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _record(key, "cancelled")
        raise


async def slow_started(scope, receive, send, q, key):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"started", "more_body": True})
    await asyncio.sleep(3600)


async def blocking_forever_in_thread(scope, receive, send, q, key):
    await asyncio.sleep(float(q.get("s", "0.5")))
    await _respond(send, 200, b"done")


async def informational(scope, receive, send, q, key):
    await send({"type": "http.response.start", "status": 103, "headers": []})
    await send({"type": "http.response.body", "body": b"x"})


ROUTES = {
    "/": hello,
    "/hello": hello,
    "/echo": echo,
    "/echo-info": echo_info,
    "/stream": stream,
    "/head-cl": head_cl,
    "/more-than-cl": more_than_cl,
    "/less-than-cl": less_than_cl,
    "/bad-header": bad_header,
    "/raise-before": raise_before,
    "/raise-after": raise_after,
    "/no-response": no_response,
    "/sleep": sleep_route,
    "/concurrency": concurrency,
    "/early": early,
    "/slow-body": slow_body,
    "/big": big,
    "/wait-disconnect": wait_disconnect,
    "/events": events,
    "/slow-forever": slow_forever,
    "/slow-started": slow_started,
    "/informational": informational,
}


# ---------------------------------------------------------------- lifespan variants

async def lifespan_fails(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable: db.example:5432"})
        return
    await _respond(send, 200, b"never")


async def lifespan_raises(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        raise RuntimeError("this app does not do lifespan")
    await _respond(send, 200, json.dumps(scope.get("state", {})).encode())


async def lifespan_records(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Says whether lifespan startup ran (state is empty under lifespan: off)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send, scope["state"])
        return
    await _respond(send, 200, json.dumps(dict(scope.get("state", {}))).encode())


# ---------------------------------------------------------------- task identity and context

import contextvars  # noqa: E402

REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


async def task_identity(scope, receive, send, q, key):
    """The app runs in a task from its first instruction, and stays in that same task."""
    before = asyncio.current_task()
    previous = REQUEST_VAR.get()
    REQUEST_VAR.set(q.get("v", "x"))  # must not leak into later requests
    async with asyncio.timeout(5):  # needs a current task
        await asyncio.sleep(0.01)
    after = asyncio.current_task()
    info = {"has_task": before is not None, "same_task": before is after, "previous": previous}
    await _respond(send, 200, json.dumps(info).encode(), content_type=b"application/json")


async def task_identity_sync(scope, receive, send, q, key):
    """Same as task_identity, but never suspends."""
    previous = REQUEST_VAR.get()
    REQUEST_VAR.set(q.get("v", "x"))
    info = {"has_task": asyncio.current_task() is not None, "previous": previous}
    await _respond(send, 200, json.dumps(info).encode(), content_type=b"application/json")


ROUTES["/task-identity"] = task_identity
ROUTES["/task-identity-sync"] = task_identity_sync


async def receive_after_response(scope, receive, send, q, key):
    """A listener already waiting in receive() must get http.disconnect once the response is done."""
    async def listen() -> None:
        message = await receive()  # the (empty) request body
        if message["type"] == "http.request":
            message = await receive()  # waits: nothing more will come until the exchange ends
        _record(key, message["type"])

    listener = asyncio.get_running_loop().create_task(listen())
    await asyncio.sleep(0.05)  # let it block in receive()
    await _respond(send, 200, b"done")
    await asyncio.wait_for(listener, 10)


ROUTES["/receive-after-response"] = receive_after_response


async def swallows_cancel(scope, receive, send, q, key):
    """Ignores cancellation (a badly behaved app): request_timeout must still answer."""
    for _ in range(3600):
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            _record(key, "swallowed")


ROUTES["/swallows-cancel"] = swallows_cancel


async def awaits_everything(scope, receive, send, q, key):
    """The ways an app can suspend: a bare yield, an executor, anyio threads, a cancel scope."""
    import anyio

    await asyncio.sleep(0)  # a bare yield: the task is rescheduled, not woken by a future
    loop = asyncio.get_running_loop()
    a = await loop.run_in_executor(None, sum, [1, 2])
    b = await anyio.to_thread.run_sync(sum, [3, 4])
    with anyio.move_on_after(0.01):
        await asyncio.sleep(5)  # cancelled by the scope, which must find its own task
    results = await asyncio.gather(asyncio.sleep(0, "x"), asyncio.sleep(0.001, "y"))
    await _respond(send, 200, json.dumps([a, b, results]).encode())


ROUTES["/awaits-everything"] = awaits_everything
