"""A WSGI app sees a thread with no running event loop in every mode (issue 12, defect 1).

Inline mode runs the app on the event loop's thread. Under gunicorn's sync
worker, which inline mode is like, the app's thread has no running loop, and
real apps rely on it: Django's ORM, ``asyncio.run()`` in a view, Flask's
``async def`` views. These requests failed with 500 before the fix.
"""

from __future__ import annotations

import json

import pytest

from wsgi_util import MODE_IDS, MODES, request, wait_until

APP = "wsgi_loopless_apps:app"


@pytest.fixture(scope="module", params=MODES, ids=MODE_IDS)
def loopless(request: pytest.FixtureRequest):
    from wsgi_util import WSGIProc

    proc = WSGIProc(APP, threads=request.param)
    try:
        yield proc
    finally:
        proc.cleanup()


@pytest.mark.parametrize("path, expected", [
    ("/loop", {"loop": "none"}),
    ("/orm", {"sum": 2}),
    ("/asyncio-run", {"answer": 42}),
    ("/async-view", {"answer": 42}),
])
def test_app_call_has_no_running_loop(loopless, path, expected):
    resp = request(loopless, "GET", path)
    assert resp.status == 200, resp.body
    assert resp.json() == expected


def test_streamed_body_has_no_running_loop(loopless):
    resp = request(loopless, "GET", "/stream")
    assert resp.status == 200, resp.body
    lines = [json.loads(line) for line in resp.body.splitlines()]
    assert lines == [{"loop": "none"}, {"answer": 42}, {"sum": 2}]


def test_close_has_no_running_loop(loopless):
    for _ in range(2):
        assert request(loopless, "GET", "/close").body == b"closing body\n"
    closed = request(loopless, "GET", "/closed").json()
    assert closed == ["none 42 2", "none 42 2"]


def test_worker_still_serves_after_nested_loops(loopless):
    """The engine's own loop carries on after the app ran loops of its own on its thread."""
    for path in ("/asyncio-run", "/async-view", "/loop"):
        assert request(loopless, "GET", path).status == 200
    # ... and its periodic work (the stats file's refresh) still runs.
    wait_until(lambda: loopless.stats()["requests_total"] >= 3, what="stats counting the requests")
