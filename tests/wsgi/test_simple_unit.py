"""The engine's simple-request shortcut for WSGI inline mode (``serve_simple``), in process.

A simple request (HTTP/1.1 keep-alive GET-like, no body, no header that needs a
check) is answered without a scope or a queued cycle. These tests drive one
HttpProtocol over a recording transport, once with the shortcut and once
without it (the ordinary cycle path), and check that the client cannot tell
them apart: the same bytes on the wire, the same environ, the same stats and
the same connection state, for apps that stay on the shortcut and for every
kind of app that leaves it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable, Iterable

import pytest
import uvloop

from corral.engine.protocol import HttpProtocol
from corral.engine.server import Server
from corral.engine.settings import EngineSettings

GET = b"GET /p%C3%A9/x?q=1 HTTP/1.1\r\nHost: example.org:8080\r\nAccept: a\r\nAccept: b\r\n\r\n"
StartResponse = Callable[..., Any]


class RecordingTransport:
    """What HttpProtocol uses of an asyncio transport; records writes and closes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: HttpProtocol | None = None
        self.data = b""
        self.closed = False
        self.eof_written = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.1.2.3", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed and self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, None)
        self.closed = True

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True


class CountingProtocol(HttpProtocol):
    """Counts how many requests left the shortcut for an ordinary cycle."""

    __slots__ = ("adopted",)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.adopted = 0

    def adopt(self, cycle: Any, method: str, raw_path: bytes, query: bytes) -> None:
        self.adopted += 1
        super().adopt(cycle, method, raw_path, query)


def serve(app: Callable[..., Any], chunks: Iterable[bytes], shortcut: bool) -> dict[str, Any]:
    """Feed ``chunks`` to one connection serving ``app`` inline; what the client and the stats saw."""
    seen: list[dict[str, Any]] = []

    def recording_app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        seen.append({**environ, "wsgi.input": type(environ["wsgi.input"]).__name__})
        return app(environ, start_response)

    async def run() -> dict[str, Any]:
        server = Server(recording_app, EngineSettings(threads=0), interface="wsgi")
        await server.startup()
        ctx = server._context()
        if not shortcut:
            ctx.serve_simple = None
        assert (ctx.serve_simple is not None) == shortcut
        conn = CountingProtocol(ctx)
        transport = RecordingTransport(asyncio.get_running_loop())
        transport.protocol = conn
        conn.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            if transport.closed:
                break
            conn.data_received(chunk)
            for _ in range(5):  # let call_soon() work (queued requests, pumps) run
                await asyncio.sleep(0)
        stats = ctx.stats
        outcome = {
            # The Date line is the second it was made; the rest must match byte for byte.
            "wire": re.sub(rb"date: [^\r]*\r\n", b"date: *\r\n", transport.data),
            "closed": transport.closed or transport.eof_written,
            "idle": conn.is_idle(),
            "environs": seen,
            "requests": stats.requests_total,
            "responses": list(stats.responses),
            "finished": sum(stats.duration_counts),
            "adopted": conn.adopted,
        }
        await server.shutdown(5.0)
        return outcome

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def both(app: Callable[..., Any], chunks: Iterable[bytes] = (GET,)) -> tuple[dict[str, Any], dict[str, Any]]:
    chunks = list(chunks)
    fast, full = serve(app, chunks, True), serve(app, chunks, False)
    assert full["adopted"] == 0  # without the shortcut nothing is ever adopted
    for key in ("wire", "closed", "idle", "requests", "responses", "finished"):
        assert fast[key] == full[key], key
    assert fast["environs"] == full["environs"]
    return fast, full


# ---------------------------------------------------------------------- apps that stay on the shortcut

