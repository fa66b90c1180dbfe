"""Plain WSGI test apps, routed by PATH_INFO (served by tests/engine/serve.py --interface wsgi).

``os.sendfile`` is wrapped here, in the server process, to count calls: the
``/sendfile-count`` route reports them, so tests can tell sendfile was used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.validate import validator

SENDFILE_CALLS = [0]
_real_sendfile = os.sendfile


def _counting_sendfile(*args: Any) -> int:
    SENDFILE_CALLS[0] += 1
    return _real_sendfile(*args)


os.sendfile = _counting_sendfile

StartResponse = Callable[..., Any]


def _query(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response: StartResponse, data: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _text(start_response: StartResponse, text: str | bytes, status: str = "200 OK") -> list[bytes]:
    body = text.encode() if isinstance(text, str) else text
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# ---------------------------------------------------------------- environ and body

def environ_view(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    data = {k: v for k, v in environ.items() if isinstance(v, str)}
    data["wsgi.version"] = list(environ["wsgi.version"])
    for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated"):
        data[key] = environ.get(key)
    data["has"] = sorted(k for k in environ if k.startswith("wsgi."))
    data["input_type"] = type(environ["wsgi.input"]).__name__
    return _json(start_response, data)


def read_body(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Reads wsgi.input the way ?mode= says; reports what it got."""
    stream = environ["wsgi.input"]
    mode = _query(environ).get("mode", "read")
    chunks: list[bytes] = []
    sha = hashlib.sha256()
    total = 0
    if mode == "read":
        data = stream.read()
        chunks = [data]
    elif mode == "readn":
        while True:
            data = stream.read(7)
            if not data:
                break
            chunks.append(data)
    elif mode == "readline":
        while True:
            line = stream.readline()
            if not line:
                break
            chunks.append(line)
    elif mode == "readline-limit":
        while True:
            line = stream.readline(5)
            if not line:
                break
            chunks.append(line)
    elif mode == "readlines":
        chunks = stream.readlines()
    elif mode == "iter":
        chunks = list(stream)
    elif mode == "stream":  # large uploads: constant memory
        while True:
            data = stream.read(65536)
            if not data:
                break
            sha.update(data)
            total += len(data)
        return _json(start_response, {"length": total, "sha256": sha.hexdigest()})
    elif mode == "ignore":
        return _json(start_response, {"ignored": True})
    body = b"".join(chunks)
    return _json(start_response, {
        "length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "pieces": len(chunks),
        "max_piece": max((len(c) for c in chunks), default=0),
        "lines": [c.decode("latin-1") for c in chunks] if mode in ("readline", "readlines", "iter") else None,
    })


# ---------------------------------------------------------------- responses

