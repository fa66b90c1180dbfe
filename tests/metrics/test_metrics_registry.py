"""The data model of a scrape: totals, restarts, reloads, histograms, queue, STATUS figures."""

from __future__ import annotations

import logging
import random
import re
import shutil
import socket
import subprocess
import sys

import pytest

from corral.metrics.registry import (RATE_STALE, RATE_WINDOW, RELOAD_OUTCOMES, RESTART_REASONS,
                                     Metrics, parse_heartbeat)
from metrics_scenario import BOUNDS, EngineStats, realistic_metrics
from promtext_parse import parse, total, value
from util import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def metrics(clock):
    m = Metrics(clock=clock)
    m.set_desired_workers(2)
    m.set_generation(1)
    return m


def _start(m: Metrics, pid: int, slot: int, generation: int = 1) -> None:
    m.worker_started(pid, slot=slot, generation=generation)
    m.worker_ready(pid)


def _scrape(m: Metrics):
    return parse(m.render())[1]


def test_totals_keep_exited_workers_counters(metrics):
    rng = random.Random(1)
    a, b = EngineStats(rng), EngineStats(rng)
    _start(metrics, 10, 0)
    _start(metrics, 11, 1)
    metrics.worker_heartbeat(10, a.serve(700).snapshot())
    metrics.worker_heartbeat(11, b.serve(300).snapshot())
    before = _scrape(metrics)
    assert total(before, "corral_requests_total") == 1000
    assert value(before, "corral_requests_received_total") == 1000

    metrics.worker_exited(10, restart_reason="crash")
    after = _scrape(metrics)
    for name in ("corral_requests_total", "corral_requests_received_total",
                 "corral_connections_accepted_total", "corral_request_duration_seconds_count"):
        assert total(after, name) == total(before, name), name
    # The dead worker's own series are gone; its replacement starts from zero.
    assert not [s for s in after if s[1].get("pid") == "10"]
    _start(metrics, 12, 0)
    metrics.worker_heartbeat(12, EngineStats(rng).serve(5).snapshot())
    assert total(_scrape(metrics), "corral_requests_total") == 1005
    assert value(_scrape(metrics), "corral_worker_restarts_total", reason="crash") == 1


def test_a_stale_heartbeat_cannot_make_counters_go_backwards(metrics):
    rng = random.Random(2)
    e = EngineStats(rng)
    _start(metrics, 10, 0)
    early = e.serve(100).snapshot()
    late = e.serve(50).snapshot()
    metrics.worker_heartbeat(10, late)
    metrics.worker_heartbeat(10, early)
    s = _scrape(metrics)
    assert total(s, "corral_requests_total") == 150
    assert value(s, "corral_request_duration_seconds_count") == 150
    assert value(s, "corral_connections_accepted_total") == late["connections_accepted"]


def test_per_worker_series_add_up_to_the_live_part_of_the_totals(metrics):
    rng = random.Random(3)
    _start(metrics, 10, 0)
    _start(metrics, 11, 1)
    metrics.worker_heartbeat(10, EngineStats(rng).serve(120, in_flight=2).snapshot())
    metrics.worker_heartbeat(11, EngineStats(rng).serve(80, in_flight=1).snapshot())
    s = _scrape(metrics)
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert total(s, "corral_worker_requests_total", status=cls) == \
            value(s, "corral_requests_total", status=cls)
    assert value(s, "corral_requests_in_flight") == 3
    assert total(s, "corral_worker_requests_in_flight") == 3
    assert value(s, "corral_connections_open") == total(s, "corral_worker_connections_open")
    assert value(s, "corral_worker_requests_in_flight", worker="0", pid="10") == 2


def test_every_restart_reason_is_exported_and_counted(metrics):
    s = _scrape(metrics)
    assert {lb["reason"] for n, lb, _ in s if n == "corral_worker_restarts_total"} == \
        set(RESTART_REASONS)
    for i, reason in enumerate(RESTART_REASONS):
        _start(metrics, 100 + i, i)
        metrics.worker_exited(100 + i, restart_reason=reason)
    metrics.worker_exited(999, restart_reason="hung")    # died before it was registered
    _start(metrics, 200, 0)
    metrics.worker_exited(200, restart_reason=None)       # a stop or scale-down: not a restart
    s = _scrape(metrics)
    for reason in RESTART_REASONS:
        assert value(s, "corral_worker_restarts_total", reason=reason) == \
            (2 if reason == "hung" else 1), reason
    with pytest.raises(ValueError, match="unknown restart reason 'oom'"):
        metrics.worker_exited(1, restart_reason="oom")


