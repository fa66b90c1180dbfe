"""The reload transaction without systemd: the gate (health-check probe, reload_timeout),
rollback, the rolling strategy, queued reloads and a bare SIGHUP.

`corral run` runs as a plain child process; `corral reload` talks to its control socket.
"""

from __future__ import annotations

import signal

from reload_util import Load, LocalCorral
from util import wait_until

HEALTH = {"path": "/health", "expect_status": 200, "timeout": 3}


def _pids(data: dict, generation: int | None = None) -> set[int]:
    return {w["pid"] for w in data["workers"] if generation is None or w["generation"] == generation}


def test_health_check_probe_reaches_the_new_worker_not_the_old_ones(tmp_path):
    # The old generation answers /health with 200; the new one with 503. A probe sent to the
    # shared socket would be answered by an old worker and pass; ours must fail.
    with LocalCorral(tmp_path, workers=2, health_check=HEALTH).start("h1") as corral:
        before = corral.status()
        with Load(corral.port, clients=4) as load:
            load.wait_for_more(100)
            corral.deploy("h2", health_status=503)
            proc = corral.reload()
            assert proc.returncode == 1
            assert "health check GET /health failed" in proc.stderr and "answered 503" in proc.stderr, proc.stderr
            data = corral.status()
            assert data["generation"] == 1 and _pids(data, 1) == _pids(before)
            assert not data["last_reload"]["ok"]
            # The failed generation's workers are being stopped (the reply does not wait for them).
            wait_until(lambda: _pids(corral.status()) == _pids(before), 30, 0.1, "the new workers gone")
            corral.deploy("h3", health_status=200)
            proc = corral.reload()
            assert proc.returncode == 0, proc.stderr
            load.wait_for_more(100)
        assert not load.failures(), load.failures()[:5]
        assert corral.status()["generation"] == 3


def test_a_generation_not_ready_within_reload_timeout_is_rolled_back(tmp_path):
    with LocalCorral(tmp_path, workers=2, reload_timeout=2).start("t1") as corral:
        before = corral.status()
        with Load(corral.port, clients=4) as load:
            load.wait_for_more(100)
            corral.deploy("t2", startup_delay=60)
            proc = corral.reload()
            assert proc.returncode == 1
            assert "not ready within reload_timeout=2s" in proc.stderr, proc.stderr
            load.wait_for_more(100)
            data = corral.status()
            assert data["generation"] == 1 and _pids(data, 1) == _pids(before)
            # The new workers were stopped.
            wait_until(lambda: _pids(corral.status()) == _pids(before), 30, 0.1, "the new workers gone")
        assert not load.failures(), load.failures()[:5]
        assert {r.version for r in load.done()} == {"t1"}


def test_rolling_reload_never_runs_more_than_one_extra_worker(tmp_path):
    # reload_rollback: partial is the memory-bound mode (full parks the replaced workers:
    # tests/reload/test_reload_rolling_rollback.py).
    with LocalCorral(tmp_path, workers=3, reload_strategy="rolling", reload_batch=1,
                     reload_rollback="partial").start(
            "r1", startup_delay=0.5) as corral:
        before = corral.status()
        with Load(corral.port, clients=6) as load:
            load.wait_for_more(100)
            corral.deploy("r2", startup_delay=0.5)
            reloading = corral.reload_async()
            serving_or_booting = []
            while reloading.poll() is None:
                data = corral.status()
                serving_or_booting.append(sum(1 for w in data["workers"] if w["state"] in ("booting", "ready")))
            assert reloading.returncode == 0, reloading.stderr.read()
            load.wait_for_more(100)
        assert max(serving_or_booting) <= 4, serving_or_booting
        data = corral.status()
        assert data["generation"] == 2 and not _pids(data) & _pids(before)
        assert not load.failures(), load.failures()[:5]
        log = corral.log()
        assert log.count("batch") >= 2, log[-3000:]


def test_rolling_reload_failing_after_the_first_batch_reports_the_mixed_fleet(tmp_path):
    with LocalCorral(tmp_path, workers=2, reload_strategy="rolling", reload_batch=1,
                     reload_rollback="partial").start("m1") as corral:
        # The new code imports once, then breaks (e.g. a migration it runs at import).
        counter = corral.app_dir / "imports"
        corral.deploy("m2")
        path = corral.app_dir / "deployapp.py"
        path.write_text(f"import pathlib\n_c = pathlib.Path({str(counter)!r})\n"
                        "_n = int(_c.read_text()) if _c.exists() else 0\n_c.write_text(str(_n + 1))\n"
                        "if _n >= 1:\n    raise RuntimeError('second import fails')\n" + path.read_text())
        proc = corral.reload()
        assert proc.returncode == 1
        assert "rolling reload stopped at batch 2/2" in proc.stderr and "second import fails" in proc.stderr
        assert "1 of 2 workers run gen 2" in proc.stderr and "reload_rollback: partial" in proc.stderr, proc.stderr
        data = corral.status()
        assert data["workers_ready"] == data["workers_wanted"] == 2
        assert sorted(w["generation"] for w in data["workers"] if w["state"] == "ready") == [1, 2]
        versions = {corral_get_version(corral) for _ in range(20)}
        assert versions <= {"m1", "m2"}


def corral_get_version(corral: LocalCorral) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{corral.port}/", timeout=30).headers["x-app-version"]


def test_reload_requested_during_a_reload_is_answered_by_the_next_one(tmp_path):
    with LocalCorral(tmp_path, workers=1).start("q1") as corral:
        corral.deploy("q2", startup_delay=2)
        first = corral.reload_async()
        wait_until(lambda: corral.status()["pending_generation"] == 2, 30, 0.05, "the first reload booting")
        corral.deploy("q3")
        second = corral.reload()
        assert second.returncode == 0, second.stderr
        assert "generation 3" in second.stdout
        first.wait(60)
        assert first.returncode == 0 and "generation 2" in first.stdout.read()
        assert corral_get_version(corral) == "q3"


def test_bare_sighup_deploys_and_rolls_back_a_broken_app(tmp_path):
    with LocalCorral(tmp_path, workers=2).start("s1") as corral:
        before = corral.status()
        with Load(corral.port, clients=4) as load:
            load.wait_for_more(100)
            corral.deploy("s2", import_error="s2 cannot import")
            corral.proc.send_signal(signal.SIGHUP)
            data = wait_until(lambda: (d := corral.status())["last_reload"] and d, 60, 0.1, "the reload outcome")
            assert not data["last_reload"]["ok"] and "s2 cannot import" in data["last_reload"]["message"]
            assert _pids(data, 1) == _pids(before)
            corral.deploy("s3")
            corral.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: corral.status()["generation"] == 3, 60, 0.1, "generation 3 serving")
            load.wait_for_more(100)
        assert not load.failures(), load.failures()[:5]
        assert corral_get_version(corral) == "s3"
