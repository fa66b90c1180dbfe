"""Hello-world WSGI benchmark: corral (inline and 8 threads) vs granian WSGI vs gunicorn gthread.

    python tests/bench/bench_wsgi.py [--only NAME]... [--duration 10] [--warmup 3] [--json results.json]

Same method as the ASGI benchmark (tests/bench/bench.py): each server runs
alone with one worker, pinned to CPU 0 (``taskset -c 0``); wrk runs pinned to
CPU 1 (``wrk -t1 -c64``): a warm-up run, then the measured run. Every server
serves ``corral.demo.hello:wsgi``.

  corral-inline   corral run -w 1 --interface wsgi, threads: 0 (the app runs on the event loop)
  corral-threads  the same with threads: 8 (CORRAL_THREADS=8)
  granian         granian --interface wsgi --workers 1 --blocking-threads 1
  gunicorn        gunicorn -w 1 --threads 8 (the gthread worker)

Prints requests/s, CPU microseconds per request (the server's whole process
tree), and the two target ratios: corral-inline / granian (>= 1.1) and
corral-threads / gunicorn (>= 3.0). Not a test: run it by hand or with
``make bench``. On a busy machine the req/s ratios are noisy (the load average
is printed): ``--rounds N`` alternates the servers and uses medians, and the
CPU-per-request ratio is the steadier measure of the two. With rounds, each
ratio is the median of the per-round ratios (a round runs the servers back to
back, so they share the machine's slow spells), printed with its range.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchlib import BIN, check_tools, free_port, run_server

APP = "corral.demo.hello:wsgi"
# Each pair compared by a target runs back to back within a round.
ORDER = ["corral-inline", "granian", "corral-threads", "gunicorn"]
TARGETS = [("corral-inline", "granian", 1.1), ("corral-threads", "gunicorn", 3.0)]


def commands(port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Per server: the command line and extra environment."""
    addr = f"127.0.0.1:{port}"
    corral = [str(BIN / "corral"), "run", "-w", "1", "--interface", "wsgi", "-b", addr, "--log-level", "warning",
              APP]
    # A name of its own: another corral on this machine must not collide with the bench's control socket.
    name = {"CORRAL_CONTROL_SOCKET": f"/tmp/corral-bench-wsgi-{os.getpid()}.sock"}
    return {
        "corral-inline": (corral, {"CORRAL_THREADS": "0", **name}),
        "corral-threads": (corral, {"CORRAL_THREADS": "8", **name}),
        "granian": ([str(BIN / "granian"), "--interface", "wsgi", "--workers", "1", "--blocking-threads", "1",
                     "--no-access-log", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", APP],
                    {}),
        "gunicorn": ([str(BIN / "gunicorn"), "-w", "1", "--threads", "8", "-b", addr, "--log-level", "warning",
                      APP], {}),
    }


def run_one(name: str, duration: float, warmup: float, connections: int) -> dict[str, object]:
    port = free_port()
    cmd, extra_env = commands(port)[name]
    return run_server(name, cmd, port, extra_env=extra_env, duration=duration, warmup=warmup,
                      connections=connections, nice=[])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=ORDER, help="run only this server (repeatable)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of the warm-up run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every server this many times, alternating, and use each one's median "
                             "(for a noisy machine)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if (status := check_tools("bench_wsgi")) is not None:
        return status

    names = args.only or ORDER
    print(f"WSGI: wrk -t1 -c{args.connections} -d{args.duration:g}s after a {args.warmup:g}s warm-up; "
          f"server on CPU 0, wrk on CPU 1; app {APP}")
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        if args.rounds > 1:
            print(f" round {round_no + 1}/{args.rounds}")
        for name in names:
            result = run_one(name, args.duration, args.warmup, args.connections)
            runs[name].append(result)
            note = f"  ({result['errors']})" if result["errors"] else ""
            print(f"  {name:<15} {result['requests_per_second']:>10,.0f} req/s  "
                  f"{result['cpu_us_per_request']:>6} us CPU/req   load {result['loadavg']:.2f}{note}", flush=True)
    # With several rounds, each server's median run counts.
    results = {name: sorted(rs, key=lambda r: r["requests_per_second"])[len(rs) // 2]  # type: ignore[arg-type,return-value]
               for name, rs in runs.items()}
    ratios = {}
    for ours, theirs, target in TARGETS:
        if ours in runs and theirs in runs:
            # Paired by round: the two ran seconds apart, so a slow spell of the
            # machine weighs on both; the median of the per-round ratios counts.
            paired = sorted(a["requests_per_second"] / b["requests_per_second"]  # type: ignore[operator]
                            for a, b in zip(runs[ours], runs[theirs]))
            cpu_paired = sorted(b["cpu_us_per_request"] / a["cpu_us_per_request"]  # type: ignore[operator]
                                for a, b in zip(runs[ours], runs[theirs]))
            ratio, cpu_ratio = paired[len(paired) // 2], cpu_paired[len(cpu_paired) // 2]
            ratios[f"{ours}/{theirs}"] = round(ratio, 2)
            verdict = "meets" if ratio >= target else "MISSES"
            spread = f" (rounds {paired[0]:.2f}..{paired[-1]:.2f})" if len(paired) > 1 else ""
            print(f"  {ours} / {theirs} = {ratio:.2f}x req/s{spread}, {verdict} the >= {target:g}x target; "
                  f"{cpu_ratio:.2f}x by CPU per request")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "results": results, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
