"""config standby: one extra worker, booted and warmed up but serving nothing, takes a lost or
recycled worker's slot at once, even for an app whose import takes seconds (docs/zygote.md).

The app (apps/zyapp.py) sleeps ZY_IMPORT_SLEEP seconds at import and answers with its pid; a
fresh worker needs at least that long to be ready, so a replacement that is ready sooner can only
be the standby.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from util import Corral, wait_until

IMPORT_SLEEP = 3.0


def standby_corral(tmp_path: Path, app_dir: Path, worker_start: str = "zygote", **config: Any) -> Corral:
    return Corral(tmp_path, "zyapp:app", app_dir, workers=2, worker_start=worker_start, standby=True,
                  env={**os.environ, "ZY_IMPORT_SLEEP": str(IMPORT_SLEEP)}, **config)


def the_standby(corral: Corral, generation: int = 1, timeout: float = 60) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        standbys = [w for w in corral.status_fast()["workers"] if w["state"] == "standby"]
        assert len(standbys) <= 1, standbys
        return standbys[0] if standbys and standbys[0]["generation"] == generation else None

    return wait_until(found, timeout, 0.05, f"a standby of generation {generation}")


def serving_pids(corral: Corral, requests: int) -> set[int]:
    pids = set()
    for _ in range(requests):
        status, body, _ = corral.get("/")
        assert status == 200, body
        pids.add(json.loads(body)["pid"])
    return pids


@pytest.mark.parametrize("worker_start", ["zygote", "exec"])
def test_the_standby_serves_nothing_then_takes_a_killed_workers_slot_at_once(tmp_path, app_dir, worker_start):
    with standby_corral(tmp_path, app_dir, worker_start) as corral:
        data = corral.wait_ready()
        standby = the_standby(corral)
        assert standby["slot"] == -1
        ready = {w["pid"] for w in data["workers"] if w["state"] == "ready"}
        assert standby["pid"] not in ready
        assert serving_pids(corral, 40) <= ready  # the standby takes no connection

        victim = next(w for w in data["workers"] if w["state"] == "ready" and w["slot"] == 0)
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        def taken() -> float | None:
            workers = corral.status_fast()["workers"]
            if any(w["pid"] == standby["pid"] and w["state"] == "ready" and w["slot"] == 0 for w in workers):
                return time.monotonic() - killed
            return None

        seconds = wait_until(taken, 30, 0.005, "the standby ready in the killed worker's slot")
        # A worker started now would need IMPORT_SLEEP seconds for its import alone.
        assert seconds < IMPORT_SLEEP / 2, seconds
        assert standby["pid"] in serving_pids(corral, 40)
        # Another standby boots behind it.
        after = the_standby(corral)
        assert after["pid"] not in (standby["pid"], victim["pid"])
        log = corral.log()
        assert f"worker {standby['id']} (pid {standby['pid']}), the standby, takes slot 0" in log


def test_a_recycle_hands_the_slot_to_the_standby(tmp_path, app_dir):
    with standby_corral(tmp_path, app_dir, max_requests=30, max_requests_jitter=0) as corral:
        corral.wait_ready()
        standby = the_standby(corral)
        start = time.monotonic()
        while time.monotonic() - start < 60 and not any(
                w["pid"] == standby["pid"] and w["state"] == "ready" for w in corral.status_fast()["workers"]):
            corral.get("/")
        workers = corral.status_fast()["workers"]
        promoted = [w for w in workers if w["pid"] == standby["pid"]]
        assert promoted and promoted[0]["state"] == "ready", workers
        assert "max_requests" in corral.log()


def test_a_reload_gives_the_new_generation_its_own_standby(tmp_path, app_dir):
    with standby_corral(tmp_path, app_dir) as corral:
        corral.wait_ready()
        old = the_standby(corral, generation=1)
        (app_dir / "VERSION").write_text("2")
        result = corral.reload()
        assert result.returncode == 0, result.stdout + result.stderr
        new = the_standby(corral, generation=2)
        assert new["pid"] != old["pid"]
        wait_until(lambda: old["pid"] not in {w["pid"] for w in corral.status_fast()["workers"]}, 60, 0.1,
                   "the old generation's standby gone")


def test_without_the_key_there_is_no_standby(tmp_path, app_dir):
    with Corral(tmp_path, "zyapp:app", app_dir, workers=2, worker_start="zygote") as corral:
        data = corral.wait_ready(exact=True)
        assert all(w["state"] == "ready" and w["slot"] >= 0 for w in data["workers"])
