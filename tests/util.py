"""Small helpers shared by the test-suite.

The machine the tests run on is noisy: never sleep a fixed time, poll a condition
with a generous deadline instead (``wait_until``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httptools

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CORRAL = str(VENV_BIN / "corral")

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # the condition may raise until it holds
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Stop a process we started (by pid), escalating to SIGKILL of its group."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait(10)
    return proc.returncode


# --------------------------------------------------------------------------- HTTP responses


@dataclass
class Response:
    """One HTTP response as a client saw it (every suite parses into this one class)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False  # the body ended as its framing said (not cut short by a close)
    raw: bytes = b""  # the head's bytes as received, where the reader keeps them (wsgi_util.recv_response)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self) -> list[str]:
        return [key.lower() for key, _ in self.headers]

    def json(self) -> Any:
        return json.loads(self.body)


class _Collector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.current: Response | None = None
        self.parser: Any = None

    def on_message_begin(self) -> None:
        self.current = Response(0)
        self.responses.append(self.current)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True


def parse_responses(data: bytes, head: bool = False) -> list[Response]:
    """Split raw bytes into responses (the last one may be incomplete).

    With ``head=True`` every response is taken to have no body (answers to HEAD).
    A close-delimited body (no Content-Length, no chunked) is collected but never
    marked complete: the parser would need to see the EOF.
    """
    if head:
        responses = []
        for block in data.split(b"\r\n\r\n")[:-1]:
            lines = block.decode("latin-1").split("\r\n")
            resp = Response(int(lines[0].split()[1]), complete=True)
            for line in lines[1:]:
                name, _, value = line.partition(":")
                resp.headers.append((name, value.strip()))
            responses.append(resp)
        return responses
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as exc:
        raise AssertionError(f"unparseable response bytes: {exc}: {data[:300]!r}") from None
    return collector.responses


# --------------------------------------------------------------------------- closed-loop load


@dataclass
class Result:
    """One request of a :class:`Load`: when it went out, and what came back or how it failed."""

    sent: float  # time.monotonic() when the request was sent
    finished: float = 0.0  # ... and when it completed or failed
    status: int | None = None
    version: str | None = None  # the app's x-app-version header
    pid: int | None = None  # the worker's x-worker-pid header
    error: str | None = None  # "reset", "refused", "timeout" or "other: ..."
    detail: str = ""  # how it failed: the exception chain, and on which connection (for a failure's message)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Load:
    """Closed-loop httpx load against 127.0.0.1:port until stopped; every request is recorded.

    ``clients`` threads, each with its own client and one keep-alive connection;
    with ``fresh_every`` N > 0, every Nth thread opens a new connection per request
    instead (the accept path is exercised too). Nothing is retried: httpx's
    transport retries are off, so a failed request counts as one. A pooled
    connection the server closed is not reused (httpx checks it first, as a
    browser does), which is what a well-behaved client does while workers drain.
    """

    port: int
    clients: int = 8
    fresh_every: int = 0
    path: str = "/"
    timeout: float = 60.0
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for index in range(self.clients):
            fresh = self.fresh_every > 0 and index % self.fresh_every == self.fresh_every - 1
            thread = threading.Thread(target=self._run, args=(fresh,), daemon=True, name=f"load-{index}")
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 10)

    # -- counts ----------------------------------------------------------------------------

    def done(self) -> list[Result]:
        return list(self.results)

    def ok(self) -> int:
        return sum(1 for r in self.done() if r.ok)

    def failures(self) -> list[Result]:
        return [r for r in self.done() if not r.ok]

    def failed(self) -> int:
        return len(self.failures())

    def total(self) -> int:
        return len(self.results)

    def errors(self) -> list[str]:
        """What each failed request got: its status or how it failed (for assertion messages)."""
        return [f"status {r.status}" if r.status is not None else f"{r.error} ({r.detail})" for r in self.failures()]

    def count(self, error: str) -> int:
        return sum(1 for r in self.done() if r.error == error)

    def ok_between(self, start: float, end: float) -> int:
        """Successful requests sent within [start, end)."""
        return sum(1 for r in self.done() if start <= r.sent < end and r.ok)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time within [start, end] in which no request completed successfully."""
        times = sorted(r.finished for r in self.done() if r.ok and start <= r.finished <= end)
        points = [start, *times, end]
        return max(b - a for a, b in zip(points, points[1:]))

    def wait_for_more(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` more requests succeeded than now (service is flowing)."""
        base = self.ok()
        wait_until(lambda: self.ok() >= base + n, timeout, 0.02, f"{n} more successful requests")

    def summary(self) -> dict[str, Any]:
        return {"sent": self.total(), "ok": self.ok(), "failed": self.failed(),
                "reset": self.count("reset"), "refused": self.count("refused"), "timeout": self.count("timeout")}

    # -- the client threads -------------------------------------------------------------------

    def _run(self, fresh: bool) -> None:
        import httpx  # only the suites that put load on a server need it

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=0 if fresh else 1)
        transport = httpx.HTTPTransport(retries=0, limits=limits)
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", transport=transport,
                          timeout=self.timeout) as client:
            answered = 0  # on this client's kept-alive connection (or, when fresh, on new ones)
            while not self._stop.is_set():
                result = Result(sent=time.monotonic())
                failure: httpx.HTTPError | None = None
                try:
                    response = client.get(self.path)
                    answered += 1
                    result.status = response.status_code
                    result.version = response.headers.get("x-app-version")
                    result.pid = int(response.headers.get("x-worker-pid", "0"))
                except httpx.HTTPError as exc:
                    failure = exc
                    result.error = _classify(exc)
                result.finished = time.monotonic()
                if failure is not None:
                    result.detail = _failure_detail(failure, fresh, answered, result)
                    answered = 0
                self.results.append(result)


