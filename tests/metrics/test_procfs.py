"""corral.metrics.procfs against psutil, on a quiet child process whose figures do not move."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from corral.metrics import procfs

# A child that maps 8 MiB of its own, opens 3 files, burns some CPU and then waits on stdin.
CHILD = """
import sys, time
ballast = bytearray(8 << 20)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
files = [open("/dev/null") for _ in range(3)]
end = time.process_time() + 0.2
while time.process_time() < end:
    pass
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def child() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def test_sample_agrees_with_psutil(child: int) -> None:
    ours = procfs.sample(child)
    process = psutil.Process(child)
    theirs = process.memory_full_info()
    cpu = process.cpu_times()
    assert set(ours) == set(procfs.SAMPLE_KEYS)
    # The same kernel sums, read a moment apart from a process that is blocked on stdin.
    assert abs(ours["uss"] - theirs.uss) <= 256 << 10
    assert abs(ours["pss"] - theirs.pss) <= 256 << 10
    assert abs(ours["rss"] - theirs.rss) <= 256 << 10
    assert ours["uss"] >= 8 << 20  # the ballast is its own
    assert ours["fds"] == process.num_fds()
    assert abs(ours["cpu_ms"] - (cpu.user + cpu.system) * 1000) <= 20
    assert ours["cpu_ms"] >= 200


def test_memory_of_self_is_a_triple_in_order() -> None:
    rss, uss, pss = procfs.memory(os.getpid())
    assert 0 < uss <= pss <= rss


def test_a_process_that_is_gone_raises_oserror() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    with pytest.raises(OSError):
        procfs.sample(proc.pid)
