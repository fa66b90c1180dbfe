"""Helpers for the observability tests: scraping, reading samples, bounded traffic."""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping

import httpx

import util
from util import REPO


def _load_promtext_parse() -> Any:
    # tests/metrics has the independent exposition parser; loaded by path, since a top-level
    # package named "metrics" in the environment would shadow tests/metrics.
    import importlib.util
    import sys

    name = "promtext_parse"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "metrics" / "promtext_parse.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


parse = _load_promtext_parse().parse

APPS = Path(__file__).resolve().parent / "apps"

Sample = tuple[str, dict[str, str], float]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def scrape(where: int | str, timeout: float = 10.0) -> str:
    """``GET /metrics`` from a TCP port on 127.0.0.1 or a unix socket path; the body (asserts 200)."""
    conn = (_UnixHTTPConnection(where, timeout) if isinstance(where, str)
            else http.client.HTTPConnection("127.0.0.1", where, timeout=timeout))
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        assert response.getheader("content-type", "").startswith("text/plain; version=0.0.4")
        return body
    finally:
        conn.close()


def samples(text: str) -> list[Sample]:
    return parse(text)[1]


def value(data: list[Sample], metric: str, /, **labels: str) -> float:
    """The one sample of ``metric`` that has these labels (and maybe others)."""
    found = [v for n, lb, v in data if n == metric and all(lb.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples"
    return found[0]


def total(data: list[Sample], metric: str, /, **labels: str) -> float:
    """The sum of every sample of ``metric`` that has these labels."""
    return sum(v for n, lb, v in data if n == metric and all(lb.get(k) == w for k, w in labels.items()))


def requests_by_class(data: list[Sample]) -> dict[str, int]:
    return {lb["status"]: int(v) for n, lb, v in data if n == "corral_requests_total"}


def promtool_check(text: str) -> None:
    """``promtool check metrics`` on a scrape: no errors and no lint problems; and no series twice,
    which promtool lets pass but Prometheus rejects at ingestion."""
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), \
        f"promtool: rc={out.returncode}\n{out.stdout}\n{out.stderr}"
    seen = Counter((name, tuple(sorted(labels.items()))) for name, labels, _ in samples(text))
    assert not [series for series, n in seen.items() if n > 1], \
        f"series exported more than once: {[s for s, n in seen.items() if n > 1]}"


class Traffic:
    """A bounded batch of requests, sent by ``concurrency`` keep-alive clients (an httpx pool each).

    ``responses`` counts answers by status class; ``failures`` holds requests that got none.
    """

    def __init__(self, port: int, paths: Iterable[str], *, concurrency: int = 8,
                 headers: Mapping[str, str] | None = None, keepalive: bool = True,
                 method: str = "GET", body: bytes | None = None, timeout: float = 60.0) -> None:
        self.port = port
        self.paths = list(paths)
        self.concurrency = concurrency
        self.headers = dict(headers or {})
        if not keepalive:
            self.headers["connection"] = "close"
        self.method, self.body, self.timeout = method, body, timeout
        self.responses: Counter[str] = Counter()
        self.failures: list[str] = []
        self.pids: Counter[int] = Counter()
        self._lock = threading.Lock()

    def run(self) -> Traffic:
        chunks = [self.paths[i::self.concurrency] for i in range(self.concurrency)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(self._client, chunks))
        return self

    def _client(self, paths: list[str]) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=self.timeout,
                          limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as client:
            for path in paths:
                try:
                    response = client.request(self.method, path, headers=self.headers, content=self.body)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{path}: {exc!r}")
                    continue
                with self._lock:
                    self.responses[f"{response.status_code // 100}xx"] += 1
                    self.pids[int(response.headers.get("x-worker-pid", "0"))] += 1

    @property
    def answered(self) -> int:
        return sum(self.responses.values())


class Scraper:
    """Scrapes in a thread until stopped; keeps every scrape's samples (for monotonic checks)."""

    def __init__(self, where: int | str, interval: float = 0.2) -> None:
        self.where, self.interval = where, interval
        self.scrapes: list[list[Sample]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scrapes.append(samples(scrape(self.where)))
            except Exception as exc:  # asserted by the test
                self.errors.append(repr(exc))
            self._stop.wait(self.interval)


class CorralProcess(util.Corral):
    """``corral run`` serving tests/observability/apps (``util.Corral``); on entry every worker is ready."""

    def __init__(self, tmp_path: Path, app: str = "obsapp:app", workers: int = 2, **config: Any) -> None:
        super().__init__(tmp_path, app, APPS, workers, **config)

    def start(self, wait: bool = True) -> CorralProcess:
        super().start(wait=False)
        if wait:
            self.wait_workers(self.config["workers"])
        return self

    def wait_workers(self, count: int) -> dict[str, Any]:
        """``count`` workers, all ready, and no other (none booting or draining)."""
        return self.wait_ready(count, 60, exact=True)
