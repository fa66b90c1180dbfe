"""Starlette and FastAPI WebSocket routes end to end, over the `websockets` client library."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect

from engine_util import EngineProc, served, wait_until
from ws_util import ws_url


@pytest.fixture(scope="module")
def starlette_server():
    yield from served("ws_framework_apps:starlette_app")


@pytest.fixture(scope="module")
def fastapi_server():
    yield from served("ws_framework_apps:fastapi_app")


def _recorded(proc: EngineProc, key: str):
    return wait_until(lambda: httpx.get(proc.url + "/disconnects", timeout=20).json().get(key),
                      what=f"{key} to be recorded")


def test_starlette_echo_subprotocol_and_disconnect_code(starlette_server):
    with connect(ws_url(starlette_server, "/echo"), subprotocols=["chat"], open_timeout=20) as ws:
        assert ws.subprotocol == "chat"
        for text in ("one", "twö", "x" * 100000):
            ws.send(text)
            assert ws.recv(timeout=20) == f"echo: {text}"
        ws.close(code=4321, reason="client done")
    assert _recorded(starlette_server, "starlette-echo") == 4321


def test_starlette_lifespan_state_path_params_and_app_close(starlette_server):
    with connect(ws_url(starlette_server, "/info/alice?q=1"), open_timeout=20) as ws:
        assert json.loads(ws.recv(timeout=20)) == {"greeting": "hi", "name": "alice", "q": "1",
                                                   "url": f"ws://127.0.0.1:{starlette_server.port}/info/alice?q=1"}
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=20)
    assert info.value.rcvd.code == 4001 and info.value.rcvd.reason == "done"


def test_starlette_bytes_and_endpoint_class(starlette_server):
    with connect(ws_url(starlette_server, "/bytes"), open_timeout=20) as ws:
        ws.send(b"\x01\x02\x03")
        assert ws.recv(timeout=20) == b"\x03\x02\x01"
    with connect(ws_url(starlette_server, "/counter"), open_timeout=20) as ws:
        for add, total in ((2, 2), (5, 7)):
            ws.send(json.dumps({"add": add}))
            assert json.loads(ws.recv(timeout=20)) == {"count": total}
    assert _recorded(starlette_server, "starlette-endpoint") == 1000


def test_starlette_close_before_accept_is_403(starlette_server):
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(starlette_server, "/deny"), open_timeout=20)
    assert info.value.response.status_code == 403


def test_starlette_denial_response(starlette_server):
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(starlette_server, "/denial-response"), open_timeout=20)
    assert info.value.response.status_code == 418
    assert info.value.response.body == b"teapot says no"


def test_starlette_unknown_route_is_403(starlette_server):
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(starlette_server, "/nowhere"), open_timeout=20)
    assert info.value.response.status_code == 403


def test_uncaught_websocketdisconnect_is_not_an_error(starlette_server):
    with connect(ws_url(starlette_server, "/uncaught"), open_timeout=20) as ws:
        ws.send("hi")
    # A client that leaves is ordinary: no error line, no traceback.
    with connect(ws_url(starlette_server, "/echo"), open_timeout=20) as ws:  # the worker serves on
        ws.send("after")
        assert ws.recv(timeout=20) == "echo: after"
    log = starlette_server.log_text()
    assert "Exception in ASGI application" not in log and "Traceback" not in log


def test_fastapi_route_with_dependency_and_disconnect(fastapi_server):
    with connect(ws_url(fastapi_server, "/items/7/ws?token=secret"), open_timeout=20) as ws:
        ws.send(json.dumps({"a": 1}))
        assert json.loads(ws.recv(timeout=20)) == {"item_id": 7, "token": "secret", "data": {"a": 1}}
        ws.close(code=1001, reason="bye")
    assert _recorded(fastapi_server, "fastapi-items") == {"code": 1001, "reason": "bye"}


def test_fastapi_dependency_refusal_is_403(fastapi_server):
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(fastapi_server, "/items/7/ws?token=wrong"), open_timeout=20)
    assert info.value.response.status_code == 403


def test_fastapi_validation_error_is_403(fastapi_server):
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(fastapi_server, "/items/not-a-number/ws?token=secret"), open_timeout=20)
    assert info.value.response.status_code == 403


def test_fastapi_handler_exception_closes_with_1011(fastapi_server):
    with connect(ws_url(fastapi_server, "/boom"), open_timeout=20) as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=20)
    assert info.value.rcvd.code == 1011
    wait_until(lambda: "fastapi handler failed" in fastapi_server.log_text(), what="the traceback in the log")


def test_normal_close_from_the_client_is_ok(fastapi_server):
    with connect(ws_url(fastapi_server, "/items/1/ws?token=secret"), open_timeout=20) as ws:
        ws.send(json.dumps(1))
        ws.recv(timeout=20)
    with pytest.raises(ConnectionClosedOK):
        ws.recv(timeout=1)


# ---------------------------------------------------------------- Django Channels

@pytest.fixture(scope="module")
def channels_server():
    yield from served("ws_channels_app:application")


def _channels_recorded(proc: EngineProc, key: str):
    return wait_until(lambda: httpx.get(proc.url + "/recorded", timeout=20).json().get(key),
                      what=f"{key} to be recorded")


def test_channels_sync_consumer(channels_server):
    with connect(ws_url(channels_server, "/ws/echo"), subprotocols=["v1"], open_timeout=20) as ws:
        assert ws.subprotocol == "v1"
        ws.send("hi")
        assert ws.recv(timeout=20) == "sync echo: hi"
        ws.send(b"\x01\x02")
        assert ws.recv(timeout=20) == b"\x02\x01"
        ws.close(code=4100)
    assert _channels_recorded(channels_server, "echo") == 4100


def test_channels_async_json_consumer_with_a_group(channels_server):
    url = ws_url(channels_server, "/ws/room/lobby")
    with connect(url, open_timeout=20) as alice, connect(url, open_timeout=20) as bob:
        alice.send(json.dumps({"text": "hello room"}))
        for ws in (alice, bob):  # the group reaches both members
            assert json.loads(ws.recv(timeout=20)) == {"room": "lobby", "text": "hello room"}
    assert _channels_recorded(channels_server, "room-lobby") == 1000


def test_channels_close_in_connect_is_403(channels_server):
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(channels_server, "/ws/room/forbidden"), open_timeout=20)
    assert info.value.response.status_code == 403