def test_histogram_aggregates_live_and_retired_workers(metrics):
    rng = random.Random(4)
    engines = {10: EngineStats(rng), 11: EngineStats(rng)}
    _start(metrics, 10, 0)
    _start(metrics, 11, 1)
    metrics.worker_heartbeat(10, engines[10].serve(400).snapshot())
    metrics.worker_heartbeat(11, engines[11].serve(600).snapshot())
    metrics.worker_exited(10, restart_reason="max_requests")
    families, s = parse(metrics.render())
    assert families["corral_request_duration_seconds"][0] == "histogram"
    buckets = [(lb["le"], v) for n, lb, v in s if n == "corral_request_duration_seconds_bucket"]
    assert [le for le, _ in buckets] == [repr(b).removesuffix(".0") for b in BOUNDS] + ["+Inf"]
    expected, running = [], 0
    for i in range(len(BOUNDS) + 1):
        running += engines[10].buckets[i] + engines[11].buckets[i]
        expected.append(running)
    assert [v for _, v in buckets] == expected
    assert value(s, "corral_request_duration_seconds_count") == 1000
    assert value(s, "corral_request_duration_seconds_sum") == pytest.approx(
        engines[10].duration + engines[11].duration, rel=1e-6)


def test_bucket_bounds_may_come_once(metrics):
    _start(metrics, 10, 0)
    metrics.worker_heartbeat(10, {"duration_buckets": [0.1, 1.0], "duration_counts": [1, 0, 0],
                                  "duration_sum": 0.05})
    metrics.worker_heartbeat(10, {"duration_counts": [3, 1, 0], "duration_sum": 0.9})
    _start(metrics, 11, 1)  # a worker that never sends bounds uses the known ones
    metrics.worker_heartbeat(11, {"duration_counts": [0, 0, 2], "duration_sum": 7.0})
    s = _scrape(metrics)
    assert value(s, "corral_request_duration_seconds_bucket", le="0.1") == 3
    assert value(s, "corral_request_duration_seconds_bucket", le="1") == 4
    assert value(s, "corral_request_duration_seconds_bucket", le="+Inf") == 6
    with pytest.raises(ValueError, match="one per bound plus one"):
        metrics.worker_heartbeat(10, {"duration_counts": [1, 2], "duration_sum": 1.0})


def test_bounds_given_to_the_constructor_render_an_empty_histogram(clock):
    s = _scrape(Metrics(duration_bounds=[0.5, 1], clock=clock))
    assert value(s, "corral_request_duration_seconds_bucket", le="+Inf") == 0
    assert value(s, "corral_request_duration_seconds_count") == 0


def test_workers_with_other_bounds_are_left_out_with_one_warning(metrics, caplog):
    _start(metrics, 10, 0)
    _start(metrics, 11, 1)
    metrics.worker_heartbeat(10, {"duration_buckets": [0.1, 1.0], "duration_counts": [1, 1, 1],
                                  "duration_sum": 3.0})
    metrics.worker_heartbeat(11, {"duration_buckets": [0.2], "duration_counts": [5, 5],
                                  "duration_sum": 9.0})
    with caplog.at_level(logging.WARNING, logger="corral.metrics"):
        s = _scrape(metrics)
        _scrape(metrics)
        metrics.worker_exited(11, restart_reason=None)
    assert value(s, "corral_request_duration_seconds_count") == 3
    assert value(_scrape(metrics), "corral_request_duration_seconds_count") == 3
    assert len([r for r in caplog.records if "differ" in r.message]) == 1


@pytest.mark.parametrize("stats,field", [
    ({"requests_total": -1}, "requests_total"),
    ({"requests_total": 1.5}, "requests_total"),
    ({"in_flight": "3"}, "in_flight"),
    ({"responses": {"2xx": 1, "6xx": 1}}, "responses"),
    ({"responses": [1, 2, 3]}, "responses"),
    ({"responses": 7}, "responses"),
    ({"oldest_in_flight": "now"}, "oldest_in_flight"),
    ({"duration_counts": 3}, "duration_counts"),
    ({"duration_counts": [1, 2], "duration_sum": -1}, "duration_sum"),
    ({"duration_buckets": ["a"]}, "duration_buckets"),
    ({"duration_buckets": [1.0], "duration_counts": [1, 2, 3]}, "duration_buckets"),
])
def test_bad_heartbeats_name_the_field(stats, field):
    with pytest.raises(ValueError, match=field):
        parse_heartbeat(stats)


