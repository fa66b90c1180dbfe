"""worker_start: zygote: workers forked from a per-generation zygote (corral.supervisor.zygote,
corral.worker.zygote), with `corral run` as a plain child process.

The app (apps/zyapp.py) answers with the pid that served, its parent, the pid that imported
the app module (with preload: the zygote's), the first random number the worker drew and
its VERSION file; /leak keeps private memory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from util import Corral, Load, wait_until


def zcorral(tmp_path: Path, app_dir: Path, workers: int = 2, preload: bool = True, app: str = "zyapp:app",
            **config: Any) -> Corral:
    return Corral(tmp_path, app, app_dir, workers=workers, worker_start="zygote", preload=preload, **config)


def failed_start_log(corral: Corral, timeout: float = 60) -> str:
    """Start ``corral``, which must exit non-zero by itself; returns its log."""
    corral.start(wait=False)
    try:
        assert corral.proc is not None
        code = corral.proc.wait(timeout)
        log = corral.log()
        assert code != 0, log
        return log
    finally:
        corral.stop()


def refused_reload(corral: Corral, serving: set[int], message: str) -> dict[str, Any]:
    """``corral reload``, which must fail saying ``message`` while generation 1's workers (``serving``)
    keep serving; returns the status."""
    result = corral.reload()
    assert result.returncode != 0, result.stdout
    assert message in result.stderr + result.stdout
    status = corral.status()
    assert status["generation"] == 1 and {w["pid"] for w in corral.ready_workers()} == serving
    return status


def answers_from_every_worker(corral: Corral, pids: set[int], timeout: float = 60) -> dict[int, dict[str, Any]]:
    """GET / on fresh connections until each of ``pids`` has answered at least once."""
    seen: dict[int, dict[str, Any]] = {}

    def all_seen() -> bool:
        status, body, _ = corral.get("/")
        assert status == 200, body
        import json

        data = json.loads(body)
        seen.setdefault(data["pid"], data)
        return pids <= set(seen)

    wait_until(all_seen, timeout, 0.0, f"an answer from each of {sorted(pids)}")
    return seen


def the_zygote(corral: Corral, generation: int) -> dict[str, Any]:
    zygotes = [z for z in corral.status()["zygotes"] if z["generation"] == generation]
    assert len(zygotes) == 1, corral.status()["zygotes"]
    return zygotes[0]


def forked_by_a_zygote(pid: int, supervisor: int) -> None:
    """The worker is a fork of a zygote (its command line is the zygote's) re-parented to the supervisor."""
    process = psutil.Process(pid)
    assert "--zygote" in process.cmdline(), process.cmdline()
    assert process.ppid() == supervisor


def test_a_preloaded_zygote_serves_and_its_workers_differ_in_random_state(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=3) as corral:
        data = corral.wait_ready()
        zygote = the_zygote(corral, 1)
        assert zygote["state"] == "ready" and zygote["preloaded"] and zygote["forks"] == 3
        pids = {w["pid"] for w in data["workers"]}
        seen = answers_from_every_worker(corral, pids)
        assert corral.proc is not None
        for pid, answer in seen.items():
            forked_by_a_zygote(pid, corral.proc.pid)
            assert answer["imported_in"] == zygote["pid"], "preload: the app was imported by the zygote"
            assert answer["ppid"] == corral.proc.pid
        firsts = [answer["first"] for answer in seen.values()]
        assert None not in firsts and len(set(firsts)) == 3, f"workers share their random state: {firsts}"
        text = corral.status(json_output=False)
        assert f"zygote of generation 1: pid {zygote['pid']}, ready, app preloaded, 3 forks" in text, text
        # The zygote is no worker: it never serves, and the supervisor still never imports the app.
        assert zygote["pid"] not in pids
        supervisor = corral.status()["supervisor"]
        assert "zyapp" not in supervisor["modules"]
        # The workers' parent is a child subreaper without ctypes (about 0.3 MiB): the command
        # line's image of `corral run` made it one before it re-executed as the supervisor.
        assert "ctypes" not in supervisor["modules"]
        # Nor the zygote's process code and its tempfile (with shutil, bz2 and lzma, about 0.4 MiB):
        # the supervisor speaks to it through corral.worker.zygote_protocol only.
        assert {"corral.worker.zygote", "tempfile"}.isdisjoint(supervisor["modules"]), supervisor["modules"]
        assert supervisor["rss"] < 25 << 20, f"supervisor RSS {supervisor['rss'] / 2**20:.1f} MiB"


def test_forked_workers_log_as_workers_under_their_own_pid(tmp_path, app_dir):
    # Their log handlers were built by the zygote (KnownConfig.logging), before any fork.
    with zcorral(tmp_path, app_dir, workers=2, log_level="debug") as corral:
        pids = {w["pid"] for w in corral.wait_ready()["workers"]}
        zygote = the_zygote(corral, 1)["pid"]
        log = corral.log()
        for pid in pids:
            assert f"corral-worker[{pid}]: passed the gate" in log, log
        assert f"corral-worker[{zygote}]" not in log, log


def test_without_preload_workers_import_the_app_themselves(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=2, preload=False) as corral:
        data = corral.wait_ready()
        zygote = the_zygote(corral, 1)
        assert zygote["state"] == "ready" and not zygote["preloaded"]
        seen = answers_from_every_worker(corral, {w["pid"] for w in data["workers"]})
        assert all(answer["imported_in"] == pid for pid, answer in seen.items())


def test_exec_stays_the_default_and_has_no_zygote(tmp_path, app_dir):
    with Corral(tmp_path, "zyapp:app", app_dir, workers=1) as corral:
        data = corral.wait_ready()
        assert data["zygotes"] == []
        assert "--zygote" not in psutil.Process(data["workers"][0]["pid"]).cmdline()


def test_a_killed_worker_is_replaced_by_a_fork_of_the_zygote(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=2) as corral:
        data = corral.wait_ready()
        victim = data["workers"][0]
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> dict[str, Any] | None:
            ready = corral.ready_workers()
            new = [w for w in ready if w["slot"] == victim["slot"] and w["pid"] != victim["pid"]]
            return new[0] if new else None

        new = wait_until(replaced, 30, 0.05, "a replacement in the killed worker's slot")
        assert corral.proc is not None
        forked_by_a_zygote(new["pid"], corral.proc.pid)
        assert the_zygote(corral, 1)["forks"] == 3
        assert "was killed by SIGKILL" in corral.log()


def test_a_crashed_zygote_is_restarted_while_its_workers_keep_serving(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=2) as corral:
        data = corral.wait_ready()
        workers = {w["pid"] for w in data["workers"]}
        old = the_zygote(corral, 1)
        with Load(corral.port, clients=4) as load:
            load.wait_for_more(50)
            os.kill(old["pid"], signal.SIGKILL)

            def restarted() -> dict[str, Any] | None:
                zygote = the_zygote(corral, 1)
                return zygote if zygote["pid"] not in (None, old["pid"]) and zygote["state"] == "ready" else None

            new = wait_until(restarted, 30, 0.05, "a new zygote for generation 1")
            load.wait_for_more(50)
        assert load.failed() == 0, load.failures()[:5]
        assert {w["pid"] for w in corral.ready_workers()} == workers, "the workers were not touched"
        assert "zygote of generation 1" in corral.log() and "was killed by SIGKILL" in corral.log()
        # The new zygote forks the next replacement.
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len({w["pid"] for w in corral.ready_workers()} - workers) == 1, 30, 0.05,
                   "a replacement worker")
        assert the_zygote(corral, 1)["pid"] == new["pid"] and the_zygote(corral, 1)["forks"] == 1


