"""HttpProtocol in-process: request parsing, limits and refusals, request bodies (no sockets).

Each test feeds bytes to one protocol on a fake transport (``fake_transport``)
and reads what it wrote. The socket-level suites (test_engine_*.py) stay the
end-to-end layer; these pin the parsing rules one by one, in milliseconds.
"""

from __future__ import annotations

import json
from typing import Any

from fake_transport import WireFactory

SEEN: list[dict[str, Any]] = []


def request(method: str = "GET", target: str = "/", headers: list[tuple[str, str]] | None = None,
            body: bytes = b"", version: str = "1.1", host: str | None = "t") -> bytes:
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes, trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n" + trailers + b"\r\n"


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the request body, and the scope it saw in an ``x-scope`` header (JSON)."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            SEEN.append({"disconnect": True, "body": body})
            return
        body += message["body"]
        if not message["more_body"]:
            break
    view = {"method": scope["method"], "path": scope["path"], "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(), "version": scope["http_version"],
            "headers": [k.decode() for k, _ in scope["headers"]], "client": scope["client"],
            "server": scope["server"]}
    SEEN.append(view)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-scope", json.dumps(view).encode())]})
    await send({"type": "http.response.body", "body": body})


def refused(wire: WireFactory, data: bytes, status: int, **settings: Any) -> bytes:
    """Send ``data``; the engine answers ``status`` itself, half-closes, and no app ran. Returns the body."""
    SEEN.clear()
    conn = wire(echo, **settings)
    conn.send(data)
    resp = conn.response()
    assert resp.status == status, resp
    assert resp.header("connection") == "close"
    assert conn.transport.eof_written, "a refusal half-closes the connection (lingering close)"
    assert SEEN == [], "the app must not run for a refused request"
    conn.send_eof()
    conn.wait_closed()
    return resp.body


# --------------------------------------------------------------------------- plain requests


def test_get_is_answered_and_the_connection_stays_open(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request(target="/a/b?x=1"))
    resp = conn.response()
    assert (resp.status, resp.body, resp.header("content-length")) == (200, b"", "0")
    view = json.loads(resp.header("x-scope") or "")
    assert (view["method"], view["path"], view["query"], view["version"]) == ("GET", "/a/b", "x=1", "1.1")
    assert resp.header("connection") is None
    conn.send(request(target="/again"))
    assert [r.status for r in conn.responses(2)] == [200, 200]
    assert not conn.transport.closed


def test_scope_names_peer_and_socket_from_the_transport(wire: WireFactory) -> None:
    conn = wire(echo, peername=("10.1.2.3", 5555), sockname=("10.0.0.1", 8080))
    conn.send(request())
    view = json.loads(conn.response().header("x-scope") or "")
    assert (view["client"], view["server"]) == (["10.1.2.3", 5555], ["10.0.0.1", 8080])


def test_unix_socket_scope_has_no_client_and_the_path_as_server(wire: WireFactory) -> None:
    conn = wire(echo, peername="", sockname="/run/corral.sock")
    conn.send(request())
    view = json.loads(conn.response().header("x-scope") or "")
    assert (view["client"], view["server"]) == (None, ["/run/corral.sock", None])


def test_percent_encoded_path_is_decoded_and_raw_path_kept(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request(target="/caf%C3%A9/x%2Fy"))
    view = json.loads(conn.response().header("x-scope") or "")
    assert (view["path"], view["raw_path"]) == ("/café/x/y", "/caf%C3%A9/x%2Fy")


def test_absolute_form_target_gives_its_path_and_query(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request(target="http://example.com/p/q?z=9"))
    view = json.loads(conn.response().header("x-scope") or "")
    assert (view["path"], view["query"]) == ("/p/q", "z=9")


def test_options_asterisk_is_served(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request("OPTIONS", "*"))
    view = json.loads(conn.response().header("x-scope") or "")
    assert (view["method"], view["path"]) == ("OPTIONS", "*")