def hello(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


def no_length(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"nothing here"]


def no_headers(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


@pytest.mark.parametrize("app", [hello, no_length, no_headers])
def test_simple_responses_stay_on_the_shortcut_and_match_the_full_path(app: Callable[..., Any]) -> None:
    fast, full = both(app)
    assert fast["adopted"] == 0
    assert fast["wire"].startswith(b"HTTP/1.1 ") and not fast["closed"]
    assert fast["responses"] == full["responses"] and fast["finished"] == 1


def test_the_apps_reason_phrase_is_sent_as_given() -> None:
    def custom(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 Fine, Thanks", [])
        return [b"ok"]

    fast, _full = both(custom)
    assert fast["adopted"] == 0 and fast["wire"].startswith(b"HTTP/1.1 200 Fine, Thanks\r\n")


def test_the_environ_is_complete_and_decoded() -> None:
    fast, _full = both(hello)
    env = fast["environs"][0]
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/p\xc3\xa9/x"  # percent-decoded, then latin-1
    assert env["QUERY_STRING"] == "q=1" and env["RAW_URI"] == "/p%C3%A9/x?q=1"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.org", "8080")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.1.2.3", "40000")
    assert env["HTTP_ACCEPT"] == "a,b"  # repeated fields joined
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["SCRIPT_NAME"] == ""


def test_keep_alive_requests_with_changing_headers_each_get_their_own_environ() -> None:
    first = b"GET /a HTTP/1.1\r\nHost: h\r\nX-One: 1\r\n\r\n"
    second = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    fast, _full = both(hello, [first, first, second, first])
    assert fast["adopted"] == 0 and fast["finished"] == 4
    assert [e.get("HTTP_X_ONE") for e in fast["environs"]] == ["1", "1", None, "1"]
    assert [e["PATH_INFO"] for e in fast["environs"]] == ["/a", "/a", "/b", "/a"]
    # Each request's environ is a dict of its own: an app may change it freely.
    assert len({id(e) for e in fast["environs"]}) == 4


def test_pipelined_requests_are_answered_in_order() -> None:
    def echo_path(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    data = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5))
    fast, _full = both(echo_path, [data])
    assert fast["adopted"] == 0
    bodies = re.findall(rb"\r\n\r\n(/\d)", fast["wire"])
    assert bodies == [b"/0", b"/1", b"/2", b"/3", b"/4"]


# ---------------------------------------------------------------------- apps that leave it

def raises(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("boom")


def generator(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"a"
    yield b"b"


def late_start(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    yield from ()
    start_response("200 OK", [])  # PEP 3333 allows start_response() on the first iteration
    yield b"late"


def uses_write(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    return [b"returned"]


def closes(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Connection", "close")])
    return [b"bye"]


def own_date(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Date", "Thu, 01 Jan 2026 00:00:00 GMT"), ("Server", "app")])
    return [b"dated"]


def no_content(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("204 No Content", [])
    return [b""]


def short_length(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "10")])
    return [b"short"]


def two_items(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [])
    return [b"one", b"two"]


def text_body(environ: dict[str, Any], start_response: StartResponse) -> list[Any]:
    start_response("200 OK", [])
    return ["not bytes"]


def bytearray_body(environ: dict[str, Any], start_response: StartResponse) -> list[Any]:
    start_response("200 OK", [])
    return [bytearray(b"mutable")]


def no_start(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    return [b"headless"]


def exc_info_replaces(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("changed my mind")
    except ValueError:
        import sys
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"error page"]


class Closing:
    """A response iterable with close(), which must be called once."""

    closed = 0

    def __iter__(self) -> Any:
        return iter([b"closing"])

    def close(self) -> None:
        Closing.closed += 1


def closing(environ: dict[str, Any], start_response: StartResponse) -> Closing:
    start_response("200 OK", [])
    return Closing()


LEAVERS = [raises, generator, late_start, uses_write, closes, own_date, no_content, short_length, two_items,
           text_body, bytearray_body, no_start, closing]


@pytest.mark.parametrize("app", LEAVERS)
def test_apps_that_leave_the_shortcut_are_served_exactly_as_by_a_full_cycle(app: Callable[..., Any]) -> None:
    # Twice on one connection: the connection must be in the same state after each.
    fast, _full = both(app, [GET, GET])
    assert fast["adopted"] >= 1


def test_exc_info_before_the_body_replaces_the_head_on_the_shortcut() -> None:
    fast, _full = both(exc_info_replaces)
    assert fast["adopted"] == 0
    assert fast["wire"].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert fast["wire"].endswith(b"error page")


def test_close_is_called_on_the_response_iterable() -> None:
    Closing.closed = 0
    both(closing)
    assert Closing.closed == 2  # once per path


def test_head_requests_leave_the_shortcut_and_get_no_body() -> None:
    head = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"
    fast, _full = both(hello, [head, head])
    assert fast["adopted"] == 2
    assert b"Hello" not in fast["wire"] and fast["wire"].count(b"HTTP/1.1 200 OK") == 2


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",  # a Connection header
    b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",  # HTTP/1.0
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",  # a body
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",  # a proxy header
    b"GET http://h/abs HTTP/1.1\r\nHost: h\r\n\r\n",  # an absolute-form target
])
def test_requests_that_are_not_simple_take_the_full_path(request_bytes: bytes) -> None:
    fast, _full = both(hello, [request_bytes])
    assert fast["adopted"] == 0  # never started on the shortcut
    assert fast["finished"] == 1


def test_the_shortcut_is_off_with_an_access_log_or_root_path() -> None:
    for settings in (EngineSettings(threads=0, access_log=True), EngineSettings(threads=0, root_path="/app"),
                     EngineSettings(threads=2)):
        server = Server(hello, settings, interface="wsgi")
        loop = uvloop.new_event_loop()
        try:
            ctx = loop.run_until_complete(_context_of(server))
        finally:
            loop.close()
        assert ctx.serve_simple is None, settings
    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(_context_of(Server(hello, EngineSettings(threads=0), "wsgi"))).serve_simple
    finally:
        loop.close()


async def _context_of(server: Server) -> Any:
    return server._context()
