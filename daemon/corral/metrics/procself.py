"""The supervisor's own process figures, read from /proc/self without psutil.

Exported under Prometheus' standard ``process_*`` names, so that the usual
dashboards work for corral's supervisor as they do for any other exporter.
"""

from __future__ import annotations

import os
import resource
from functools import cache
from typing import NamedTuple

from corral.metrics.procfs import stat_fields

__all__ = ["SelfProcess", "self_process"]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


class SelfProcess(NamedTuple):
    rss_bytes: int
    cpu_seconds: float
    open_fds: int
    max_fds: int
    start_time_seconds: float  # Unix time


@cache
def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("/proc/stat has no btime line")


@cache
def _start_time() -> float:
    return _boot_time() + int(stat_fields("self")[19]) / _TICKS  # field 22, starttime, in clock ticks


def self_process() -> SelfProcess:
    """Current RSS, CPU time, open fds and fd limit of this process."""
    with open("/proc/self/statm", "rb") as f:
        rss_pages = int(f.read().split()[1])
    times = os.times()
    return SelfProcess(
        rss_bytes=rss_pages * _PAGE,
        cpu_seconds=times.user + times.system,
        open_fds=len(os.listdir("/proc/self/fd")) - 1,  # minus the fd listdir itself holds
        max_fds=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        start_time_seconds=_start_time(),
    )
