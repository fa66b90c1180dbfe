"""HttpProtocol in-process: response framing, connection persistence, Date/Server, app errors.

What a response looks like on the wire for each kind of request and app
(Content-Length or chunked or until-close; HEAD, 204 and 304 without a body;
HTTP/1.0 and ``Connection: close``), read from a fake transport.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any

from fake_transport import WireFactory
from test_protocol_requests import request

from util import parse_responses


def responder(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None,
              parts: tuple[bytes, ...] = (b"hello",)) -> Any:
    """An app that answers ``status`` with ``headers`` and the body in ``parts`` (more_body between)."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers or []})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})
    return app


def head_of(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[0]


# --------------------------------------------------------------------------- framing


def test_whole_body_in_one_send_gets_a_content_length(wire: WireFactory) -> None:
    conn = wire(responder())
    conn.send(request())
    resp = conn.response()
    assert (resp.header("content-length"), resp.header("transfer-encoding"), resp.body) == ("5", None, b"hello")


def test_streamed_body_on_http11_is_chunked(wire: WireFactory) -> None:
    conn = wire(responder(parts=(b"one;", b"two;", b"")))
    conn.send(request())
    resp = conn.response()
    assert resp.header("transfer-encoding") == "chunked" and resp.header("content-length") is None
    assert resp.body == b"one;two;"
    assert conn.written.endswith(b"0\r\n\r\n")
    assert not conn.transport.closed, "a chunked response keeps the connection"


def test_streamed_body_with_declared_length_is_sent_as_is(wire: WireFactory) -> None:
    conn = wire(responder(headers=[(b"content-length", b"8")], parts=(b"one;", b"two;")))
    conn.send(request())
    resp = conn.response()
    assert (resp.header("content-length"), resp.header("transfer-encoding"), resp.body) == ("8", None, b"one;two;")


def test_streamed_body_on_http10_is_delimited_by_the_close(wire: WireFactory) -> None:
    conn = wire(responder(parts=(b"one;", b"two;", b"")))
    conn.send(request(version="1.0"))
    conn.wait_closed()
    head, _, body = conn.written.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert b"connection: close" in head and body == b"one;two;"


def test_apps_transfer_encoding_header_is_replaced_by_the_engines_framing(wire: WireFactory) -> None:
    conn = wire(responder(headers=[(b"transfer-encoding", b"gzip")], parts=(b"a", b"b")))
    conn.send(request())
    resp = conn.response()
    assert [v for k, v in resp.headers if k.lower() == "transfer-encoding"] == ["chunked"]
    assert resp.body == b"ab"


def test_head_response_has_the_length_but_no_body(wire: WireFactory) -> None:
    conn = wire(responder(headers=[(b"content-length", b"5")]))
    conn.send(request("HEAD") + request(target="/next"))
    first = head_of(conn.written)
    assert b"content-length: 5" in first
    # The next response follows the HEAD response's head directly: no body bytes between.
    assert conn.written.count(b"hello") == 1
    nxt = parse_responses(conn.written[len(first) + 4:])
    assert [(r.status, r.body) for r in nxt] == [(200, b"hello")]


def test_204_has_no_body_and_no_content_length(wire: WireFactory) -> None:
    conn = wire(responder(204, headers=[(b"content-length", b"5")]))
    conn.send(request() + request(target="/next"))
    first, second = conn.responses(2)
    assert (first.status, first.body, first.header("content-length")) == (204, b"", None)
    assert second.status == 204, "the connection is still in step after a 204"


def test_304_has_no_body(wire: WireFactory) -> None:
    conn = wire(responder(304, headers=[(b"etag", b'"x"')]))
    conn.send(request() + request(target="/next"))
    assert conn.written.count(b"HTTP/1.1 304") == 2 and b"hello" not in conn.written


# --------------------------------------------------------------------------- persistence


def test_connection_close_request_is_answered_with_close_and_the_rest_ignored(wire: WireFactory) -> None:
    conn = wire(responder())
    conn.send(request(headers=[("Connection", "close")]) + request(target="/never"))
    conn.wait_closed()
    [resp] = parse_responses(conn.written)
    assert resp.header("connection") == "close"


def test_http10_keep_alive_request_gets_keep_alive_and_a_second_answer(wire: WireFactory) -> None:
    conn = wire(responder())
    conn.send(request(version="1.0", headers=[("Connection", "keep-alive")]))
    assert conn.response().header("connection") == "keep-alive"
    conn.send(request(version="1.0", headers=[("Connection", "keep-alive")]))
    assert [r.status for r in conn.responses(2)] == [200, 200]
    assert not conn.transport.closed


def test_http10_request_without_keep_alive_closes_after_the_response(wire: WireFactory) -> None:
    conn = wire(responder())
    conn.send(request(version="1.0"))
    conn.wait_closed()
    assert parse_responses(conn.written)[0].body == b"hello"


def test_app_asking_for_close_closes_after_the_response(wire: WireFactory) -> None:
    conn = wire(responder(headers=[(b"connection", b"close")]))
    conn.send(request())
    conn.wait_closed()
    resp = parse_responses(conn.written)[0]
    assert [v for k, v in resp.headers if k.lower() == "connection"] == ["close"], "one Connection header"


# --------------------------------------------------------------------------- Date and Server


def test_date_and_server_headers_are_added(wire: WireFactory) -> None:
    conn = wire(responder())
    conn.send(request())
    resp = conn.response()
    assert resp.header("server") == "corral"
    date = parsedate_to_datetime(resp.header("date") or "")
    assert abs(date.timestamp() - time.time()) < 5


def test_server_header_none_and_date_header_false_leave_them_out(wire: WireFactory) -> None:
    conn = wire(responder(), server_header=None, date_header=False)
    conn.send(request())
    names = conn.response().header_names()
    assert "server" not in names and "date" not in names and names == ["content-length"]


def test_apps_own_server_header_is_the_only_one_and_date_is_still_added(wire: WireFactory) -> None:
    conn = wire(responder(headers=[(b"server", b"mine")]))
    conn.send(request())
    resp = conn.response()
    assert [v for k, v in resp.headers if k.lower() == "server"] == ["mine"]
    assert resp.header("date") is not None


def test_custom_server_header_value(wire: WireFactory) -> None:
    conn = wire(responder(), server_header="edge/1")
    conn.send(request())
    assert conn.response().header("server") == "edge/1"


# --------------------------------------------------------------------------- app errors


def test_invalid_header_value_becomes_500_with_nothing_of_the_apps_head(wire: WireFactory) -> None:
    conn = wire(responder(headers=[(b"x-bad", b"a\r\nSet-Cookie: evil=1")]))
    conn.send(request())
    resp = conn.response()
    assert resp.status == 500 and b"evil" not in conn.written


def test_body_shorter_than_its_content_length_becomes_500(wire: WireFactory) -> None:
    conn = wire(responder(headers=[(b"content-length", b"10")]))
    conn.send(request())
    resp = conn.response()
    assert (resp.status, resp.header("connection")) == (500, "close")
    assert b"hello" not in conn.written


def test_body_longer_than_its_content_length_after_the_head_closes_the_connection(wire: WireFactory) -> None:
    conn = wire(responder(headers=[(b"content-length", b"6")], parts=(b"abc", b"defgh")))
    conn.send(request())
    conn.wait_closed()
    assert conn.written.endswith(b"\r\n\r\nabc"), "nothing beyond the declared length was sent"


def test_app_returning_without_a_response_is_500(wire: WireFactory) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None
    conn = wire(app)
    conn.send(request())
    assert conn.response().status == 500


def test_app_raising_is_500_and_the_connection_closes(wire: WireFactory) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")
    conn = wire(app)
    conn.send(request() + request(target="/never"))
    conn.wait_closed()
    assert [r.status for r in parse_responses(conn.written)] == [500]


def test_status_out_of_range_is_500(wire: WireFactory) -> None:
    conn = wire(responder(status=103))
    conn.send(request())
    assert conn.response().status == 500


def test_stats_count_requests_and_responses_by_class(wire: WireFactory) -> None:
    conn = wire(responder(404))
    conn.send(request() + request() + request(host=None))
    conn.responses(3)
    stats = conn.ctx.stats
    assert stats.requests_total == 3
    assert (stats.responses[4], stats.responses[2]) == (3, 0)
