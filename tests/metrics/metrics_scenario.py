"""A realistic corral state, fed through the supervisor-facing API the way the supervisor does.

Used by the tests (promtool, invariants) and to print the sample scrape in the
README: ``python tests/metrics/metrics_scenario.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import tempfile
from typing import Iterator

from corral.metrics.registry import Metrics

# The engine's bucket bounds (corral.engine.stats.DURATION_BUCKETS, which the worker sends in
# its heartbeats); repeated here because these tests must not import the engine.
BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
MIB = 1 << 20


class EngineStats:
    """Counters as one worker's engine keeps them, grown by ``serve``; ``snapshot`` is a heartbeat."""

    _CLASS_WEIGHTS = [0, 95.3, 1.0, 3.5, 0.2]
    # Most requests fast, with a thin tail.
    _BUCKET_WEIGHTS = [5, 30, 30, 15, 8, 5, 3, 2, 1, 0.5, 0.3, 0.1, 0.05, 0.02, 0.01, 0.01]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.requests = 0
        self.responses = [0] * 5
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.duration = 0.0
        self.in_flight = 0
        self.accepted = 0

    def serve(self, n: int, in_flight: int = 0) -> "EngineStats":
        self.requests += n + in_flight - self.in_flight
        self.in_flight = in_flight
        for cls in self.rng.choices(range(5), self._CLASS_WEIGHTS, k=n):
            self.responses[cls] += 1
        for b in self.rng.choices(range(len(self.buckets)), self._BUCKET_WEIGHTS, k=n):
            self.buckets[b] += 1
            self.duration += BOUNDS[b] * 0.7 if b < len(BOUNDS) else 75.0
        self.accepted += -(-n // 9)
        return self

    def snapshot(self) -> dict:
        return {
            "requests_total": self.requests,
            "responses": dict(zip(("1xx", "2xx", "3xx", "4xx", "5xx"), self.responses)),
            "in_flight": self.in_flight,
            "oldest_in_flight": None,
            "connections_open": 2 + self.in_flight,
            "connections_accepted": self.accepted,
            "duration_buckets": list(BOUNDS),
            "duration_counts": list(self.buckets),
            "duration_sum": round(self.duration, 6),
        }


def heartbeat(requests: int, rng: random.Random, in_flight: int = 0) -> dict:
    """A heartbeat of a worker that received ``requests`` requests."""
    return EngineStats(rng).serve(requests - in_flight, in_flight).snapshot()


@contextlib.contextmanager
def realistic_metrics(pending_http: int = 2, http_addr: tuple[str, int] = ("127.0.0.1", 0),
                      metrics_addr: tuple[str, int] = ("127.0.0.1", 0),
                      unix_dir: str | None = None) -> Iterator[Metrics]:
    """4 workers of generation 2 after one good reload, one failed reload and three restarts;
    an http TCP listener with ``pending_http`` unaccepted connections, a unix one, and the
    metrics socket."""
    rng = random.Random(7)
    opened: list[socket.socket] = []
    tmp = tempfile.TemporaryDirectory()
    try:
        now = [1000.0]
        m = Metrics(clock=lambda: now[0])
        m.set_desired_workers(4)
        http = socket.socket()
        opened.append(http)
        http.bind(http_addr)
        http.listen(2048)
        unix = socket.socket(socket.AF_UNIX)
        opened.append(unix)
        unix.bind(os.path.join(unix_dir or tmp.name, "app.sock"))
        unix.listen(2048)
        metrics_sock = socket.socket()
        opened.append(metrics_sock)
        metrics_sock.bind(metrics_addr)
        metrics_sock.listen(64)
        m.add_listener(http, "http")
        m.add_listener(unix, "http")
        m.add_listener(metrics_sock, "metrics", app_traffic=False)
        for _ in range(pending_http):
            opened.append(socket.create_connection(http.getsockname()))

        # Generation 1: four workers; one crashed, one recycled for memory, then a reload.
        m.set_generation(1)
        pid = 41230
        for slot in range(4):
            m.worker_started(pid + slot, slot=slot, generation=1)
            m.worker_ready(pid + slot)
        m.worker_heartbeat(pid + 1, heartbeat(1830, rng))
        m.worker_exited(pid + 1, restart_reason="crash")
        m.worker_started(pid + 4, slot=1, generation=1)
        m.worker_ready(pid + 4)
        m.worker_heartbeat(pid + 2, heartbeat(20417, rng))
        m.worker_process(pid + 2, rss_bytes=412 * MIB, uss_bytes=398 * MIB, cpu_seconds=95.2,
                         open_fds=31)
        m.worker_exited(pid + 2, restart_reason="memory")
        m.worker_started(pid + 5, slot=2, generation=1)
        m.worker_ready(pid + 5)
        m.worker_started(pid + 9, slot=0, generation=2)  # a bad deploy: fails to import
        m.worker_exited(pid + 9, restart_reason=None)
        m.reload_finished("rolled_back", 4.7)
        for p in (pid, pid + 3, pid + 4, pid + 5):
            m.worker_heartbeat(p, heartbeat(rng.randrange(9000, 12000), rng))
        for slot in range(4):
            m.worker_started(pid + 20 + slot, slot=slot, generation=2)
            m.worker_ready(pid + 20 + slot)
        m.set_generation(2)
        for p in (pid, pid + 3, pid + 4, pid + 5):
            m.worker_draining(p)
            m.worker_exited(p, restart_reason="reload")
        m.reload_finished("success", 6.3)

        engines = [EngineStats(rng).serve(rng.randrange(30000, 34000)) for _ in range(4)]
        for _second in range(3):  # three heartbeats a second apart: ~300 req/s per worker
            now[0] += 1.0
            for slot, engine in enumerate(engines):
                engine.serve(rng.randrange(280, 320), in_flight=rng.randrange(0, 4))
                m.worker_heartbeat(pid + 20 + slot, engine.snapshot())
        for slot in range(4):
            p = pid + 20 + slot
            m.worker_process(p, rss_bytes=(61 + slot) * MIB, uss_bytes=(48 + slot) * MIB,
                             cpu_seconds=round(40 + rng.random() * 5, 2), open_fds=19 + slot)
        m.set_loop_lag(0.00042)
        yield m
    finally:
        for s in opened:
            s.close()
        tmp.cleanup()


# Families and series left out of the README's abridged sample (``--readme``).
_README_SKIP_FAMILIES = {
    "corral_worker_start_time_seconds", "corral_worker_heartbeat_age_seconds",
    "corral_worker_oldest_request_age_seconds", "corral_worker_connections_open",
    "corral_worker_connections_accepted_total", "corral_worker_open_fds",
    "corral_worker_generation", "corral_worker_cpu_seconds_total", "process_max_fds",
    "process_start_time_seconds", "process_open_fds", "process_cpu_seconds_total",
    "corral_last_reload_timestamp_seconds", "corral_workers_cpu_seconds_total",
}


def _family_of(line: str) -> str:
    if line.startswith("# "):
        return line.split()[2]
    name = line.split("{")[0].split(" ")[0]
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[:-len(suffix)] in (
                "corral_request_duration_seconds", "corral_reload_duration_seconds"):
            return name[:-len(suffix)]
    return name


def abridge(text: str) -> str:
    """Real scrape lines only, with ``# …`` where lines were left out."""
    out, skipped = [], False
    for line in text.splitlines():
        drop = (_family_of(line) in _README_SKIP_FAMILIES
                or 'worker="2"' in line or 'worker="3"' in line
                or (line.startswith("corral_worker_requests_total") and 'worker="1"' in line)
                or 'outcome="aborted"' in line or 'outcome="rolled_back"' in line)
        if drop:
            skipped = True
            continue
        if skipped:
            out.append("# …")
            skipped = False
        out.append(line)
    if skipped:
        out.append("# …")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys
    # For the README: the addresses of a typical deployment, if free here.
    run_dir = "/run/myapp"
    try:
        os.mkdir(run_dir)
    except OSError:
        run_dir = tempfile.mkdtemp(prefix="myapp-")
    try:
        with realistic_metrics(http_addr=("127.0.0.1", 8000), metrics_addr=("127.0.0.1", 9108),
                               unix_dir=run_dir) as metrics:
            scrape = metrics.render()
            print(abridge(scrape) if "--readme" in sys.argv else scrape, end="")
            print("# STATUS=" + metrics.status_line())
    finally:
        shutil.rmtree(run_dir)
