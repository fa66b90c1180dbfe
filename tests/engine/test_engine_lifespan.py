"""ASGI lifespan: auto/on/off, startup failure with the app's own message, Django under auto, the
messages an app receives in turn."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import uvloop

from corral.engine.lifespan import Lifespan
from engine_util import EngineProc, exchange, parse_responses


def _get(proc, path: bytes) -> bytes:
    (resp,) = parse_responses(exchange(proc, b"GET " + path + b" HTTP/1.0\r\n\r\n"))
    assert resp.status == 200
    return resp.body


@pytest.mark.parametrize("mode, expected", [("auto", {"started_by": "lifespan"}),
                                            ("on", {"started_by": "lifespan"}),
                                            ("off", {})])
def test_lifespan_modes(make_server, mode, expected):
    proc = make_server(app="apps:lifespan_records", settings={"lifespan": mode})
    assert json.loads(_get(proc, b"/")) == expected


def test_startup_failure_stops_with_the_apps_message(make_server):
    proc = make_server(app="apps:lifespan_fails", expect_ready=False)
    assert proc.proc.wait(30) == 3
    assert "database unreachable: db.example:5432" in proc.log_text() + proc.proc.stdout.read()


def test_app_without_lifespan_support_is_served_under_auto(make_server):
    proc = make_server(app="apps:lifespan_raises")
    assert json.loads(_get(proc, b"/")) == {}
    assert "lifespan not supported" in proc.log_text()


def test_app_without_lifespan_support_fails_under_on(make_server):
    proc = make_server(app="apps:lifespan_raises", settings={"lifespan": "on"}, expect_ready=False)
    assert proc.proc.wait(30) == 3
    assert "this app does not do lifespan" in proc.log_text()


def test_lifespan_shutdown_runs_on_graceful_stop(make_server):
    proc = make_server(app="frameworks:starlette_app")
    assert httpx.get(proc.url + "/").status_code == 200
    proc.stop()
    assert "starlette lifespan: shutdown" in proc.log_text()


def test_django_works_under_lifespan_auto(make_server):
    proc = make_server(app="django_app:application")
    r = httpx.get(proc.url + "/hello")
    assert r.status_code == 200 and r.text == "hello from django"
    r = httpx.post(proc.url + "/echo?q=z", content=b"x" * 100_000)
    assert r.status_code == 200
    assert r.json() == {"method": "POST", "length": 100_000, "path": "/echo", "query": "z"}
    r = httpx.get(proc.url + "/missing")
    assert r.status_code == 404


def test_the_app_receives_startup_then_shutdown_and_a_further_receive_waits_until_cancelled():
    seen: list[str] = []

    async def app(scope, receive, send):
        assert scope["type"] == "lifespan"
        while True:
            try:
                message = await receive()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})

    async def main() -> list[str]:
        lifespan = Lifespan(app, "on", {})
        await lifespan.startup()
        assert lifespan.started and seen == ["lifespan.startup"]
        for _ in range(10):  # the app waits for the next message while serving
            await asyncio.sleep(0)
        assert seen == ["lifespan.startup"]
        await asyncio.wait_for(lifespan.shutdown(timeout=5), 10)
        return seen

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == ["lifespan.startup", "lifespan.shutdown", "cancelled"]