def _classify(exc: BaseException) -> str:
    """A failed request's kind: "timeout", "refused", "reset" or "other: ..."."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        code = _errno(exc)
        if code == errno.ECONNREFUSED:
            return "refused"
        # Reset while connecting: the connection sat in the accept queue of a listener that closed.
        return "reset" if code == errno.ECONNRESET else f"other: {exc!r}"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        # The server dropped the connection under the request: RST or EOF mid-exchange.
        return "reset" if _errno(exc) in (errno.ECONNRESET, errno.EPIPE, None) else f"other: {exc!r}"
    return f"other: {exc!r}"


def _failure_detail(exc: BaseException, fresh: bool, answered: int, result: Result) -> str:
    """What a failed request met, for the assertion message: the exception chain (so that a reset
    tells an RST from an EOF), the kind of connection, and when it failed (monotonic)."""
    chain = [f"{type(e).__name__}: {e}" for e in _chain(exc)][:4]
    conn = "a new connection per request" if fresh else f"kept alive, {answered} answered on it before"
    return f"{' <- '.join(chain)}; {conn}; sent at {result.sent:.3f}, failed after {result.finished - result.sent:.3f}s"


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and what caused it, in turn (each once: a chain can loop)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _errno(exc: BaseException | None) -> int | None:
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.errno
    return None


# --------------------------------------------------------------------------- `corral run` under test


def _children_of(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001  (gone already, or psutil missing: nothing left to find)
        return []


class Corral:
    """``corral run`` as a plain child process (no systemd) from a config in ``tmp_path``.

    Use as a context manager (it starts on entry if not started yet): it is
    always stopped and reaped, and workers a failed test left behind are
    killed by pid. The suites subclass it for their defaults (their app
    directory, a deployable app).
    """

    config_name = "corral.yaml"

    def __init__(self, tmp_path: Path, app: str, app_dir: Path, workers: int = 2,
                 env: dict[str, str] | None = None, args: list[str] | None = None,
                 graceful_timeout: float = 10, **config: Any) -> None:
        self.port = free_port()
        self.tmp = tmp_path
        self.app_dir = app_dir
        self.config_path = tmp_path / self.config_name
        self.control = str(tmp_path / "control.sock")
        self.config: dict[str, Any] = {
            "app": app, "app_dir": str(app_dir), "workers": workers, "bind": [f"127.0.0.1:{self.port}"],
            "control_socket": self.control, "graceful_timeout": graceful_timeout, **config,
        }
        self.env = {**os.environ, **(env or {})}
        self.args = args or []
        self.log_path = tmp_path / "corral.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, **changes: Any) -> None:
        import yaml

        self.config.update(changes)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, wait: bool = True) -> Corral:
        self.write_config()
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen([CORRAL, "run", "--config", str(self.config_path), *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def __enter__(self) -> Corral:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        children = _children_of(self.proc.pid) if self.proc.poll() is None else []
        try:
            return stop_process(self.proc, sig, timeout)
        finally:
            for pid in children:  # workers are in their own process groups: by pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._log.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # ------------------------------------------------------------------ queries

    def status(self, json_output: bool = True) -> Any:
        out = subprocess.run([CORRAL, "status", "--control-socket", self.control,
                              *(["--json"] if json_output else [])], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"corral status failed: {out.stderr}")
        return json.loads(out.stdout) if json_output else out.stdout

    def status_fast(self) -> dict[str, Any]:
        """The same as status(), straight over the control socket (no CLI start-up: for timing)."""
        from corral.supervisor.control import request

        return request(self.control, {"cmd": "status"}, timeout=20)

    def ready_workers(self, generation: int | None = None) -> list[dict[str, Any]]:
        return [w for w in self.status()["workers"] if w["state"] == "ready"
                and (generation is None or w["generation"] == generation)]

    def wait_ready(self, count: int | None = None, timeout: float = 90.0, exact: bool = False) -> dict[str, Any]:
        """Wait until the phase is running with ``count`` ready workers (default: as configured);
        ``exact``: and no other worker (none booting or draining)."""
        count = self.config["workers"] if count is None else count

        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"corral exited with {self.proc.returncode}:\n{self.log()}")
            data = self.status()
            serving = [w for w in data["workers"] if w["state"] == "ready"]
            enough = len(serving) == len(data["workers"]) == count if exact else len(serving) >= count
            return data if data["phase"] == "running" and enough else None

        return wait_until(ready, timeout, 0.1, f"{count} ready workers")

    def get(self, path: str = "/", timeout: float = 30.0) -> tuple[int, bytes, dict[str, str]]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def reload(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CORRAL, "reload", "--control-socket", self.control], capture_output=True,
                              text=True, timeout=timeout)

    def reload_async(self) -> subprocess.Popen[str]:
        return subprocess.Popen([CORRAL, "reload", "--control-socket", self.control], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
