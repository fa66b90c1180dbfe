"""What metrics cost: hello-world throughput of corral with metrics off and on, in alternating rounds.

    python tests/bench/bench_metrics.py [--rounds 5] [--duration 10] [--scrape-interval 1]

The set-up is `make bench`'s (tests/bench/bench.py): ``corral run -w 1`` serving
``corral.demo.hello:asgi``, supervisor and worker pinned to CPU 0; ``wrk -t1 -c64`` pinned
to CPU 1, a warm-up run, then the measured run.

* off: no metrics socket. The workers' stats and heartbeats exist anyway (the supervisor's
  health checks and STATUS= use them), so this is corral without any scraping.
* on: ``metrics_bind:`` set, and a scraper on CPU 1 fetching ``/metrics`` every
  ``--scrape-interval`` seconds (Prometheus scrapes every 15 s by default).

Rounds alternate off/on (and which comes first) so that a noisy machine hurts both alike;
the result is the median of the per-round on/off ratios. On a shared machine req/s swings by
far more than 2% between runs, so two figures that barely depend on what else runs are
reported too: the CPU time corral (supervisor and worker) spends per request, and the
supervisor's own CPU time, which is where scrapes are answered.
Not a test (pytest does not collect it): run it by hand.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import free_port, stop

BIN = Path(sys.executable).parent
APP = "corral.demo.hello:asgi"
TICKS = os.sysconf("SC_CLK_TCK")


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _wrk(port: int, seconds: float, connections: int) -> tuple[float, int]:
    """(requests per second, requests completed)."""
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s",
                          f"http://127.0.0.1:{port}/"], check=True, capture_output=True, text=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rate or not count or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")
    return float(rate.group(1)), int(count.group(1))


class _Scraper(threading.Thread):
    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.count = 0
        self.seconds = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        os.sched_setaffinity(0, {1})  # this thread only: keep scraping off the server's CPU
        while not self.stop.wait(self.interval):
            start = time.perf_counter()
            status, body = _get(self.port, "/metrics")
            self.seconds += time.perf_counter() - start
            if status != 200 or b"corral_requests_total" not in body:
                raise RuntimeError(f"scrape failed: {status}")
            self.count += 1


def run_once(metrics: bool, duration: float, warmup: float, connections: int,
             scrape_interval: float) -> dict[str, float]:
    port, metrics_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CORRAL_CONTROL_SOCKET=f"{tmp}/control.sock")
        if metrics:
            env["CORRAL_METRICS_BIND"] = f"127.0.0.1:{metrics_port}"
        cmd = ["taskset", "-c", "0", str(BIN / "corral"), "run", "-w", "1", "-b", f"127.0.0.1:{port}",
               "--log-level", "warning", APP]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if _get(port, "/")[0] == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"corral did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
            supervisor = proc.pid  # taskset execs corral: the same pid is the supervisor
            workers = _children(supervisor)
            _wrk(port, warmup, connections)
            scraper = _Scraper(metrics_port, scrape_interval) if metrics else None
            if scraper:
                scraper.start()
            cpu_before = [_cpu_seconds(p) for p in (supervisor, *workers)]
            rps, count = _wrk(port, duration, connections)
            cpu = [_cpu_seconds(p) - c for p, c in zip((supervisor, *workers), cpu_before)]
            if scraper:
                scraper.stop.set()
                scraper.join()
            return {"rps": rps, "supervisor_cpu": cpu[0], "cpu_us_per_request": 1e6 * sum(cpu) / count,
                    "scrapes": scraper.count if scraper else 0,
                    "scrape_ms": 1000 * scraper.seconds / scraper.count if scraper and scraper.count else 0.0}
        finally:
            stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        print("bench_metrics: needs 2 CPUs (server on CPU 0, wrk on CPU 1)", file=sys.stderr)
        return 2
    print(f"wrk -t1 -c{args.connections} -d{args.duration:g}s (after {args.warmup:g}s warm-up), corral -w 1 "
          f"on CPU 0; metrics on = metrics_bind + a scrape every {args.scrape_interval:g}s")
    ratios, cpu_ratios, offs, ons = [], [], [], []
    for i in range(args.rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        runs = {m: run_once(m, args.duration, args.warmup, args.connections, args.scrape_interval)
                for m in order}
        off, on = runs[False], runs[True]
        offs.append(off)
        ons.append(on)
        ratios.append(on["rps"] / off["rps"])
        cpu_ratios.append(on["cpu_us_per_request"] / off["cpu_us_per_request"])
        print(f"  round {i + 1}: off {off['rps']:>8,.0f} req/s {off['cpu_us_per_request']:5.1f} us cpu/req "
              f"(supervisor {off['supervisor_cpu']:.2f}s)   on {on['rps']:>8,.0f} req/s "
              f"{on['cpu_us_per_request']:5.1f} us cpu/req (supervisor {on['supervisor_cpu']:.2f}s, "
              f"{on['scrapes']} scrapes, {on['scrape_ms']:.1f} ms each)", flush=True)
    med = statistics.median
    print(f"req/s: median off {med(r['rps'] for r in offs):,.0f}, on {med(r['rps'] for r in ons):,.0f}; "
          f"median on/off {med(ratios):.3f} ({100 * (1 - med(ratios)):+.1f}% cost; noise: ratios "
          f"{min(ratios):.2f}..{max(ratios):.2f})")
    print(f"cpu per request: median off {med(r['cpu_us_per_request'] for r in offs):.2f} us, "
          f"on {med(r['cpu_us_per_request'] for r in ons):.2f} us; median on/off {med(cpu_ratios):.3f} "
          f"({100 * (med(cpu_ratios) - 1):+.1f}% cost; ratios {min(cpu_ratios):.2f}..{max(cpu_ratios):.2f})")
    print(f"supervisor CPU per {args.duration:g}s run: off {med(r['supervisor_cpu'] for r in offs):.2f}s, "
          f"on {med(r['supervisor_cpu'] for r in ons):.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