def test_heartbeat_responses_may_be_a_list():
    assert parse_heartbeat({"responses": [0, 5, 1, 2, 3]}).responses == [0, 5, 1, 2, 3]


def test_unknown_worker_pid_says_what_to_call(metrics):
    with pytest.raises(KeyError, match="worker_started"):
        metrics.worker_heartbeat(4242, {})
    with pytest.raises(KeyError, match="worker_started"):
        metrics.worker_process(4242, rss_bytes=1)


def test_requests_per_second_is_the_slope_of_heartbeat_counters(metrics, clock):
    _start(metrics, 10, 0)
    _start(metrics, 11, 1)
    assert metrics.requests_per_second() == 0
    for second in range(8):
        clock.now += 1
        metrics.worker_heartbeat(10, {"requests_total": 100 * second})
        metrics.worker_heartbeat(11, {"requests_total": 50 * second})
    assert metrics.requests_per_second() == pytest.approx(150)
    # A burst shows at once: worker 10 did 600 in the last second. The slope runs over
    # the heartbeats of the last RATE_WINDOW seconds: (1300 - 300) / 5 for worker 10,
    # (350 - 100) / 5 for worker 11.
    clock.now += 1
    metrics.worker_heartbeat(10, {"requests_total": 100 * 7 + 600})
    assert RATE_WINDOW == 5
    assert metrics.requests_per_second() == pytest.approx(200 + 50)
    # A worker silent for longer than RATE_STALE no longer counts; an exited one neither.
    clock.now += RATE_STALE + 0.5
    metrics.worker_heartbeat(11, {"requests_total": 50 * 8})
    assert metrics.requests_per_second() == pytest.approx(50 / (RATE_STALE + 1.5))
    metrics.worker_exited(11, restart_reason=None)
    assert metrics.requests_per_second() == 0


def test_status_line_and_json_show_the_same_figures():
    with realistic_metrics(pending_http=3) as m:
        wait_until(lambda: m.status()["queue_depth"] == 3, what="3 queued connections")
        data = m.status()
        line = data["status_line"]
    assert data["ready"] == 4 and data["desired"] == 4 and data["generation"] == 2
    assert data["queue_max"] == 2048 * 2            # two http listeners; metrics excluded
    assert data["rss_bytes"] == data["workers_rss_bytes"] + data["supervisor_rss_bytes"]
    m_ = re.fullmatch(r"(\d+)/(\d+) workers ready · gen (\d+) · ([\d.]+)(k?) req/s · "
                      r"queue (\d+) · rss (\d+) MiB", line)
    assert m_, line
    ready, desired, gen, rate, k, queue, rss = m_.groups()
    assert (int(ready), int(desired), int(gen), int(queue)) == \
        (data["ready"], data["desired"], data["generation"], data["queue_depth"])
    assert float(rate) * (1000 if k else 1) == pytest.approx(data["requests_per_second"], rel=0.05)
    assert int(rss) == round(data["rss_bytes"] / (1 << 20))
    assert [w["generation"] for w in data["workers"]] == [2, 2, 2, 2]
    assert {li["name"] for li in data["listeners"]} == {"http", "metrics"}


def test_status_during_a_reload_counts_the_serving_generation(metrics):
    metrics.set_desired_workers(2)
    for slot in range(2):
        _start(metrics, 10 + slot, slot, generation=1)
        metrics.worker_started(20 + slot, slot=slot, generation=2)   # booting
    data = metrics.status()
    assert (data["ready"], data["booting"], data["draining"]) == (2, 2, 0)
    assert data["status_line"].startswith("2/2 workers ready · gen 1 ·")
    for slot in range(2):
        metrics.worker_ready(20 + slot)
        metrics.worker_draining(10 + slot)
    metrics.set_generation(2)
    data = metrics.status()
    assert (data["ready"], data["booting"], data["draining"]) == (2, 0, 2)
    assert data["status_line"].startswith("2/2 workers ready · 2 draining · gen 2 ·")
    metrics.set_message("reload failed: ImportError: no module named 'app'\nTraceback ...")
    assert metrics.status_line().endswith("· reload failed: ImportError: no module named "
                                          "'app' Traceback ...")
    metrics.set_message(None)
    assert "reload failed" not in metrics.status_line()