def test_a_zygote_that_cannot_import_the_app_fails_the_reload_and_the_old_code_serves(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=2) as corral:
        data = corral.wait_ready()
        old = {w["pid"] for w in data["workers"]}
        (app_dir / "FAIL_IMPORT").write_text("")
        (app_dir / "VERSION").write_text("2")
        status = refused_reload(corral, old, "deploy is broken (FAIL_IMPORT exists)")
        assert status["last_reload"]["ok"] is False
        code, body, _ = corral.get("/")
        assert code == 200 and b'"version": "1"' in body
        wait_until(lambda: [z["generation"] for z in corral.status()["zygotes"]] == [1], 30, 0.1,
                   "the failed generation's zygote to go")
        # Fixed: the next reload builds a new zygote from the new code.
        (app_dir / "FAIL_IMPORT").unlink()
        result = corral.reload()
        assert result.returncode == 0, result.stderr
        wait_until(lambda: [z["generation"] for z in corral.status()["zygotes"]] == [3], 30, 0.1,
                   "only the new generation's zygote")
        code, body, _ = corral.get("/")
        assert code == 200 and b'"version": "2"' in body


def _zygote_states(corral: Corral) -> dict[int, str] | None:
    """Each zygote's state by generation, straight from the control socket (None: not listening yet)."""
    from corral.supervisor.control import ControlError

    try:
        return {z["generation"]: z["state"] for z in corral.status_fast()["zygotes"]}
    except (ControlError, OSError):
        return None


def test_the_supervisor_answers_while_its_zygote_imports_a_slow_app(tmp_path, app_dir):
    # The zygote imports for 6 s: the supervisor's loop (the control socket, heartbeats,
    # systemd's watchdog) must go on meanwhile, and say what it waits for.
    corral = zcorral(tmp_path, app_dir, workers=2, env={**os.environ, "ZY_IMPORT_SLEEP": "6"})
    with corral.start(wait=False):
        booting = wait_until(lambda: (_zygote_states(corral) or {}).get(1) == "booting", 30, 0.05,
                             "`corral status` to answer while the zygote imports")
        assert booting
        data = corral.status_fast()
        assert data["phase"] == "starting" and data["workers"] == []  # nothing forked before it is ready
        data = corral.wait_ready()
        zygote = the_zygote(corral, 1)
        assert zygote["state"] == "ready" and zygote["forks"] == 2
        answers_from_every_worker(corral, {w["pid"] for w in data["workers"]})
        assert "zygote of generation 1" in corral.log() and "ready in " in corral.log()