def stream(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """A generator without Content-Length: chunked for 1.1, close-delimited for 1.0."""
    count = int(_query(environ).get("n", "5"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(count):
        yield b""  # empty chunks are allowed and must not end or break the framing
        yield f"chunk {i}\n".encode()


def empty_first(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """start_response is called lazily, inside the generator, as PEP 3333 allows."""
    yield b""
    start_response("201 Created", [("Content-Type", "text/plain")])
    yield b"late start"


def multi(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"one,", b"two,", b"three"]


def write_callable(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    write(b"twice ")
    return [b"then returned"]


def write_with_length(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """write() for part of a declared Content-Length, the rest as a one-item list."""
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
    write(b"hello ")
    return [b"world"]


def exc_info_before_body(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "yes")])
    try:
        raise ValueError("went wrong before the body")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"custom error page"]


def exc_info_after_body(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial body"
    try:
        raise ValueError("went wrong after the body started")
    except ValueError:
        # Too late to change the head: start_response must re-raise.
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    yield b"never sent"


def twice(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"unreachable"]


def no_start(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    return [b"body without a head"]


def bad_header(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: injected=1")])
    return [b"x"]


def raises(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("boom from the app")


def fails_midway(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first part"
    raise RuntimeError("boom in the middle of the body")


def no_content(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("204 No Content", [("Content-Length", "0")])
    return [b""]


def custom_headers(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                              ("Server", "my-app"), ("Connection", "close"), ("Content-Length", "2")])
    return [b"ok"]


# ---------------------------------------------------------------- close() tracking

class Tracked:
    """A response iterable that records its close() in a marker file."""

    def __init__(self, marker: str, chunks: int | None, size: int = 65536) -> None:
        self.marker = marker
        self.chunks = chunks
        self.size = size
        self.sent = 0

    def __iter__(self) -> "Tracked":
        return self

    def __next__(self) -> bytes:
        if self.chunks is not None and self.sent >= self.chunks:
            raise StopIteration
        self.sent += 1
        return b"x" * self.size

    def close(self) -> None:
        # Write then rename: the test polls for the marker and must never read it half-written.
        tmp = f"{self.marker}.tmp"
        with open(tmp, "w") as f:
            f.write(f"closed after {self.sent} chunks in thread {threading.current_thread().name}")
        os.replace(tmp, self.marker)


def tracked(environ: dict[str, Any], start_response: StartResponse) -> Tracked:
    """?marker=PATH&chunks=N (N missing: endless, until the client goes away)."""
    q = _query(environ)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return Tracked(q["marker"], int(q["chunks"]) if "chunks" in q else None)


def tracked_error(environ: dict[str, Any], start_response: StartResponse) -> Tracked:
    q = _query(environ)

    class Failing(Tracked):
        def __next__(self) -> bytes:
            raise RuntimeError("iteration failed")

    start_response("200 OK", [("Content-Type", "text/plain")])
    return Failing(q["marker"], None)


# ---------------------------------------------------------------- files

def file_download(environ: dict[str, Any], start_response: StartResponse) -> Any:
    """?path=P [&offset=N] [&length=N (sent as Content-Length)] [&bytesio=1]"""
    q = _query(environ)
    if q.get("bytesio"):
        with open(q["path"], "rb") as f:
            fileobj: Any = io.BytesIO(f.read())
    else:
        fileobj = open(q["path"], "rb")  # noqa: SIM115 - closed by the file wrapper
    if "offset" in q:
        fileobj.seek(int(q["offset"]))
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in q:
        headers.append(("Content-Length", q["length"]))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](fileobj, 32768)


def sendfile_count(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    return _json(start_response, {"calls": SENDFILE_CALLS[0]})


# ---------------------------------------------------------------- execution modes

_GATE_LOCK = threading.Lock()
_INSIDE = [0]


def gate(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Blocks until the file ?path= exists (the test opens the gate)."""
    path = _query(environ)["path"]
    with _GATE_LOCK:
        _INSIDE[0] += 1
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        with _GATE_LOCK:
            _INSIDE[0] -= 1
    return _text(start_response, "through the gate")


_BARRIERS: dict[int, threading.Barrier] = {}


def barrier(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Succeeds only if ?n= requests are inside the app at the same time."""
    n = int(_query(environ)["n"])
    with _GATE_LOCK:
        bar = _BARRIERS.setdefault(n, threading.Barrier(n, timeout=20))
    bar.wait()
    return _json(start_response, {"thread": threading.current_thread().name})


def stuck_in_the_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Sleeps ?seconds= (blocking: a WSGI call cannot be interrupted)."""
    time.sleep(float(_query(environ).get("seconds", "3")))
    return _text(start_response, "finally done")


def thread_name(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    return _json(start_response, {"thread": threading.current_thread().name,
                                  "multithread": environ["wsgi.multithread"]})


def pid(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    return _json(start_response, {"pid": os.getpid()})


ROUTES: dict[str, Callable[..., Any]] = {
    "/pid": pid,
    "/environ": environ_view,
    "/body": read_body,
    "/stream": stream,
    "/empty-first": empty_first,
    "/multi": multi,
    "/write": write_callable,
    "/write-length": write_with_length,
    "/exc-before": exc_info_before_body,
    "/exc-after": exc_info_after_body,
    "/twice": twice,
    "/no-start": no_start,
    "/bad-header": bad_header,
    "/raises": raises,
    "/fails-midway": fails_midway,
    "/no-content": no_content,
    "/custom-headers": custom_headers,
    "/tracked": tracked,
    "/tracked-error": tracked_error,
    "/file": file_download,
    "/sendfile-count": sendfile_count,
    "/gate": gate,
    "/barrier": barrier,
    "/stuck": stuck_in_the_app,
    "/thread": thread_name,
}


def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
    path = environ["PATH_INFO"]
    handler = ROUTES.get(path)
    if handler is None and path.startswith("/environ/"):
        handler = environ_view
    if handler is None:
        return _text(start_response, f"no route {path!r}", "404 Not Found")
    return handler(environ, start_response)


# ---------------------------------------------------------------- wsgiref.validate

def _validated_routes() -> dict[str, Callable[..., Any]]:
    return {path: validator(ROUTES[path]) for path in
            ("/environ", "/body", "/stream", "/multi", "/write", "/exc-before", "/file", "/no-content")}


VALIDATED = _validated_routes()


def validated_app(environ: dict[str, Any], start_response: StartResponse) -> Any:
    """The same routes, each wrapped in wsgiref.validate.validator (which asserts PEP 3333 rules)."""
    handler = VALIDATED.get(environ["PATH_INFO"])
    if handler is None:
        return validator(lambda e, s: _text(s, "no route", "404 Not Found"))(environ, start_response)
    return handler(environ, start_response)