def test_queue_depth_is_scraped_per_socket_and_status_skips_the_metrics_socket(metrics):
    http = socket.socket()
    mon = socket.socket()
    clients = []
    try:
        for s, backlog in ((http, 100), (mon, 10)):
            s.bind(("127.0.0.1", 0))
            s.listen(backlog)
        metrics.add_listener(http, "http")
        metrics.add_listener(mon, "metrics", app_traffic=False)
        clients += [socket.create_connection(http.getsockname()) for _ in range(2)]
        clients += [socket.create_connection(mon.getsockname()) for _ in range(4)]
        wait_until(lambda: metrics.status()["queue_depth"] == 2, what="2 queued on http")
        addr = "127.0.0.1:%d" % http.getsockname()[1]
        wait_until(lambda: value(_scrape(metrics), "corral_listen_queue_depth", name="metrics") == 4,
                   what="4 queued on the metrics socket")
        s = _scrape(metrics)
        assert value(s, "corral_listen_queue_depth", name="http", address=addr) == 2
        assert value(s, "corral_listen_queue_max", name="http") == 100
        assert value(s, "corral_listen_queue_max", name="metrics") == 10
        assert metrics.status()["queue_max"] == 100
        metrics.remove_listener(mon)
        assert "metrics" not in {lb.get("name") for _, lb, _ in _scrape(metrics)}
    finally:
        for s in [http, mon, *clients]:
            s.close()


def test_a_listener_that_cannot_report_is_logged_once_and_left_out(metrics, caplog):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    metrics.add_listener(s, "http")
    s.close()
    with caplog.at_level(logging.WARNING, logger="corral.metrics"):
        first = _scrape(metrics)
        _scrape(metrics)
        data = metrics.status()
    assert not [x for x in first if x[0] == "corral_listen_queue_depth"]
    assert data["queue_depth"] is None and "queue n/a" in data["status_line"]
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 1


def test_reload_outcomes_and_durations(metrics):
    s = _scrape(metrics)
    assert {lb["outcome"] for n, lb, _ in s if n == "corral_reload_duration_seconds_count"} == \
        set(RELOAD_OUTCOMES)
    assert not [x for x in s if x[0] == "corral_last_reload_success"]
    metrics.reload_finished("success", 3.5)
    metrics.reload_finished("success", 700.0)
    metrics.reload_finished("rolled_back", 12.0)
    s = _scrape(metrics)
    assert value(s, "corral_reload_duration_seconds_count", outcome="success") == 2
    assert value(s, "corral_reload_duration_seconds_bucket", outcome="success", le="5") == 1
    assert value(s, "corral_reload_duration_seconds_bucket", outcome="success", le="300") == 1
    assert value(s, "corral_reload_duration_seconds_bucket", outcome="success", le="+Inf") == 2
    assert value(s, "corral_reload_duration_seconds_sum", outcome="success") == 703.5
    assert value(s, "corral_reload_duration_seconds_count", outcome="rolled_back") == 1
    assert value(s, "corral_last_reload_success") == 0
    assert value(s, "corral_last_reload_duration_seconds") == 12
    with pytest.raises(ValueError, match="unknown reload outcome"):
        metrics.reload_finished("ok", 1.0)


def test_worker_process_figures_and_cpu_total(metrics):
    _start(metrics, 10, 0)
    _start(metrics, 11, 1)
    metrics.worker_process(10, rss_bytes=64 << 20, uss_bytes=50 << 20, cpu_seconds=12.5,
                           open_fds=20)
    metrics.worker_process(11, rss_bytes=70 << 20, uss_bytes=55 << 20, cpu_seconds=2.0,
                           open_fds=21)
    metrics.worker_exited(10, restart_reason="lifetime")
    s = _scrape(metrics)
    assert value(s, "corral_worker_resident_memory_bytes", pid="11") == 70 << 20
    assert value(s, "corral_worker_unique_memory_bytes", pid="11") == 55 << 20
    assert value(s, "corral_worker_cpu_seconds_total", pid="11") == 2.0
    assert value(s, "corral_worker_open_fds", pid="11") == 21
    assert value(s, "corral_workers_cpu_seconds_total") == 14.5
    data = metrics.status()
    assert data["workers_uss_bytes"] == 55 << 20
    assert data["workers"][0]["uss_bytes"] == 55 << 20