def test_a_zygote_whose_import_hangs_fails_the_reload_at_boot_timeout(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=2, boot_timeout=4, reload_timeout=60) as corral:
        old = {w["pid"] for w in corral.wait_ready()["workers"]}
        (app_dir / "IMPORT_SLEEP").write_text("120")
        (app_dir / "VERSION").write_text("2")
        reload = corral.reload_async()
        # While the new zygote hangs, the supervisor answers, and the old code serves.
        wait_until(lambda: (_zygote_states(corral) or {}).get(2) == "booting", 30, 0.05,
                   "the new generation's zygote importing")
        code, body, _ = corral.get("/")
        assert code == 200 and b'"version": "1"' in body
        out, err = reload.communicate(timeout=60)
        assert reload.returncode != 0, out
        assert "not ready after boot_timeout=4s" in out + err
        status = corral.status()
        assert status["generation"] == 1 and {w["pid"] for w in corral.ready_workers()} == old
        assert status["last_reload"]["ok"] is False
        wait_until(lambda: list((_zygote_states(corral) or {1: "", 2: ""})) == [1], 30, 0.1,
                   "the hung zygote gone")
        code, body, _ = corral.get("/")
        assert code == 200 and b'"version": "1"' in body


def test_an_app_that_starts_a_thread_at_import_cannot_be_preloaded(tmp_path, app_dir):
    log = failed_start_log(zcorral(tmp_path, app_dir, workers=2, app="threadapp:app"))
    assert "preload refused: importing threadapp:app started 1 thread (app-poller)" in log, log
    assert "set preload: false" in log
    # Without preload the same app is fine: each worker starts its own thread after the fork.
    (tmp_path / "ok").mkdir()
    with zcorral(tmp_path / "ok", app_dir, workers=1, preload=False, app="threadapp:app") as corral:
        assert corral.wait_ready()["workers_ready"] == 1


@pytest.mark.parametrize("metric", ["uss", "pss"])
def test_a_uss_or_pss_policy_recycles_a_leaking_forked_worker(tmp_path, app_dir, metric):
    # Forked workers share the zygote's pages: their RSS counts them in full, their USS not at all,
    # their PSS by share. A limit between those recycles only the worker that really grew.
    with zcorral(tmp_path, app_dir, workers=2, max_memory="48MiB", memory_metric=metric, policy_interval=0.2,
                 policy_breaches=2) as corral:
        data = corral.wait_ready()
        before = {w["pid"]: w for w in data["workers"]}
        code, body, _ = corral.get("/leak?mib=64")
        assert code == 200
        import json

        leaker = json.loads(body)["pid"]
        wait_until(lambda: "recycling worker" in corral.log(), 30, 0.1, "a memory recycle")
        log = corral.log()
        assert f"(pid {leaker}, slot" in log.split("recycling worker", 1)[1].splitlines()[0]
        assert f"{metric.upper()} " in log and "max_memory 48.0 MiB" in log
        wait_until(lambda: leaker not in {w["pid"] for w in corral.ready_workers()}
                   and len(corral.ready_workers()) == 2, 30, 0.1, "the leaker replaced")
        others = set(before) - {leaker}
        assert others <= {w["pid"] for w in corral.ready_workers()}, "a worker that did not leak was recycled"
        assert corral.proc is not None
        for w in corral.ready_workers():
            forked_by_a_zygote(w["pid"], corral.proc.pid)


def test_stop_takes_the_zygote_with_it(tmp_path, app_dir):
    corral = zcorral(tmp_path, app_dir, workers=1).start()
    zygote = the_zygote(corral, 1)["pid"]
    assert corral.stop() == 0
    assert not psutil.pid_exists(zygote) or psutil.Process(zygote).status() == psutil.STATUS_ZOMBIE
    assert "all workers stopped" in corral.log()


def test_check_accepts_the_keys(tmp_path, app_dir):
    from util import CORRAL

    config = tmp_path / "c.yaml"
    config.write_text(f"app: zyapp:app\napp_dir: {app_dir}\nworker_start: zygote\npreload: true\n")
    done = subprocess.run([CORRAL, "check", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    config.write_text(f"app: zyapp:app\napp_dir: {app_dir}\nworker_start: spawn\n")
    done = subprocess.run([CORRAL, "check", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "worker_start" in done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make sysdeps)")
def test_forked_workers_keep_their_own_accept_balance_cells(tmp_path, app_dir):
    # The balance table is shared memory the supervisor hands each worker with its cell number: a
    # fork that inherited the zygote's view instead of its own cell would leave one worker taking
    # most connections (or all of them pausing together).
    with zcorral(tmp_path, app_dir, workers=4) as corral:
        corral.wait_ready()
        out = subprocess.run(["wrk", "-t2", "-c256", "-d3s", f"http://127.0.0.1:{corral.port}/"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        workers = corral.status()["workers"]
        accepted = [w["connections_accepted"] for w in workers]
        assert sum(accepted) >= 256 and min(accepted) > 0, accepted
        assert max(accepted) <= 1.5 * sum(accepted) / len(accepted), accepted
        assert all("accept_paused" in w["stats"] for w in workers), "a worker runs no accept balancer"
