"""ASGI lifespan: auto/on/off, startup failure with the app's own message, Django under auto."""

from __future__ import annotations

import json

import httpx
import pytest

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
