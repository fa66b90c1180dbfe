"""Fixtures for the engine tests: engines in subprocesses, cleaned up even on failure."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from engine_util import EngineProc


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
    procs: list[EngineProc] = []

    def start(**kwargs: Any) -> EngineProc:
        proc = EngineProc(**kwargs)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.cleanup()
