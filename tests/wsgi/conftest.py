"""Fixtures for the WSGI tests: engines serving WSGI apps in subprocesses, always cleaned up."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from engine.engine_util import started_engines
from wsgi_util import MODE_IDS, MODES, WSGIProc


@pytest.fixture(scope="module", params=MODES, ids=MODE_IDS)
def mode(request: pytest.FixtureRequest) -> int:
    """The execution mode: threads 0 (inline) or 4 (thread pool)."""
    return request.param


@pytest.fixture(scope="module")
def server(mode: int) -> Iterator[WSGIProc]:
    """tests/wsgi/wsgi_apps.py:app in the module's mode, shared by the module's tests."""
    proc = WSGIProc("wsgi_apps:app", threads=mode, settings={"max_body_size": None})
    try:
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture
def make_server() -> Iterator[Callable[..., WSGIProc]]:
    """Start engines with custom settings; all are stopped at the end of the test."""
    def wsgi_proc(app: str = "wsgi_apps:app", **kwargs: Any) -> WSGIProc:
        return WSGIProc(app, **kwargs)

    with started_engines(wsgi_proc) as start:
        yield start