def test_header_names_reach_the_app_lower_cased_in_order(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request(headers=[("X-One", "1"), ("x-TWO", "2  ")]))
    view = json.loads(conn.response().header("x-scope") or "")
    assert view["headers"] == ["host", "x-one", "x-two"]


def test_http10_request_without_host_is_served(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request(version="1.0", host=None))
    resp = conn.response()
    assert resp.status == 200
    assert json.loads(resp.header("x-scope") or "")["version"] == "1.0"


# --------------------------------------------------------------------------- limits and refusals


def test_request_target_over_max_request_line_is_414(wire: WireFactory) -> None:
    refused(wire, request(target="/" + "a" * 100), 414, max_request_line=64)


def test_request_target_arriving_in_pieces_is_measured_whole(wire: WireFactory) -> None:
    SEEN.clear()
    conn = wire(echo, max_request_line=64)
    conn.send(b"GET /" + b"a" * 40)
    assert conn.written == b"", "nothing is answered while the target is within the limit"
    conn.send(b"b" * 40 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert conn.response().status == 414


def test_request_target_at_max_request_line_is_served(wire: WireFactory) -> None:
    conn = wire(echo, max_request_line=64)
    conn.send(request(target="/" + "a" * 63))
    assert conn.response().status == 200


def test_too_many_header_fields_is_431(wire: WireFactory) -> None:
    headers = [(f"x-h{i}", "v") for i in range(10)]
    body = refused(wire, request(headers=headers), 431, max_header_count=5)
    assert b"5 fields" in body, "the refusal names the limit"


def test_header_bytes_over_max_header_size_is_431(wire: WireFactory) -> None:
    refused(wire, request(headers=[("x-big", "v" * 300)]), 431, max_header_size=256)


def test_a_header_line_that_never_ends_is_431_before_it_is_buffered_whole(wire: WireFactory) -> None:
    # httptools buffers a field until its CRLF without a callback: the engine counts the bytes itself.
    SEEN.clear()
    conn = wire(echo, max_header_size=256, max_request_line=64, max_header_count=4)
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
    for _ in range(20):
        if conn.written:
            break
        conn.send(b"v" * 200)
    assert conn.response().status == 431
    assert SEEN == []


def test_missing_host_is_400(wire: WireFactory) -> None:
    assert b"missing Host" in refused(wire, request(host=None), 400)


def test_two_host_headers_are_400(wire: WireFactory) -> None:
    assert b"more than one Host" in refused(wire, request(headers=[("Host", "u")]), 400)


def test_unknown_http_version_is_505(wire: WireFactory) -> None:
    refused(wire, b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505)


def test_garbage_request_line_is_400(wire: WireFactory) -> None:
    refused(wire, b"HELLO THERE\r\n\r\n", 400)


def test_connect_is_501(wire: WireFactory) -> None:
    refused(wire, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501)


def test_asterisk_target_with_get_is_400(wire: WireFactory) -> None:
    refused(wire, request("GET", "*"), 400)


def test_unknown_expectation_is_417(wire: WireFactory) -> None:
    refused(wire, request("POST", headers=[("Expect", "tea"), ("Content-Length", "1")], body=b"x"), 417)


def test_transfer_encoding_in_http10_is_400(wire: WireFactory) -> None:
    refused(wire, request("POST", version="1.0", headers=[("Transfer-Encoding", "chunked")]) + chunked(b"x"), 400)


def test_content_length_with_transfer_encoding_is_400(wire: WireFactory) -> None:
    # Request smuggling: a proxy and the engine must never disagree on where the body ends.
    refused(wire, request("POST", headers=[("Content-Length", "3"), ("Transfer-Encoding", "chunked")])
            + chunked(b"abc"), 400)


def test_declared_body_over_max_body_size_is_413_before_the_app_runs(wire: WireFactory) -> None:
    refused(wire, request("POST", headers=[("Content-Length", "11")]) + b"x" * 11, 413, max_body_size=10)


def test_chunked_body_over_max_body_size_is_413(wire: WireFactory) -> None:
    SEEN.clear()
    conn = wire(echo, max_body_size=10)
    conn.send(request("POST", headers=[("Transfer-Encoding", "chunked")]) + chunked(b"x" * 6, b"y" * 6))
    resp = conn.response()
    assert resp.status == 413
    assert resp.header("connection") == "close"
    assert SEEN == [], "the whole request arrived in one read: refused before its app ran"


def test_invalid_chunk_size_is_400(wire: WireFactory) -> None:
    SEEN.clear()
    conn = wire(echo)
    conn.send(request("POST", headers=[("Transfer-Encoding", "chunked")]) + b"zz\r\nabc\r\n0\r\n\r\n")
    resp = conn.response()
    assert resp.status == 400 and resp.header("connection") == "close"


def test_a_refusal_after_a_good_request_is_answered_after_it_in_order(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request(target="/first") + request(host=None))
    first, second = conn.responses(2)
    assert (first.status, second.status) == (200, 400)
    assert second.header("connection") == "close"


# --------------------------------------------------------------------------- request bodies


def test_content_length_body_in_several_reads_reaches_the_app_whole(wire: WireFactory) -> None:
    conn = wire(echo)
    body = bytes(range(256)) * 4
    conn.send(request("POST", headers=[("Content-Length", str(len(body)))]) + body[:100])
    for i in range(100, len(body), 300):
        conn.send(body[i:i + 300])
    assert conn.response().body == body


def test_request_fed_one_byte_at_a_time_is_parsed(wire: WireFactory) -> None:
    conn = wire(echo)
    data = request("POST", "/slow", headers=[("Content-Length", "5")], body=b"hello")
    for i in range(len(data)):
        conn.send(data[i:i + 1], settle=False)
    resp = conn.response()
    assert (resp.status, resp.body) == (200, b"hello")


def test_chunked_body_is_reassembled_and_trailers_stay_out_of_the_scope(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request("POST", headers=[("Transfer-Encoding", "chunked")])
              + chunked(b"hello, ", b"world", trailers=b"X-Checksum: 42\r\n"))
    resp = conn.response()
    assert resp.body == b"hello, world"
    assert "x-checksum" not in json.loads(resp.header("x-scope") or "")["headers"]


def test_chunk_extensions_are_ignored(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request("POST", headers=[("Transfer-Encoding", "chunked")]) + b"3;name=v\r\nabc\r\n0\r\n\r\n")
    assert conn.response().body == b"abc"


def test_trailers_count_against_max_header_count(wire: WireFactory) -> None:
    conn = wire(echo, max_header_count=3)
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(4))
    conn.send(request("POST", headers=[("Transfer-Encoding", "chunked")]) + chunked(b"abc", trailers=trailers))
    assert conn.response().status == 431


