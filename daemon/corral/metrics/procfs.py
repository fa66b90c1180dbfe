"""Memory, CPU and fd figures of any process, read from /proc without psutil.

The supervisor samples every worker each ``policy_interval``, and ``corral status`` shows the
supervisor's and each zygote's memory. One read of ``/proc/PID/smaps_rollup`` (Linux 4.14+) gives
USS and PSS already summed by the kernel, where psutil's ``memory_full_info`` parses the whole
``/proc/PID/smaps``, one mapping at a time. Reading /proc ourselves also keeps psutil (about 1 MiB
once imported) out of the supervisor, which must stay small (docs/zygote.md).

USS is what only this process maps (private clean + private dirty pages): for a worker forked from
a zygote it is what the worker really costs, where RSS counts the pages it shares too.
"""

from __future__ import annotations

import os

__all__ = ["SAMPLE_KEYS", "memory", "sample", "stat_fields", "thread_ids"]

_TICKS = os.sysconf("SC_CLK_TCK")


# What sample() returns: memory in bytes, open fds, and user + system CPU time in milliseconds.
SAMPLE_KEYS = ("rss", "uss", "pss", "fds", "cpu_ms")


def memory(pid: int) -> tuple[int, int, int]:
    """``(rss, uss, pss)`` of ``pid`` in bytes; OSError once it is gone (or not ours to read)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise
        with open(f"/proc/{pid}/smaps", "rb") as f:  # a kernel older than 4.14: the same sums, slower
            text = f.read()
    rss = uss = pss = 0
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        if key == b"Rss":
            rss += int(rest.split()[0])
        elif key == b"Pss":
            pss += int(rest.split()[0])
        elif key in (b"Private_Clean", b"Private_Dirty"):
            uss += int(rest.split()[0])
    return rss * 1024, uss * 1024, pss * 1024  # /proc gives kB


def stat_fields(pid: int | str) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` (``pid``: a number or "self") after the command name:
    index 0 is field 3 (state) of proc(5)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat[stat.rindex(b")") + 2:].split()


def thread_ids(pid: int | str) -> set[int]:
    """The ids of ``pid``'s threads (``pid``: a number or "self"), C-level ones included."""
    return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}


def sample(pid: int) -> dict[str, int]:
    """Memory, open fds and CPU time of ``pid`` (keyed by SAMPLE_KEYS); OSError once it is gone (or not ours to read)."""
    rss, uss, pss = memory(pid)
    fields = stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    return {"rss": rss, "uss": uss, "pss": pss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_ms": ticks * 1000 // _TICKS}
