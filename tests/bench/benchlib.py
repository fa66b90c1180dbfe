"""What the benchmark scripts share: starting a pinned server, driving wrk, reading the results.

Method (both bench.py and bench_wsgi.py): each server runs alone, pinned to CPU 0
(``taskset -c 0``); wrk runs pinned to CPU 1 with one thread: a warm-up run, then
the measured run. Besides req/s, the server's whole process tree's CPU time per
request is recorded: on a busy machine other processes steal wall-clock time from
the server, not CPU time, so it is the steadier figure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXPECTED_BODY = b"Hello, world!"


def check_tools(prog: str) -> int | None:
    """None when the machine can run a benchmark, else the exit status (the reason is printed)."""
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{prog}: {tool} not found; install it (make sysdeps installs wrk and util-linux)",
                  file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print(f"{prog}: needs 2 CPUs (server on CPU 0, wrk on CPU 1)", file=sys.stderr)
        return 2
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def responds(port: int) -> bool:
    """The server answers the hello-world body (so a half-started server is not measured)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            s.settimeout(2)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data.startswith(b"HTTP/1.1 200") and data.endswith(EXPECTED_BODY)
    except OSError:
        return False


def wrk(port: int, seconds: float, connections: int, nice: list[str]) -> tuple[float, str]:
    """Requests/s of one wrk run on CPU 1, and wrk's error lines (empty when none)."""
    out = subprocess.run(
        nice + ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s",
                f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"could not read wrk output:\n{out}")
    errors = re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    return float(match.group(1)), "; ".join(errors)


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a server and all its processes (supervisor, workers, threads)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def loadavg() -> float:
    """The 1-minute load average: above ~2.5 on a 2-CPU machine, something else competed."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def stop(proc: subprocess.Popen) -> None:
    """Stop a server we started (by pid), escalating to SIGKILL of its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def run_server(name: str, cmd: list[str], port: int, *, extra_env: dict[str, str] | None = None,
               duration: float, warmup: float, connections: int, nice: list[str]) -> dict[str, object]:
    """Start one server (listening on ``port``) pinned to CPU 0, wait until it answers, measure it, stop it."""
    pinned = nice + ["taskset", "-c", "0"] + cmd
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon"), **(extra_env or {})}
    proc = subprocess.Popen(pinned, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not responds(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{name} did not start: {' '.join(pinned)}\n{err[-2000:]}")
            time.sleep(0.2)
        if warmup:
            wrk(port, warmup, connections, nice)
        cpu_before = cpu_seconds(proc.pid)
        rps, errors = wrk(port, duration, connections, nice)
        cpu = cpu_seconds(proc.pid) - cpu_before
        return {"server": name, "requests_per_second": rps, "errors": errors, "loadavg": loadavg(),
                "cpu_us_per_request": round(cpu / (rps * duration) * 1e6, 2) if rps else None}
    finally:
        stop(proc)
