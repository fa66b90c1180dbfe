"""The differential harness for real apps: the same requests to corral and to the server users run today.

Each app under ``tests/realapps/apps/`` (or installed from PyPI: httpbin,
Datasette) is served by corral and by its users' server (gunicorn's sync worker
for WSGI, uvicorn for ASGI), each on its own loopback port. A test sends the
same request to both with a real client and compares what came back:

* the status;
* the headers, after :meth:`Answer.exchange` drops what legitimately differs
  between two servers (``Date``, ``Server``, the connection management and the
  framing: ``Connection``, ``Keep-Alive``, ``Transfer-Encoding`` and
  ``Content-Length``), and whatever the test names in ``ignore`` for one
  documented reason;
* the body, byte for byte, unless the test passes a ``body`` normaliser (for
  a value the app itself makes unique per response, such as a CSRF token).

Each server's own ``127.0.0.1:PORT`` reads ``127.0.0.1:PORT`` in both, since
apps echo it (httpbin's ``url``, a redirect's ``Location``).

:class:`Diff` counts the requests compared, so a test can assert it compared
what it meant to and the closing note can report the numbers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import httpx
import psutil

from util import CORRAL, VENV_BIN, free_port, stop_process, wait_until

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"

# Headers that differ between two correct servers: the server's identity and
# clock, and how it chose to manage and frame the connection.
FRAMING_HEADERS = frozenset({"date", "server", "connection", "keep-alive", "transfer-encoding", "content-length"})


# --------------------------------------------------------------------------- servers


class Served:
    """One server process on a loopback port, its output in a log file, stopped (by pid) at the end."""

    kind = "server"

    def __init__(self, cmd: list[str], port: int, log_path: Path, *, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, ready_path: str = "/") -> None:
        self.port = port
        self.cmd = cmd
        self.log_path = log_path
        self.ready_path = ready_path
        self._log = open(log_path, "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=full_env,
                                     start_new_session=True)
        try:
            wait_until(self._answers, 90, 0.05, f"{self.kind} answering on port {port}")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()}")
        try:
            httpx.get(self.url + self.ready_path, timeout=5)
        except httpx.HTTPError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            children = []
            try:
                children = [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
            except psutil.Error:
                pass
            stop_process(self.proc, signal.SIGTERM, 60)
            for pid in children:  # workers a failed stop left behind: ours, by pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CorralServer(Served):
    """``corral run`` with a config file of its own (and so a control socket of its own)."""

    kind = "corral"

    def __init__(self, tmp: Path, app: str, *, app_dir: Path, interface: str = "auto", threads: int = 0,
                 workers: int = 1, env: Mapping[str, str] | None = None, ready_path: str = "/",
                 **config: Any) -> None:
        port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        self.control = str(tmp / f"corral-{port}.sock")
        self.config_path = tmp / f"corral-{port}.json"
        self.config: dict[str, Any] = {"app": app, "app_dir": str(app_dir), "bind": [f"127.0.0.1:{port}"],
                                       "workers": workers, "interface": interface, "threads": threads,
                                       "control_socket": self.control, **config}
        self.config_path.write_text(json.dumps(self.config))
        super().__init__([CORRAL, "run", "--config", str(self.config_path)], port, tmp / f"corral-{port}.log",
                         env=env, ready_path=ready_path)

    def reload(self, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CORRAL, "reload", "--control-socket", self.control], capture_output=True,
                              text=True, timeout=timeout)

    def status(self) -> dict[str, Any]:
        out = subprocess.run([CORRAL, "status", "--json", "--control-socket", self.control],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def errors_logged(self) -> list[str]:
        """Lines the supervisor or a worker logged at ERROR or above."""
        return [line for line in self.log().splitlines() if " ERROR " in line or " CRITICAL " in line
                or "Traceback (most recent call last)" in line]


class GunicornServer(Served):
    """gunicorn's default sync worker: what a WSGI user runs today."""

    kind = "gunicorn"

    def __init__(self, tmp: Path, app: str, *, app_dir: Path, workers: int = 1,
                 env: Mapping[str, str] | None = None, ready_path: str = "/", extra: Iterable[str] = ()) -> None:
        port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        cmd = [str(VENV_BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", str(workers), "--chdir",
               str(app_dir), *extra, app]
        super().__init__(cmd, port, tmp / f"gunicorn-{port}.log", env=env, ready_path=ready_path)


class UvicornServer(Served):
    """uvicorn as its users start it (uvloop and httptools, as ``uvicorn[standard]`` picks)."""

    kind = "uvicorn"

    def __init__(self, tmp: Path, app: str, *, app_dir: Path, env: Mapping[str, str] | None = None,
                 ready_path: str = "/", extra: Iterable[str] = ()) -> None:
        port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        cmd = [str(VENV_BIN / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(app_dir),
               *extra, app]
        super().__init__(cmd, port, tmp / f"uvicorn-{port}.log", env=env, ready_path=ready_path)


# --------------------------------------------------------------------------- comparing


@dataclass
class Exchange:
    """What one server answered to one request, normalised for comparison."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def of(cls, response: httpx.Response, port: int, ignore: Iterable[str] = (),
           body: Callable[[bytes], bytes] | None = None) -> "Exchange":
        """Normalised; the server's own port (in a URL the app echoes: Host, Location) reads ``PORT``."""
        answer = Answer(response.status_code, list(response.headers.multi_items()), response.content)
        return answer.exchange(port, ignore, body)


@dataclass
class Diff:
    """Sends each request to both servers and asserts the normalised answers are equal; counts them."""

    ours: Served
    theirs: Served
    compared: int = 0
    log: list[str] = field(default_factory=list)

    def clients(self, **kwargs: Any) -> tuple[httpx.Client, httpx.Client]:
        """A client per server with the same settings (cookies are kept per client, as a browser would)."""
        return (httpx.Client(base_url=self.ours.url, timeout=60, **kwargs),
                httpx.Client(base_url=self.theirs.url, timeout=60, **kwargs))

    def same(self, method: str, path: str, *, clients: tuple[httpx.Client, httpx.Client] | None = None,
             ignore: Iterable[str] = (), body: Callable[[bytes], bytes] | None = None,
             **request: Any) -> tuple[httpx.Response, httpx.Response]:
        """Send one request to both; fail with both answers if they differ. Returns (ours, theirs)."""
        own = clients is None
        pair = clients or self.clients()
        try:
            ours = pair[0].request(method, path, **request)
            theirs = pair[1].request(method, path, **request)
        finally:
            if own:
                pair[0].close()
                pair[1].close()
        a = Exchange.of(ours, self.ours.port, ignore, body)
        b = Exchange.of(theirs, self.theirs.port, ignore, body)
        self.compared += 1
        self.log.append(f"{method} {path} -> {ours.status_code}")
        assert a == b, (f"{method} {path}: corral and {self.theirs.kind} differ\n"
                        f"corral:  {a.status} {a.headers}\n         {a.body[:2000]!r}\n"
                        f"{self.theirs.kind}: {b.status} {b.headers}\n         {b.body[:2000]!r}")
        return ours, theirs

    def compare(self, label: str, ours: "Answer", theirs: "Answer", *, ignore: Iterable[str] = (),
                body: Callable[[bytes], bytes] | None = None) -> None:
        """As :meth:`same`, for answers another client got (curl, a requests session); counted alike."""
        a = ours.exchange(self.ours.port, ignore, body)
        b = theirs.exchange(self.theirs.port, ignore, body)
        self.compared += 1
        self.log.append(f"{label} -> {ours.status}")
        assert a == b, (f"{label}: corral and {self.theirs.kind} differ\n"
                        f"corral:  {a.status} {a.headers}\n         {a.body[:2000]!r}\n"
                        f"{self.theirs.kind}: {b.status} {b.headers}\n         {b.body[:2000]!r}")


# --------------------------------------------------------------------------- other clients: curl, requests


@dataclass
class Answer:
    """A response as a client other than httpx saw it: the status, header pairs in order, the body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def exchange(self, port: int, ignore: Iterable[str] = (), body: Callable[[bytes], bytes] | None = None
                 ) -> Exchange:
        """Normalised as :meth:`Exchange.of` normalises an httpx response."""
        here = f"127.0.0.1:{port}"
        drop = FRAMING_HEADERS | {name.lower() for name in ignore}
        headers = [(name.lower(), value.replace(here, "127.0.0.1:PORT"))
                   for name, value in self.headers if name.lower() not in drop]
        content = self.body.replace(here.encode(), b"127.0.0.1:PORT")
        return Exchange(self.status, headers, body(content) if body is not None else content)


def curl(url: str, *args: str, timeout: float = 60) -> Answer:
    """Run ``curl`` (silent, errors shown, no retries) on ``url`` with ``args``; parse what came back.

    curl writes the response head with ``-i`` (or ``-I``) before the body;
    interim ``1xx`` heads (``100 Continue`` to an upload) are skipped. With
    ``--raw`` the body is the bytes on the wire, chunk framing included.
    """
    cmd = ["curl", "-sS", "--max-time", str(timeout), *args]
    if "-I" not in args and "--head" not in args:
        cmd.append("-i")
    out = subprocess.run([*cmd, url], capture_output=True, timeout=timeout + 30)
    assert out.returncode == 0, \
        f"{' '.join(cmd)} {url}: exit {out.returncode}: {out.stderr.decode(errors='replace')}"
    rest = out.stdout
    while True:
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if not 100 <= status < 200:
            break
    headers = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines[1:])]
    return Answer(status, headers, rest)


def from_requests(response: Any) -> Answer:
    """A ``requests.Response`` as an :class:`Answer` (its body as requests decoded it)."""
    return Answer(response.status_code, list(response.raw.headers.items()), response.content)


# --------------------------------------------------------------------------- load during a reload


def reload_under_load(server: CorralServer, path: str, *, clients: int = 6, reloads: int = 1,
                      before: int = 50) -> dict[str, Any]:
    """``corral reload`` while clients keep requesting ``path``; returns the load's counts.

    Every request must succeed (2xx) across the reload; the caller asserts on
    the returned counts, which the closing note reports.
    """
    from reload.reload_util import Load  # tests/reload: the closed-loop load the reload suites use

    timings = []  # each reload command's start and end (time.monotonic(), as the load's times are)
    with Load(server.port, clients=clients, path=path) as load:
        load.wait_for_more(before, timeout=120)
        for _ in range(reloads):
            generation = server.status()["generation"]
            started = time.monotonic()
            out = server.reload()
            timings.append(f"{started:.3f}-{time.monotonic():.3f} (monotonic; wall clock at the end: "
                           f"{time.strftime('%H:%M:%S')})")
            assert out.returncode == 0, f"reload failed: {out.stdout}{out.stderr}\n{server.log()}"
            wait_until(lambda: server.status()["generation"] > generation, 60, 0.1, "the new generation serving")
            load.wait_for_more(before, timeout=120)
    summary = load.summary()
    summary["failures"] = [f"{r.status} {r.error} ({r.detail})" for r in load.failures()][:10]
    if summary["failures"]:  # what the assertion message needs to tell which part of the reload it was
        summary["reloads"] = timings
        summary["log"] = server.log().splitlines()[-30:]
    return summary


def wait_port_free(port: int, timeout: float = 30.0) -> None:
    """After a stop: nothing answers on ``port`` any more."""
    def free() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            return False
        return False

    wait_until(free, timeout, 0.1, f"port {port} closed")


# --------------------------------------------------------------------------- clients that leave


def leave_mid_response(server: Served, path: str, *, after: int = 64 * 1024) -> int:
    """A client that asks for ``path``, reads ``after`` bytes of the answer and hangs up (a cancelled download).

    Closing with the rest of the answer unread resets the connection, as a
    browser closing its tab does. Returns the bytes read (head included).
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        got = 0
        while got < after:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += len(chunk)
    return got


def wait_requests_done(server: CorralServer, total: int, timeout: float = 60.0) -> None:
    """Until corral has finished ``total`` requests and has none in flight (as its workers' heartbeats report)."""
    def done() -> bool:
        status = server.status()
        return status["requests_total"] >= total and status["in_flight"] == 0

    wait_until(done, timeout, 0.2, f"{total} requests finished and none in flight")
