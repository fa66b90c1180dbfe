"""Fixtures for the engine tests: engines in subprocesses, cleaned up even on failure."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from engine_util import EngineProc, started_engines
from fake_transport import WireFactory


@pytest.fixture(scope="module")
def server() -> Iterator[EngineProc]:
    """An engine with default settings serving tests/engine/apps.py:app (shared by a module)."""
    proc = EngineProc()
    try:
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture
def make_server() -> Iterator[Callable[..., EngineProc]]:
    """Start engines with custom settings; all are stopped at the end of the test."""
    with started_engines(EngineProc) as start:
        yield start


@pytest.fixture
def wire() -> Iterator[WireFactory]:
    """In-process connections to the engine's HttpProtocol (tests/engine/fake_transport.py)."""
    with WireFactory() as factory:
        yield factory
