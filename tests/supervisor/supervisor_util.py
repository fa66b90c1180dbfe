"""Running `corral run` in tests: a config in tmp_path, a free port, a private control socket."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import util
from util import Load, wait_until

__all__ = ["APPS", "Corral", "Load", "since", "wait_for_port"]

APPS = Path(__file__).resolve().parent / "apps"


class Corral(util.Corral):
    """One supervisor under test serving an app from tests/supervisor/apps (``util.Corral``)."""

    def __init__(self, tmp_path: Path, app: str = "probe:app", workers: int = 2, **kwargs: Any) -> None:
        super().__init__(tmp_path, app, APPS, workers, **kwargs)


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    def connectable() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(connectable, timeout, 0.05, f"port {port}")


def since(start: float) -> float:
    return time.monotonic() - start
