"""The zygote suites' shared fixture: a private copy of apps/ per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parent / "apps"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A private copy of the apps: the tests deploy into it (VERSION, FAIL_IMPORT) and the apps
    write next to themselves (lazy.log)."""
    target = tmp_path / "app"
    shutil.copytree(APPS, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target
