"""WebSocket handshakes: checked before the app (400/426), the ASGI websocket scope, accept and refusals."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from engine_util import EngineProc, exchange, parse_responses, served, wait_until
from ws_util import KEY, TEXT, accept_for, close_frame, frame, open_raw, refused, request


@pytest.fixture(scope="module")
def ws_server():
    yield from served("ws_apps:app")


def _events(proc: EngineProc, key: str) -> list:
    return httpx.get(f"{proc.url}/events?id={key}", timeout=20).json()


# Each case: a malformed handshake, and the status the engine answers without calling the app.
BAD = {
    "no-key": (dict(key=None), 400),
    "key-not-base64": (dict(key=b"not base64!!"), 400),
    "key-of-15-bytes": (dict(key=base64.b64encode(b"0123456789abcde")), 400),
    "key-of-17-bytes": (dict(key=base64.b64encode(b"0123456789abcdefg")), 400),
    "two-keys": (dict(extra=b"Sec-WebSocket-Key: " + KEY + b"\r\n"), 400),
    "post": (dict(method=b"POST"), 400),
    "http-1.0": (dict(http=b"HTTP/1.0"), 400),
    "no-connection-upgrade": (dict(connection=b"keep-alive"), 400),
    "no-connection-header": (dict(connection=None), 400),
    "no-host": (dict(host=None), 400),
    "two-hosts": (dict(extra=b"Host: other\r\n"), 400),
    "with-a-body": (dict(extra=b"Content-Length: 3\r\n"), 400),
    "bad-subprotocol-list": (dict(extra=b"Sec-WebSocket-Protocol: a b\r\n"), 400),
    "bad-extensions-header": (dict(extra=b"Sec-WebSocket-Extensions: permessage-deflate; =\r\n"), 400),
    "version-8": (dict(version=b"8"), 426),
    "version-missing": (dict(version=None), 426),
    "two-versions": (dict(extra=b"Sec-WebSocket-Version: 13\r\n"), 426),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_handshake_is_refused_before_the_app(ws_server, name):
    kwargs, status = BAD[name]
    data = request(f"/echo?id=bad-{name}", **kwargs)
    if name == "with-a-body":
        data += b"abc"
    resp = refused(ws_server, data)
    assert resp.status == status, resp
    assert resp.header("connection") == "close"
    assert resp.header("upgrade") is None and resp.header("sec-websocket-accept") is None
    if status == 426:
        assert resp.header("sec-websocket-version") == "13"
        assert b"Sec-WebSocket-Version: 13" in resp.body
    # The engine answered alone: the app never saw this connection.
    assert _events(ws_server, f"bad-{name}") == []


def test_valid_handshake_is_accepted_with_the_rfc_accept_value(ws_server):
    ws = open_raw(ws_server, data=request("/echo?id=ok", connection=b"keep-alive, Upgrade"))
    try:
        assert ws.status == 101
        assert ws.header("upgrade").lower() == "websocket"
        assert ws.header("connection").lower() == "upgrade"
        assert ws.header("sec-websocket-accept") == accept_for(KEY)
        assert ws.header("sec-websocket-protocol") is None
        assert ws.header("date") and ws.header("server") == "corral"
        ws.send(frame(TEXT, b"hi"))
        got = ws.read()
        assert (got.opcode, got.payload) == (TEXT, b"hi")
    finally:
        ws.close()
    assert wait_until(lambda: _events(ws_server, "ok") == ["app called", {"disconnect": 1006, "reason": ""}],
                      what="the app to see the disconnect")


def test_frames_sent_right_behind_the_handshake_are_not_lost(ws_server):
    ws = open_raw(ws_server, data=request("/echo") + frame(TEXT, b"early") + frame(TEXT, b"bird"))
    try:
        assert ws.status == 101
        assert [ws.read().payload, ws.read().payload] == [b"early", b"bird"]
    finally:
        ws.close()


def test_scope_is_complete(ws_server):
    ws = open_raw(ws_server, data=request("/a%20b/scope?x=1&y=%20", extra=b"Sec-WebSocket-Protocol: chat, superchat\r\n"
                                                                      b"X-Custom: v\r\n"))
    try:
        assert ws.status == 101
        scope = json.loads(ws.read().payload)
    finally:
        ws.close()
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/a b/scope" and scope["raw_path"] == "/a%20b/scope"
    assert scope["query_string"] == "x=1&y=%20"
    assert scope["root_path"] == ""
    assert ["x-custom", "v"] in scope["headers"] and ["host", "t"] in scope["headers"]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", ws_server.port]
    assert scope["subprotocols"] == ["chat", "superchat"]
    assert scope["state"] == {"started_by": "lifespan"}
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert "method" not in scope


def test_scheme_follows_trusted_proxy_headers_and_root_path(make_server):
    proc = make_server(app="ws_apps:app", settings={"root_path": "/api"})
    ws = open_raw(proc, data=request("/scope", extra=b"X-Forwarded-Proto: https\r\n"
                                                    b"X-Forwarded-For: 203.0.113.9\r\n"))
    try:
        scope = json.loads(ws.read().payload)
    finally:
        ws.close()
    assert scope["scheme"] == "wss"
    assert scope["client"][0] == "203.0.113.9"
    assert scope["root_path"] == "/api" and scope["path"] == "/api/scope"


def test_untrusted_peer_cannot_claim_wss(make_server):
    proc = make_server(app="ws_apps:app", settings={"forwarded_allow_ips": []})
    ws = open_raw(proc, data=request("/scope", extra=b"X-Forwarded-Proto: https\r\n"))
    try:
        scope = json.loads(ws.read().payload)
    finally:
        ws.close()
    assert scope["scheme"] == "ws" and scope["client"][0] == "127.0.0.1"


def test_subprotocol_and_accept_headers(ws_server):
    ws = open_raw(ws_server, data=request("/subprotocol?pick=superchat&header=x-accepted:yes",
                                          extra=b"Sec-WebSocket-Protocol: chat, superchat\r\n"))
    try:
        assert ws.status == 101
        assert ws.header("sec-websocket-protocol") == "superchat"
        assert ws.header("x-accepted") == "yes"
        assert ws.read().payload == b"hello"
    finally:
        ws.close()


def test_subprotocol_the_client_did_not_offer_is_an_app_error(ws_server):
    resp = refused(ws_server, request("/subprotocol?pick=other", extra=b"Sec-WebSocket-Protocol: chat\r\n"))
    assert resp.status == 500
    assert "did not offer" in wait_until(lambda: "did not offer" in ws_server.log_text() and ws_server.log_text())


def test_accept_headers_must_not_repeat_the_handshake_headers(ws_server):
    resp = refused(ws_server, request("/subprotocol?header=sec-websocket-protocol:chat",
                                      extra=b"Sec-WebSocket-Protocol: chat\r\n"))
    assert resp.status == 500


def test_close_before_accept_is_403_and_the_app_gets_disconnect(ws_server):
    resp = refused(ws_server, request("/deny?id=deny"))
    assert resp.status == 403 and resp.header("sec-websocket-accept") is None
    assert wait_until(lambda: len(_events(ws_server, "deny")) == 2 and _events(ws_server, "deny"))[1]["type"] \
        == "websocket.disconnect"


def test_unknown_route_is_403(ws_server):
    assert refused(ws_server, request("/nowhere")).status == 403


def test_http_response_extension(ws_server):
    resp = refused(ws_server, request("/http-response"))
    assert resp.status == 401
    assert resp.header("www-authenticate") == "Bearer"
    assert resp.body == b"no token"
    assert resp.header("upgrade") is None


def test_exception_before_accept_is_500(ws_server):
    resp = refused(ws_server, request("/raise-before"))
    assert resp.status == 500 and resp.header("upgrade") is None
    wait_until(lambda: "boom before accept" in ws_server.log_text(), what="the traceback in the log")


def test_returning_without_an_answer_is_500(ws_server):
    assert refused(ws_server, request("/no-answer")).status == 500
    wait_until(lambda: "without accepting or refusing" in ws_server.log_text(), what="the error in the log")


def test_wsgi_app_gets_the_plain_http_request(make_server):
    proc = make_server(app="ws_apps:wsgi_app", interface="wsgi")
    (resp,) = parse_responses(exchange(proc, request("/echo")))
    assert resp.status == 200 and resp.body == b"wsgi GET upgrade=websocket"


def test_ws_off_serves_the_plain_http_request(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws": False})
    (resp,) = parse_responses(exchange(proc, request("/echo")))
    assert resp.status == 200 and resp.body == b"plain http: /echo"
    assert resp.header("connection") == "close"


def test_other_upgrades_are_still_plain_http(ws_server):
    data = exchange(ws_server, b"GET /h2 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 200 and resp.body == b"plain http: /h2"


def test_a_websocket_counts_as_one_101_response(make_server):
    proc = make_server(app="ws_apps:app", stats=True)
    ws = open_raw(proc, "/echo")
    try:
        assert ws.status == 101
        stats = wait_until(lambda: (s := proc.stats())["responses"]["1xx"] == 1 and s, what="the 101 counted")
        assert stats["connections_open"] == 1
        assert stats["in_flight"] == 0  # an open WebSocket is not a request in flight
    finally:
        ws.close()
    wait_until(lambda: proc.stats()["connections_open"] == 0, what="the connection to be closed")


@pytest.mark.parametrize("field,value", [
    ("ws", "yes"), ("ws_max_message_size", 0), ("ws_max_queue", -1), ("ws_max_queue", True),
    ("ws_ping_interval", 0), ("ws_ping_timeout", -5), ("ws_close_timeout", None), ("ws_drain_timeout", -1),
    ("ws_per_message_deflate", 1),
])
def test_bad_ws_settings_name_the_key(field, value):
    from corral.engine.settings import EngineSettings

    with pytest.raises(ValueError, match=f"^{field} must be"):
        EngineSettings(**{field: value})


def test_websocket_counters_in_the_stats(make_server):
    proc = make_server(app="ws_apps:app", stats=True)
    ws = open_raw(proc, "/echo")
    try:
        for text in (b"one", b"two", "thrée".encode()):
            ws.send(frame(TEXT, text))
            assert ws.read().payload == text
        assert wait_until(lambda: proc.stats()["ws"]["open"] == 1, what="the open gauge")
        assert refused(proc, request("/deny")).status == 403
        assert refused(proc, request("/http-response")).status == 401
        assert refused(proc, request("/echo", key=b"short")).status == 400
        assert refused(proc, request("/raise-before")).status == 500
        ws.send(close_frame(4000, b"done"))
        assert ws.read_close().close_code == 4000
    finally:
        ws.close()
    stats = wait_until(lambda: (s := proc.stats()["ws"])["open"] == 0 and s, what="the close counted")
    assert stats == {"open": 0, "handshakes": {"accepted": 1, "denied": 2, "failed": 2},
                     "messages_in": 3, "messages_out": 3, "bytes_in": 12, "bytes_out": 12,
                     "closes": {"4000": 1}}


def test_access_log_has_a_line_for_the_handshake_and_one_for_the_close(make_server):
    proc = make_server(app="ws_apps:app", settings={"access_log": True})
    ws = open_raw(proc, "/echo?id=log")
    try:
        ws.send(frame(TEXT, b"12345"))
        assert ws.read().payload == b"12345"
        ws.send(close_frame(4000, b"done"))
        assert ws.read_close().close_code == 4000
    finally:
        ws.close()
    assert refused(proc, request("/deny")).status == 403
    lines = wait_until(lambda: [line for line in proc.log_text().splitlines() if '"GET /' in line
                                and "/events" not in line] if "/deny" in proc.log_text() else None,
                       what="the access log lines")
    assert '"GET /echo?id=log HTTP/1.1" 101 0' in lines[0]
    assert '"GET /echo?id=log HTTP/1.1" 4000 5' in lines[1]  # the close code, the bytes the app sent
    assert '"GET /deny HTTP/1.1" 403' in lines[2]
