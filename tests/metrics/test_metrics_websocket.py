"""WebSocket series in a scrape: open per worker, handshakes by outcome, messages and bytes in and
out, closes by code; totals keep exited workers' counters and never go back."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from corral.metrics.registry import Metrics, parse_heartbeat
from promtext_parse import parse, value


def _engine_heartbeat(*, open_: int, accepted: int, denied: int, failed: int, msgs: tuple[int, int],
                      nbytes: tuple[int, int], closes: dict[int, int]) -> dict:
    """A heartbeat as the worker sends it: the real engine's snapshot, through JSON."""
    from corral.engine.stats import EngineStats

    stats = EngineStats()
    ws = stats.ws
    ws.open, ws.accepted, ws.denied, ws.failed = open_, accepted, denied, failed
    ws.messages_in, ws.messages_out = msgs
    ws.bytes_in, ws.bytes_out = nbytes
    ws.closes = dict(closes)
    return json.loads(json.dumps(stats.snapshot()))


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics()
    m.set_desired_workers(2)
    m.set_generation(1)
    for pid, slot in ((10, 0), (11, 1)):
        m.worker_started(pid, slot=slot, generation=1)
        m.worker_ready(pid)
    m.worker_heartbeat(10, _engine_heartbeat(open_=3, accepted=7, denied=1, failed=2, msgs=(50, 60),
                                             nbytes=(500, 900), closes={1000: 3, 1006: 1}))
    m.worker_heartbeat(11, _engine_heartbeat(open_=2, accepted=4, denied=0, failed=1, msgs=(5, 6),
                                             nbytes=(50, 90), closes={1000: 1, 1012: 1}))
    return m


def _scrape(m: Metrics):
    return parse(m.render())[1]


def test_websocket_series_sum_the_workers_and_show_open_per_worker(metrics):
    s = _scrape(metrics)
    assert value(s, "corral_websocket_connections_open") == 5
    assert value(s, "corral_worker_websocket_connections_open", pid="10", worker="0") == 3
    assert value(s, "corral_worker_websocket_connections_open", pid="11", worker="1") == 2
    assert [value(s, "corral_websocket_handshakes_total", outcome=o) for o in ("accepted", "denied", "failed")] \
        == [11, 1, 3]
    assert value(s, "corral_websocket_messages_total", direction="in") == 55
    assert value(s, "corral_websocket_messages_total", direction="out") == 66
    assert value(s, "corral_websocket_bytes_total", direction="in") == 550
    assert value(s, "corral_websocket_bytes_total", direction="out") == 990
    assert {lb["code"]: v for n, lb, v in s if n == "corral_websocket_closes_total"} == \
        {"1000": 4, "1001": 0, "1006": 1, "1011": 0, "1012": 1}  # the usual codes always, from 0
    assert [w["websockets_open"] for w in metrics.status()["workers"]] == [3, 2]


def test_an_exited_workers_counters_stay_in_the_totals_but_its_connections_do_not(metrics):
    metrics.worker_exited(10, restart_reason="reload")
    s = _scrape(metrics)
    assert value(s, "corral_websocket_connections_open") == 2
    assert [lb["pid"] for n, lb, _ in s if n == "corral_worker_websocket_connections_open"] == ["11"]
    assert value(s, "corral_websocket_handshakes_total", outcome="accepted") == 11
    assert value(s, "corral_websocket_messages_total", direction="out") == 66
    assert value(s, "corral_websocket_closes_total", code="1006") == 1


def test_a_stale_heartbeat_cannot_make_websocket_counters_go_backwards(metrics):
    metrics.worker_heartbeat(10, _engine_heartbeat(open_=1, accepted=2, denied=0, failed=0, msgs=(1, 1),
                                                   nbytes=(1, 1), closes={}))
    s = _scrape(metrics)
    assert value(s, "corral_worker_websocket_connections_open", pid="10") == 1  # a gauge follows
    assert value(s, "corral_websocket_handshakes_total", outcome="accepted") == 11
    assert value(s, "corral_websocket_bytes_total", direction="out") == 990
    assert value(s, "corral_websocket_closes_total", code="1006") == 1


@pytest.mark.parametrize(("ws", "field"), [
    ("many", "'ws'"),
    ({"open": -1}, "'ws.open'"),
    ({"handshakes": {"refused": 1}}, "'ws.handshakes'"),
    ({"messages_in": 1.5}, "'ws.messages_in'"),
    ({"closes": {"999": 1}}, "'ws.closes'"),
    ({"closes": {"1000": "x"}}, "'ws.closes.1000'"),
])
def test_bad_websocket_heartbeats_name_the_field(ws, field):
    with pytest.raises(ValueError, match=field):
        parse_heartbeat({"ws": ws})


def test_a_heartbeat_without_websocket_figures_reads_as_zero():
    m = Metrics()
    m.worker_started(10, slot=0, generation=1)
    m.worker_heartbeat(10, {"requests_total": 1})
    s = _scrape(m)
    assert value(s, "corral_websocket_connections_open") == 0
    assert value(s, "corral_websocket_handshakes_total", outcome="accepted") == 0


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: apt-get install prometheus (in the Makefile's APT_PACKAGES)")
def test_websocket_series_pass_promtool(metrics):
    result = subprocess.run(["promtool", "check", "metrics"], input=metrics.render(), capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
