"""Real Starlette and FastAPI apps end to end: streaming, file downloads, uploads, is_disconnected()."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from engine_util import served, wait_until


@pytest.fixture(scope="module")
def starlette_server():
    yield from served("frameworks:starlette_app")


@pytest.fixture(scope="module")
def fastapi_server():
    yield from served("frameworks:fastapi_app")


def test_starlette_lifespan_state_and_plain_response(starlette_server):
    r = httpx.get(starlette_server.url + "/")
    assert r.status_code == 200 and r.text == "hi from starlette"


def test_starlette_streaming_response(starlette_server):
    with httpx.stream("GET", starlette_server.url + "/stream") as r:
        assert r.headers["transfer-encoding"] == "chunked"
        lines = list(r.iter_lines())
    assert lines == [f"line {i}" for i in range(5)]


def test_starlette_file_download(starlette_server):
    r = httpx.get(starlette_server.url + "/download")
    assert r.status_code == 200
    expected = bytes(range(256)) * 4096 * 3
    assert r.headers["content-length"] == str(len(expected))
    assert r.content == expected
    assert 'filename="data.bin"' in r.headers["content-disposition"]
    head = httpx.head(starlette_server.url + "/download")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(expected))
    assert head.content == b""
    ranged = httpx.get(starlette_server.url + "/download", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == expected[10:20]


def test_starlette_large_streamed_upload(starlette_server):
    body = os.urandom(20 * 1024 * 1024)
    r = httpx.post(starlette_server.url + "/upload", content=body, timeout=60)
    assert r.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_starlette_multipart_upload(starlette_server):
    data = os.urandom(3 * 1024 * 1024)
    r = httpx.post(starlette_server.url + "/form", files={"file": ("f.bin", data)}, data={"field": "v"},
                   timeout=60)
    assert r.json() == {"name": "f.bin", "size": len(data), "field": "v"}


def test_starlette_request_is_disconnected(starlette_server):
    with starlette_server.connect() as sock:
        sock.sendall(b"GET /wait-disconnect?id=d1 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: httpx.get(starlette_server.url + "/disconnects?id=d1").json() == "waiting",
                   what="handler to start")
    wait_until(lambda: httpx.get(starlette_server.url + "/disconnects?id=d1").json() == "disconnected",
               what="is_disconnected() to become true")


def test_fastapi_json_routes(fastapi_server):
    r = httpx.get(fastapi_server.url + "/items/42", params={"q": "x y"})
    assert r.json() == {"item_id": 42, "q": "x y"}
    r = httpx.post(fastapi_server.url + "/items", json={"a": [1, 2]})
    assert r.json() == {"received": {"a": [1, 2]}}
    r = httpx.get(fastapi_server.url + "/items/notanint")
    assert r.status_code == 422
    assert httpx.get(fastapi_server.url + "/sync").json() == {"sync": True}


def test_fastapi_upload_and_stream(fastapi_server):
    data = os.urandom(5 * 1024 * 1024)
    r = httpx.post(fastapi_server.url + "/files", files={"file": ("x.bin", data)}, timeout=60)
    assert r.json() == {"filename": "x.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    r = httpx.get(fastapi_server.url + "/stream")
    assert r.text == "chunk-0\nchunk-1\nchunk-2\n"


def test_many_sequential_requests_on_one_client(fastapi_server):
    with httpx.Client(base_url=fastapi_server.url) as client:
        for i in range(200):
            assert client.get(f"/items/{i}").json()["item_id"] == i