def test_empty_content_length_body_gives_one_empty_request_message(wire: WireFactory) -> None:
    conn = wire(echo)
    conn.send(request("POST", headers=[("Content-Length", "0")]))
    resp = conn.response()
    assert (resp.status, resp.body) == (200, b"")


def test_client_leaving_mid_body_gives_the_app_a_disconnect(wire: WireFactory) -> None:
    SEEN.clear()
    conn = wire(echo)
    conn.send(request("POST", headers=[("Content-Length", "100")]) + b"x" * 10)
    conn.disconnect()
    conn.wait_for(lambda: SEEN, "the app to see the disconnect")
    assert SEEN == [{"disconnect": True, "body": b"x" * 10}]
    assert conn.ctx.stats.connections_open == 0


def test_chunked_body_going_over_max_body_size_while_the_app_reads_is_413(wire: WireFactory) -> None:
    SEEN.clear()
    conn = wire(echo, max_body_size=10)
    conn.send(request("POST", headers=[("Transfer-Encoding", "chunked")]) + b"6\r\nxxxxxx\r\n")
    assert conn.written == b"", "the app is reading the body"
    conn.send(b"6\r\nyyyyyy\r\n0\r\n\r\n")
    resp = conn.response()
    assert (resp.status, resp.header("connection")) == (413, "close")
    assert SEEN == [{"disconnect": True, "body": b"x" * 6}], "the app got what fit, then the disconnect"