def test_worker_states_and_supervisor_figures(metrics, clock):
    metrics.worker_started(10, slot=0, generation=1)
    _start(metrics, 11, 1)
    metrics.set_loop_lag(0.25)
    clock.now += 2
    s = _scrape(metrics)
    assert value(s, "corral_workers", state="booting") == 1
    assert value(s, "corral_workers", state="ready") == 1
    assert value(s, "corral_worker_ready", pid="10") == 0
    assert value(s, "corral_worker_ready", pid="11") == 1
    assert value(s, "corral_workers_desired") == 2
    assert value(s, "corral_generation") == 1
    assert value(s, "corral_supervisor_event_loop_lag_seconds") == 0.25
    assert value(s, "process_resident_memory_bytes") > 1 << 20
    assert value(s, "process_open_fds") > 2
    metrics.worker_heartbeat(11, {"in_flight": 1, "oldest_in_flight": 0.0})
    assert value(_scrape(metrics), "corral_worker_oldest_request_age_seconds", pid="11") > 0
    assert value(_scrape(metrics), "corral_worker_heartbeat_age_seconds", pid="11") == 0


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: apt-get install prometheus (in the Makefile's "
                           "APT_PACKAGES)")
def test_a_full_scrape_passes_promtool():
    with realistic_metrics() as m:
        text = m.render()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # And promtool does flag what we must never produce: the check above can fail.
    bad = text.replace("corral_requests_total", "corral_requests")
    result = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "_total" in result.stdout + result.stderr


def test_full_scrape_invariants():
    with realistic_metrics() as m:
        families, samples = parse(m.render())
    names = {n for n, _, _ in samples}
    for fam, (kind, help_text) in families.items():
        assert help_text, fam
        if kind == "histogram":
            series: dict = {}
            for n, lb, v in samples:
                if n == fam + "_bucket":
                    key = tuple(sorted((k, x) for k, x in lb.items() if k != "le"))
                    series.setdefault(key, []).append(v)
            for key, counts in series.items():
                assert counts == sorted(counts), (fam, key)
                assert counts[-1] == value(samples, fam + "_count", **dict(key))
        else:
            assert fam in names or fam.startswith("corral_last_reload"), fam
    assert value(samples, "corral_request_duration_seconds_count") == \
        total(samples, "corral_requests_total")
    assert value(samples, "corral_worker_restarts_total", reason="reload") == 4
    assert value(samples, "corral_worker_restarts_total", reason="crash") == 1


def test_metrics_modules_import_only_the_standard_library():
    code = ("import sys, corral.metrics.registry, corral.metrics.server, corral.metrics.looplag, "
            "corral.metrics.status_line; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'uvloop', 'httptools', 'psutil', 'yaml', 'sdnotify'}), "
            "sorted(m for m in sys.modules if m.startswith('corral.') "
            "and not m.startswith('corral.metrics')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


def test_requests_per_second_with_frequent_heartbeats(metrics, clock):
    # Heartbeats ten times a second must not shrink the window to the last few tenths.
    _start(metrics, 10, 0)
    for step in range(81):
        clock.now = 100 + step / 10
        metrics.worker_heartbeat(10, {"requests_total": 10 * step + (500 if step == 80 else 0)})
    # The 500-request burst in the last tenth is spread over the ~5 s window, not over 0.1 s.
    assert 100 + 500 / 5 <= metrics.requests_per_second() <= 100 + 500 / 4.5


def test_the_engines_own_snapshot_feeds_the_registry(metrics):
    # The contract with the engine: its heartbeat dict, as it crosses the control channel
    # (JSON), must be understood as is. The supervisor itself never imports the engine.
    import json

    from corral.engine.stats import DURATION_BUCKETS, EngineStats as RealEngineStats
    stats = RealEngineStats()
    for status, duration in ((200, 0.0004), (200, 0.02), (404, 0.003), (503, 99.0), (101, 0.0)):
        stats.requests_total += 1
        stats.observe(status, duration)
    stats.connections_accepted, stats.connections_open = 3, 1
    _start(metrics, 10, 0)
    metrics.worker_heartbeat(10, json.loads(json.dumps(stats.snapshot())))
    s = _scrape(metrics)
    assert [value(s, "corral_requests_total", status=c) for c in ("1xx", "2xx", "4xx", "5xx")] == \
        [1, 2, 1, 1]
    assert value(s, "corral_requests_received_total") == 5
    assert value(s, "corral_connections_accepted_total") == 3
    assert value(s, "corral_connections_open") == 1
    les = [lb["le"] for n, lb, _ in s if n == "corral_request_duration_seconds_bucket"]
    assert len(les) == len(DURATION_BUCKETS) + 1 and les[-1] == "+Inf"
    assert value(s, "corral_request_duration_seconds_bucket", le="0.001") == 2
    assert value(s, "corral_request_duration_seconds_bucket", le=les[-2]) == 4
    assert value(s, "corral_request_duration_seconds_count") == 5
    assert value(s, "corral_request_duration_seconds_sum") == pytest.approx(99.0234)
