"""Hello-world ASGI benchmark: corral vs uvicorn vs granian vs a bare uvloop+httptools responder.

    python tests/bench/bench.py [--only NAME]... [--duration 10] [--warmup 3] [--json results.json]

The issue's targets are corral >= 2.0x uvicorn and >= 1.0x granian. "uvicorn" is
uvicorn as the issue measured it, as a new user runs it (httptools + uvloop,
otherwise its defaults: access log on); "uvicorn-nolog" is the like-for-like
row, its access log off as corral's is by default. Both ratios are printed.

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
import sys
from pathlib import Path

from benchlib import BIN, REPO, check_tools, free_port, run_server

APP = "corral.demo.hello:asgi"


def _commands(port: int) -> dict[str, list[str]]:
    addr = f"127.0.0.1:{port}"
    return {
        "corral": [str(BIN / "corral"), "run", "-w", "1", "-b", addr, "--log-level", "warning", APP],
        "corral-engine": [sys.executable, str(REPO / "tests/engine/serve.py"), "--app", APP, "--bind", addr,
                          "--log-level", "warning"],
        # uvicorn as the issue measured it, "as a new user would": httptools and
        # uvloop, everything else default (so its access log is on, as corral's is off).
        "uvicorn": [str(BIN / "uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
                    "--http", "httptools"],
        # Like for like: uvicorn with its access log off too.
        "uvicorn-nolog": [str(BIN / "uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port), "--loop",
                          "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        "granian": [str(BIN / "granian"), "--interface", "asgi", "--workers", "1", "--no-access-log",
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", APP],
        "bare": [sys.executable, str(REPO / "tests/bench/bare_server.py"), str(port)],
    }


DEFAULT_ORDER = ["corral", "uvicorn", "uvicorn-nolog", "granian", "bare"]


NICE: list[str] = []  # ["nice", "-n", "-10"] with --nice -10


def run_one(name: str, duration: float, warmup: float, connections: int) -> dict[str, object]:
    port = free_port()
    return run_server(name, _commands(port)[name], port, duration=duration, warmup=warmup,
                      connections=connections, nice=NICE)


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
    if (status := check_tools("bench")) is not None:
        return status

    names = args.only or DEFAULT_ORDER
    results: dict[str, dict[str, object]] = {}
    print(f"wrk -t1 -c{args.connections} -d{args.duration:g}s after a {args.warmup:g}s warm-up; "
          f"server on CPU 0, wrk on CPU 1; app {APP}" + (f"; nice {args.nice}" if args.nice else ""))
    for name in names:
        result = run_one(name, args.duration, args.warmup, args.connections)
        results[name] = result
        note = f"  ({result['errors']})" if result["errors"] else ""
        print(f"  {name:14s} {result['requests_per_second']:>10,.0f} req/s  "
              f"{result['cpu_us_per_request']:>6} us CPU/req   (load average {result['loadavg']:.2f}){note}",
              flush=True)

    ratios: dict[str, float] = {}
    corral = results.get("corral") or results.get("corral-engine")
    if corral:
        for other in ("uvicorn", "uvicorn-nolog", "granian", "bare"):
            if other in results:
                ratio = float(corral["requests_per_second"]) / float(results[other]["requests_per_second"])
                ratios[f"corral/{other}"] = round(ratio, 2)
                print(f"  corral/{other:13s} {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "duration": args.duration, "warmup": args.warmup, "connections": args.connections,
            "nice": args.nice,
            "results": results, "ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
