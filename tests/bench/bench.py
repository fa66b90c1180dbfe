"""Hello-world ASGI benchmark: corral vs uvicorn vs granian vs a bare uvloop+httptools responder.

    python tests/bench/bench.py [--only NAME]... [--duration 10] [--warmup 3] [--json results.json]

Each server runs alone, pinned to CPU 0 (``taskset -c 0``); wrk runs pinned to
CPU 1 with one thread and 64 connections: a warm-up run, then the measured run.
All servers serve ``corral.demo.hello:asgi`` (the bare responder answers the same
bytes without ASGI: it is the ceiling of this stack). Prints requests/s per
server and the ratios corral/uvicorn, corral/granian and corral/bare.

corral is measured through its real CLI (``corral run -w 1``); ``corral-engine``
(the engine alone, tests/engine/serve.py) is available with ``--only``.
Not a test: run it by hand or with ``make bench``; expect noise on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
APP = "corral.demo.hello:asgi"
EXPECTED_BODY = b"Hello, world!"


def _commands(port: int) -> dict[str, list[str]]:
    addr = f"127.0.0.1:{port}"
    return {
        "corral": [str(BIN / "corral"), "run", "-w", "1", "-b", addr, "--log-level", "warning", APP],
        "corral-engine": [sys.executable, str(REPO / "tests/engine/serve.py"), "--app", APP, "--bind", addr,
                          "--log-level", "warning"],
        "uvicorn": [str(BIN / "uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
                    "--http", "httptools", "--no-access-log", "--log-level", "warning", "--workers", "1"],
        # uvicorn as a new user starts it: default logging, access log on (not part of the default run).
        "uvicorn-default": [str(BIN / "uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port), "--loop",
                            "uvloop", "--http", "httptools"],
        "granian": [str(BIN / "granian"), "--interface", "asgi", "--workers", "1", "--no-access-log",
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", APP],
        "bare": [sys.executable, str(REPO / "tests/bench/bare_server.py"), str(port)],
    }


DEFAULT_ORDER = ["corral", "uvicorn", "granian", "bare"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _responds(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            s.settimeout(2)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.1 200") and data.endswith(EXPECTED_BODY)
    except OSError:
        return False


NICE: list[str] = []  # ["nice", "-n", "-10"] with --nice -10


def _wrk(port: int, seconds: float, connections: int) -> tuple[float, str]:
    out = subprocess.run(
        NICE + ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s",
         f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"could not read wrk output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return float(match.group(1)), (errors.group(0) if errors else "")


def _loadavg() -> float:
    """The 1-minute load average: above ~2.5 on this 2-CPU setup, something else competed."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def run_one(name: str, duration: float, warmup: float, connections: int) -> dict[str, object]:
    port = _free_port()
    cmd = NICE + ["taskset", "-c", "0"] + _commands(port)[name]
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not _responds(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{name} did not start: {' '.join(cmd)}\n{err[-2000:]}")
            time.sleep(0.2)
        if warmup:
            _wrk(port, warmup, connections)
        rps, errors = _wrk(port, duration, connections)
        return {"server": name, "requests_per_second": rps, "errors": errors, "loadavg": _loadavg()}
    finally:
        _stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(_commands(0)),
                        help="run only this server (repeatable)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of the warm-up run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--nice", type=int, default=0,
                        help="run servers and wrk at this nice level (e.g. -10, as root) so that other "
                             "work on a shared machine disturbs the measurement less")
    args = parser.parse_args()
    if args.nice:
        NICE[:] = ["nice", "-n", str(args.nice)]
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found; install it (make sysdeps installs wrk and util-linux)",
                  file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("bench: needs 2 CPUs (server on CPU 0, wrk on CPU 1)", file=sys.stderr)
        return 2

    names = args.only or DEFAULT_ORDER
    results: dict[str, dict[str, object]] = {}
    print(f"wrk -t1 -c{args.connections} -d{args.duration:g}s after a {args.warmup:g}s warm-up; "
          f"server on CPU 0, wrk on CPU 1; app {APP}" + (f"; nice {args.nice}" if args.nice else ""))
    for name in names:
        result = run_one(name, args.duration, args.warmup, args.connections)
        results[name] = result
        note = f"  ({result['errors']})" if result["errors"] else ""
        print(f"  {name:14s} {result['requests_per_second']:>10,.0f} req/s   (load average "
              f"{result['loadavg']:.2f}){note}", flush=True)

    ratios: dict[str, float] = {}
    corral = results.get("corral") or results.get("corral-engine")
    if corral:
        for other in ("uvicorn", "granian", "bare"):
            if other in results:
                ratio = float(corral["requests_per_second"]) / float(results[other]["requests_per_second"])
                ratios[f"corral/{other}"] = round(ratio, 2)
                print(f"  corral/{other:8s} {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "duration": args.duration, "warmup": args.warmup, "connections": args.connections,
            "nice": args.nice,
            "results": results, "ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
