"""Health-policy decisions and restart backoff, on plain data (no processes)."""

from __future__ import annotations

import random

from corral.config import load
from corral.supervisor import policies
from corral.supervisor.slots import BACKOFF_MAX, Slot
from corral.supervisor.worker_process import WorkerProcess


def _config(**values):
    return load(None, values, environ={})


def test_memory_needs_consecutive_breaches():
    config = _config(max_memory="100MiB", policy_breaches=3)
    breaches: dict[str, int] = {}
    over, under = {"uss": 150 << 20, "rss": 200 << 20}, {"uss": 50 << 20, "rss": 200 << 20}
    assert policies.check_sample(config, over, breaches) is None
    assert policies.check_sample(config, over, breaches) is None
    assert policies.check_sample(config, under, breaches) is None  # a dip resets the count
    assert policies.check_sample(config, over, breaches) is None
    assert policies.check_sample(config, over, breaches) is None
    verdict = policies.check_sample(config, over, breaches)
    assert verdict.reason == "memory" and "USS 150.0 MiB > max_memory 100.0 MiB" in verdict.detail


def test_rss_metric_and_fds():
    config = _config(max_memory="100MiB", memory_metric="rss", max_fds=10, policy_breaches=1)
    assert policies.check_sample(config, {"uss": 1, "rss": 101 << 20, "fds": 3}, {}).reason == "memory"
    assert policies.check_sample(config, {"uss": 1, "rss": 1, "fds": 11}, {}).reason == "fds"
    assert policies.check_sample(_config(), {"uss": 1 << 40, "rss": 1 << 40, "fds": 10**6}, {}) is None  # off


def test_pss_metric_reads_the_pss_figure():
    config = _config(max_memory="100MiB", memory_metric="pss", policy_breaches=1)
    sample = {"uss": 50 << 20, "pss": 120 << 20, "rss": 90 << 20}
    verdict = policies.check_sample(config, sample, {})
    assert verdict.reason == "memory" and "PSS 120.0 MiB > max_memory 100.0 MiB" in verdict.detail
    assert policies.check_sample(config, {**sample, "pss": 80 << 20}, {}) is None


def test_counters_and_the_workers_own_request():
    assert policies.check_counters({"requests_total": 99}, 1, 100, 0) is None
    assert policies.check_counters({"requests_total": 100}, 1, 100, 0).reason == "max_requests"
    assert policies.check_counters({}, 61, 0, 60).reason == "lifetime"
    verdict = policies.check_counters({"wants_recycle": "WSGI request GET / stuck"}, 1, 0, 0)
    assert verdict.reason == "deadline" and "stuck" in verdict.detail


def test_jitter_stays_in_range_and_varies():
    config = _config(max_requests=1000, max_requests_jitter=100, max_lifetime=3600, max_lifetime_jitter=600)
    rng = random.Random(7)
    limits = [policies.jittered_limits(config, rng) for _ in range(50)]
    assert all(1000 <= r <= 1100 and 3600 <= t <= 4200 for r, t in limits)
    assert len({r for r, _ in limits}) > 10
    assert policies.jittered_limits(_config(max_requests_jitter=100)) == (0, 0.0)  # off stays off


def test_backoff_doubles_to_30s_and_resets_after_a_healthy_run():
    slot = Slot(0)
    delays = []
    for i in range(12):
        worker = WorkerProcess.__new__(WorkerProcess)
        worker.ready_at = None
        slot.note_exit(worker, now=float(i))
        delays.append(slot.backoff())
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == BACKOFF_MAX
    healthy = WorkerProcess.__new__(WorkerProcess)
    healthy.ready_at = 100.0
    slot.note_exit(healthy, now=200.0)  # served 100 s before dying: replaced at once, backoff starts over
    assert slot.backoff() == 0.0 and slot.restart_at == 200.0
