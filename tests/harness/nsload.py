"""A load generator running inside a test namespace, read from outside through its files.

Both the package tests (the demo app over its unix socket) and the fleet test (HAProxy's
frontend) run their generator script inside a ``SystemdNamespace`` and count what it saw:
the script is started with a stop file and a result file as its last two arguments, writes
its running counts (JSON, at least ``ok`` and ``failed``) to ``<result>.progress`` as it
goes, and its final counts to ``<result>`` once the stop file appears.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.systemd import SystemdNamespace
from util import wait_until


class NamespaceLoad:
    """One generator script run inside ``ns`` until ``stop()``; ``what`` names its target."""

    def __init__(self, ns: SystemdNamespace, argv: Sequence[str], what: str) -> None:
        work = ns.workdir
        self.ns, self.what = ns, what
        self.stop_file, self.result = work / "load.stop", work / "load.json"
        self.progress = Path(str(self.result) + ".progress")
        self.proc = ns.popen([*argv, str(self.stop_file), str(self.result)])
        self.wait_for_more(50)

    def stats(self) -> dict[str, Any]:
        """The final counts once stopped, else the latest progress (zeros before the first)."""
        path = self.result if self.result.exists() else self.progress
        return json.loads(path.read_text()) if path.exists() else {"ok": 0, "failed": 0}

    def stats_text(self) -> str:
        s = self.stats()
        return ", ".join(f"{k} {s.get(k, 0)}" for k in ("ok", "failed", "connect_errors", "retried_stale_keepalive"))

    def wait_for_more(self, count: int, timeout: float = 90) -> None:
        target = self.stats()["ok"] + count
        wait_until(lambda: self.stats()["ok"] >= target, timeout=timeout,
                   what=f"{count} more requests answered {self.what} (load: {self.stats_text()})")

    def stop(self) -> dict[str, Any]:
        if not self.stop_file.exists():
            self.stop_file.touch()
            self.proc.wait(120)
        return self.stats()
