"""A FastAPI/Starlette app (apps/fastapireal.py) on corral and on uvicorn: the same answers.

Beyond the comparison: a Server-Sent-Events client that leaves mid-stream is
an ordinary event (corral logs no ERROR and keeps serving), and
BackgroundTasks run after the response went out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from realapps_util import APPS, Answer, CorralServer, Diff, UvicornServer, reload_under_load
from util import wait_until

APP = "fastapireal:app"
TOKEN = {"X-Token": "s3cret-token"}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fastapi")


def _out(tmp: Path, name: str) -> Path:
    path = tmp / f"out-{name}"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def corral(tmp: Path) -> Iterator[CorralServer]:
    with CorralServer(tmp, APP, app_dir=APPS, env={"REALAPPS_FASTAPI_OUT": str(_out(tmp, "corral"))}) as server:
        yield server


@pytest.fixture(scope="module")
def uvicorn(tmp: Path) -> Iterator[UvicornServer]:
    with UvicornServer(tmp, APP, app_dir=APPS, env={"REALAPPS_FASTAPI_OUT": str(_out(tmp, "uvicorn"))}) as server:
        yield server


@pytest.fixture(scope="module")
def diff(corral: CorralServer, uvicorn: UvicornServer) -> Iterator[Diff]:
    d = Diff(corral, uvicorn)
    yield d
    print(f"\n[realapps] fastapi: {d.compared} requests compared with uvicorn")


def test_json_path_and_query(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/items/1?q=find%20me&limit=5")
    assert ours.json() == {"item": {"id": 1, "name": "hammer", "price": 9.5, "tags": ["tools"]},
                           "q": "find me", "limit": 5}
    assert diff.same("GET", "/items/999")[0].status_code == 404
    diff.same("GET", "/")
    diff.same("GET", "/text")
    diff.same("GET", "/nowhere")
    diff.same("DELETE", "/items/1")  # 405 with an Allow header
    diff.same("GET", "/openapi.json")
    diff.same("GET", "/docs")


@pytest.mark.parametrize("path", ["/items/abc", "/items/1?limit=0", "/items/1?limit=many"])
def test_validation_422(diff: Diff, path: str) -> None:
    ours, _ = diff.same("GET", path)
    assert ours.status_code == 422
    assert ours.json()["detail"][0]["type"] in {"int_parsing", "greater_than_equal"}


def test_json_body_and_dependency(diff: Diff) -> None:
    body = {"name": "chisel", "price": 4.25, "tags": ["wood", "tools"]}
    ours, _ = diff.same("POST", "/items", json=body, headers=TOKEN)
    assert ours.status_code == 201
    assert ours.json() == {**body, "id": 106}
    # The dependency answers before the body is validated: 401 with its challenge.
    ours, _ = diff.same("POST", "/items", json=body)
    assert ours.status_code == 401
    assert ours.headers["www-authenticate"] == "Token"
    ours, _ = diff.same("POST", "/items", json={"name": "", "price": -1}, headers=TOKEN)
    assert ours.status_code == 422
    assert {e["loc"][-1] for e in ours.json()["detail"]} == {"name", "price"}
    ours, _ = diff.same("POST", "/items", content=b"{not json", headers={**TOKEN, "Content-Type": "application/json"})
    assert ours.status_code == 422
    assert diff.same("GET", "/me", headers=TOKEN)[0].json() == {"user": "tester"}
    assert diff.same("GET", "/me", headers={"X-Token": "wrong"})[0].status_code == 401


def test_form_post(diff: Diff) -> None:
    ours, _ = diff.same("POST", "/form", data={"name": "Zoë", "count": "3", "extras": ["a", "b c"]})
    assert ours.json() == {"name": "Zoë", "count": 3, "extras": ["a", "b c"]}
    ours, _ = diff.same("POST", "/form", data={"name": "x", "count": "three"})
    assert ours.status_code == 422


def test_file_upload(diff: Diff) -> None:
    data = bytes(range(256)) * 2000  # 512 KB: more than one read from the socket
    # A fixed boundary, so that the two requests are byte-identical.
    ours, _ = diff.same("POST", "/upload", files={"file": ("blob.bin", data, "application/octet-stream")},
                        data={"note": "ünïcode note"},
                        headers={"Content-Type": "multipart/form-data; boundary=realapps-fastapi-0001"})
    answer = ours.json()
    assert answer["size"] == len(data)
    assert answer["filename"] == "blob.bin" and answer["note"] == "ünïcode note"
    ours, _ = diff.same("POST", "/upload", data={"note": "no file"})
    assert ours.status_code == 422


def test_streaming_response(diff: Diff) -> None:
    ours, theirs = diff.same("GET", "/stream?lines=200")
    assert [json.loads(line)["line"] for line in ours.text.splitlines()] == list(range(200))
    # Streamed, not buffered: both frame it with chunked encoding (no Content-Length known up front).
    assert ours.headers.get("transfer-encoding") == theirs.headers.get("transfer-encoding") == "chunked"


def _read_events(url: str, count: int) -> Answer:
    """Open the SSE stream, read ``count`` events, and leave (close the connection mid-stream)."""
    events: list[str] = []
    with httpx.Client(timeout=60) as client:
        with client.stream("GET", url + "/events") as response:
            buffer = ""
            for text in response.iter_text():
                buffer += text
                while "\n\n" in buffer and len(events) < count:
                    event, buffer = buffer.split("\n\n", 1)
                    events.append(event + "\n\n")
                if len(events) >= count:
                    break
            answer = Answer(response.status_code, list(response.headers.multi_items()),
                            "".join(events).encode())
    return answer  # leaving the with-blocks closed the connection while the server was still sending


def _streams_closed(server: CorralServer | UvicornServer) -> bool:
    """Every event stream the app started has ended (its generator's ``finally`` ran)."""
    state = httpx.get(server.url + "/events/state", timeout=60).json()
    return state["started"] >= 1 and state["closed"] == state["started"]


def test_sse_client_leaves_mid_stream(diff: Diff) -> None:
    ours = _read_events(diff.ours.url, 5)
    theirs = _read_events(diff.theirs.url, 5)
    diff.compare("GET /events (first 5 events, then the client leaves)", ours, theirs)
    assert ours.body.count(b"event: tick\n") == 5
    for server in (diff.ours, diff.theirs):
        # The app's generator ends once the server has seen the client go: the departure reached the app.
        wait_until(lambda: _streams_closed(server), 60, 0.05,
                   f"{server.kind}: the event stream closed after the client left")
        assert httpx.get(server.url + "/items/1", timeout=60).status_code == 200  # still serving
    # uvicorn logs nothing for a client that leaves; neither may corral (issue 12, defect 4).
    assert "Traceback" not in diff.theirs.log()
    assert diff.ours.errors_logged() == []


def test_sse_many_clients_leave(diff: Diff) -> None:
    """Several departures in a row, some right after the first event: each is quiet, and service goes on."""
    logged = len(diff.ours.errors_logged())  # only this test's lines count here
    for count in (1, 2, 1, 3):
        assert _read_events(diff.ours.url, count).status == 200
    wait_until(lambda: _streams_closed(diff.ours), 60, 0.05, "every event stream closed")
    assert diff.same("GET", "/items/1")[0].status_code == 200
    assert diff.ours.errors_logged()[logged:] == []


def test_background_tasks(diff: Diff, tmp: Path) -> None:
    ours, _ = diff.same("POST", "/background/marker1")
    assert ours.status_code == 202 and ours.json() == {"queued": "marker1"}
    for name in ("corral", "uvicorn"):
        # The response came while the task waits for this go-ahead: it runs after the response, not before.
        marker = _out(tmp, name) / "marker1"
        assert not marker.exists()
        (_out(tmp, name) / "marker1.go").touch()
        wait_until(marker.exists, 60, 0.05, f"{name}: the background task's file")
        assert marker.read_text() == "written after the response for marker1"
    assert diff.same("POST", "/background/bad%20name")[0].status_code == 400
    assert not (_out(tmp, "corral") / "bad name").exists()


def test_reload_under_load(diff: Diff) -> None:
    counts = reload_under_load(diff.ours, "/items/1")
    print(f"\n[realapps] fastapi reload under load: {counts}")
    assert counts["failed"] == 0, counts
    assert counts["ok"] > 0
    # After the reload the app answers as before.
    assert diff.same("GET", "/items/1?q=after")[0].status_code == 200
