"""Formatting of the STATUS line figures, and the supervisor's loop-lag probe."""

from __future__ import annotations

import asyncio
import time

import pytest

from corral.metrics.looplag import LoopLagMonitor
from corral.metrics.status_line import MAX_MESSAGE, format_bytes, format_rate, format_status_line


@pytest.mark.parametrize("rate,text", [
    (0, "0"), (0.04, "0"), (3.45, "3.5"), (9.0, "9"), (12.4, "12"), (999.4, "999"),
    (999.6, "1k"), (1234, "1.2k"), (12345, "12k"), (999_600, "1M"), (2.5e6, "2.5M"),
])
def test_rates(rate, text):
    assert format_rate(rate) == text


@pytest.mark.parametrize("n,text", [
    (0, "0 MiB"), (180 << 20, "180 MiB"), (1023 << 20, "1023 MiB"), (int(2.4 * (1 << 30)), "2.4 GiB"),
])
def test_bytes(n, text):
    assert format_bytes(n) == text


BASE = {"ready": 3, "desired": 4, "draining": 0, "generation": 7, "requests_per_second": 1234.0,
        "queue_depth": 17, "rss_bytes": 180 << 20, "message": None}


def test_line():
    assert format_status_line(BASE) == "3/4 workers ready · gen 7 · 1.2k req/s · queue 17 · rss 180 MiB"
    assert format_status_line({**BASE, "queue_depth": None}).count("queue n/a") == 1


def test_long_messages_are_cut():
    line = format_status_line({**BASE, "message": "x" * 1000})
    assert line.endswith("…") and len(line) < 100 + MAX_MESSAGE


def test_loop_lag_reports_a_blocked_loop():
    lags: list[float] = []

    async def main():
        monitor = LoopLagMonitor(lags.append, interval=0.05)
        monitor.start()
        await asyncio.sleep(0.2)
        time.sleep(0.5)          # block the loop: the timer due 0.05 s later runs >= 0.45 s late
        await asyncio.sleep(0.2)
        monitor.stop()
        count = len(lags)
        await asyncio.sleep(0.2)
        assert len(lags) == count  # stopped: no more samples
    asyncio.run(main())
    assert len(lags) >= 3
    assert max(lags) >= 0.44
    assert min(lags) >= 0


def test_loop_lag_interval_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        LoopLagMonitor(lambda _: None, interval=0)
