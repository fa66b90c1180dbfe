"""Shared pieces of the reload tests: a deployable app, an httpx load generator, the units.

The load is closed-loop: ``clients`` threads, each with its own httpx client and
one keep-alive connection (some threads open a new connection per request, so
the accept path is exercised too). Every request is recorded with when it was
sent, what came back (status, the app version that answered, the worker pid)
or how it failed (reset, refused, timeout, other). Nothing is retried: httpx's
transport retries are off, so a failed request is counted as one.
"""

from __future__ import annotations

import errno
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import httpx

from util import CORRAL, wait_until

APP_TEMPLATE = '''\
"""A deployable test app: the tests rewrite this file between reloads."""
import asyncio
import os

__version__ = {version!r}
{import_error}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep({startup_delay!r})
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    status = 200
    if path == "/sleep":
        await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or "1"))
    elif path == "/health":
        status = {health_status!r}
    body = (__version__ + "\\n").encode()
    await send({{"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            (b"x-app-version", __version__.encode()),
                            (b"x-worker-pid", str(os.getpid()).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
'''


def write_app(directory: Path, version: str, *, startup_delay: float = 0.0, import_error: str | None = None,
              health_status: int = 200, module: str = "deployapp") -> Path:
    """(Re)write the app module, as a deploy does; removes stale bytecode so the new file is what loads."""
    directory.mkdir(parents=True, exist_ok=True)
    error = f"raise RuntimeError({import_error!r})" if import_error else ""
    path = directory / f"{module}.py"
    path.write_text(APP_TEMPLATE.format(version=version, import_error=error, startup_delay=startup_delay,
                                        health_status=health_status))
    for cached in (directory / "__pycache__").glob(f"{module}.*.pyc"):
        cached.unlink()
    return path


@dataclass
class Result:
    sent: float  # time.monotonic() when the request was sent
    finished: float = 0.0  # ... and when it completed or failed
    status: int | None = None
    version: str | None = None
    pid: int | None = None
    error: str | None = None  # "reset", "refused", "timeout" or "other: ..."


@dataclass
class Load:
    """Closed-loop httpx load against 127.0.0.1:port until stopped."""

    port: int
    clients: int = 8
    fresh_every: int = 4  # every Nth client opens a new connection per request (0: none)
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
        return sum(1 for r in self.done() if r.status is not None and 200 <= r.status < 300)

    def failures(self) -> list[Result]:
        return [r for r in self.done() if r.status is None or not 200 <= r.status < 300]

    def count(self, error: str) -> int:
        return sum(1 for r in self.done() if r.error == error)

    def ok_between(self, start: float, end: float) -> int:
        """Successful requests sent within [start, end)."""
        return sum(1 for r in self.done() if start <= r.sent < end and r.status is not None
                   and 200 <= r.status < 300)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time within [start, end] in which no request completed successfully."""
        times = sorted(r.finished for r in self.done() if r.status is not None and 200 <= r.status < 300
                       and start <= r.finished <= end)
        points = [start, *times, end]
        return max(b - a for a, b in zip(points, points[1:]))

    def wait_for_more(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` more requests succeeded than now (service is flowing)."""
        base = self.ok()
        wait_until(lambda: self.ok() >= base + n, timeout, 0.02, f"{n} more successful requests")

    def summary(self) -> dict[str, Any]:
        done = self.done()
        return {"sent": len(done), "ok": self.ok(), "failed": len(self.failures()),
                "reset": self.count("reset"), "refused": self.count("refused"), "timeout": self.count("timeout")}

    # -- the client threads -------------------------------------------------------------------

    def _run(self, fresh: bool) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=0 if fresh else 1)
        transport = httpx.HTTPTransport(retries=0, limits=limits)
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", transport=transport,
                          timeout=self.timeout) as client:
            while not self._stop.is_set():
                result = Result(sent=time.monotonic())
                try:
                    response = client.get(self.path)
                    result.status = response.status_code
                    result.version = response.headers.get("x-app-version")
                    result.pid = int(response.headers.get("x-worker-pid", "0"))
                except httpx.TimeoutException:
                    result.error = "timeout"
                except httpx.ConnectError as exc:
                    result.error = "refused" if _errno(exc) == errno.ECONNREFUSED else f"other: {exc!r}"
                except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                    # The server dropped the connection under the request: RST or EOF mid-exchange.
                    result.error = "reset" if _errno(exc) in (errno.ECONNRESET, errno.EPIPE, None) \
                        else f"other: {exc!r}"
                except httpx.HTTPError as exc:
                    result.error = f"other: {exc!r}"
                result.finished = time.monotonic()
                self.results.append(result)


def _errno(exc: BaseException) -> int | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


# --------------------------------------------------------------------------- units


def socket_unit(port: int, name: str = "http") -> str:
    return f"""\
[Unit]
Description=corral reload test socket

[Socket]
ListenStream=127.0.0.1:{port}
FileDescriptorName={name}
Accept=no
Backlog=1024
"""


def service_unit(config: Path, *, socket: str | None = "app.socket", runtime: str = "reloadtest",
                 extra: str = "", corral: str = CORRAL) -> str:
    needs = f"Requires={socket}\nAfter={socket}\n" if socket else ""
    return f"""\
[Unit]
Description=corral reload test service
{needs}
[Service]
Type=notify
NotifyAccess=exec
ExecStart={corral} run --config {config}
ExecReload={corral} reload --config {config}
TimeoutStartSec=120s
TimeoutStopSec=60s
KillMode=mixed
Restart=on-failure
RestartSec=1s
RuntimeDirectory={runtime}
Environment=PYTHONUNBUFFERED=1
{extra}
"""


def write_config(path: Path, app_dir: Path, control: str, **config: Any) -> None:
    base = {"app": "deployapp:app", "app_dir": str(app_dir), "workers": 2, "graceful_timeout": 30,
            "control_socket": control}
    base.update(config)
    path.write_text(json.dumps(base))  # JSON is YAML


def corral_status(ns: Any, control: str, corral: Sequence[str] = (CORRAL,), env: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    out = ns.run([*corral, "status", "--json", "--control-socket", control], check=False, timeout=30, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def timed(ns: Any, *args: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """``systemctl ARGS`` (unchecked) with when it was started and when it returned (monotonic)."""
    started = time.monotonic()
    proc = ns.systemctl(*args, timeout=timeout, check=False)
    return proc, started, time.monotonic()


# --------------------------------------------------------------------------- one app under systemd


class Site:
    """app.service (+ app.socket) in a booted namespace, its config and its app directory."""

    def __init__(self, ns: Any, port: int, *, service: str = "app.service", socket: str | None = "app.socket",
                 control: str = "/run/reloadtest/control.sock", corral: Sequence[str] = (CORRAL,),
                 env: dict[str, str] | None = None) -> None:
        self.ns, self.port, self.service, self.socket = ns, port, service, socket
        self.control, self.corral, self.env = control, corral, env
        self.config_path = ns.workdir / f"{service}.json"
        self.app_dir = ns.workdir / f"{service}-app"
        self.config: dict[str, Any] = {}

    def configure(self, **config: Any) -> None:
        self.config = config
        write_config(self.config_path, self.app_dir, self.control, **config)

    def deploy(self, version: str, **app: Any) -> None:
        write_app(self.app_dir, version, **app)

    def fresh(self, version: str, app: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
        """Stop the service, write config and app, start it and wait until every worker is ready."""
        self.ns.systemctl("stop", self.service, timeout=120)
        self.ns.systemctl("reset-failed", self.service, check=False)
        self.configure(**config)
        self.deploy(version, **(app or {}))
        if self.socket:
            self.ns.systemctl("start", self.socket)
        self.ns.systemctl("start", self.service, timeout=120)
        return self.wait_serving()

    def wait_serving(self, generation: int | None = None, timeout: float = 120) -> dict[str, Any]:
        def serving() -> dict[str, Any] | None:
            data = self.status()
            ok = data["phase"] == "running" and data["workers_ready"] == data["workers_wanted"] > 0
            return data if ok and (generation is None or data["generation"] == generation) else None

        return wait_until(serving, timeout, 0.1, "all workers ready")

    def status(self) -> dict[str, Any]:
        return corral_status(self.ns, self.control, self.corral, self.env)

    def show(self, prop: str) -> str:
        return self.ns.show(self.service, prop)

    def reload(self, timeout: float = 180) -> tuple[subprocess.CompletedProcess[str], float, float]:
        return timed(self.ns, "reload", self.service, timeout=timeout)

    def get(self, path: str, timeout: float = 60) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)


# --------------------------------------------------------------------------- corral without systemd


class LocalCorral:
    """`corral run` as a plain child process (no systemd), always stopped and reaped."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        from util import free_port

        self.tmp = tmp_path
        self.port = free_port()
        self.app_dir = tmp_path / "app"
        self.control = str(tmp_path / "control.sock")
        self.config_path = tmp_path / "corral.json"
        self.config: dict[str, Any] = {"bind": [f"127.0.0.1:{self.port}"], **config}
        self.log_path = tmp_path / "corral.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, **changes: Any) -> None:
        self.config.update(changes)
        write_config(self.config_path, self.app_dir, self.control, **self.config)

    def deploy(self, version: str, **app: Any) -> None:
        write_app(self.app_dir, version, **app)

    def start(self, version: str = "v1", **app: Any) -> LocalCorral:
        self.deploy(version, **app)
        self.configure()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([CORRAL, "run", "--config", str(self.config_path)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_serving()
        return self

    def __enter__(self) -> LocalCorral:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        import os
        import signal

        from util import stop_process

        if self.proc is None:
            return
        children = []
        try:
            import psutil

            children = [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except Exception:
            pass
        try:
            stop_process(self.proc, signal.SIGTERM, 60)
        finally:
            for pid in children:  # workers left behind by a failed test, by pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._log.close()
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        out = subprocess.run([CORRAL, "status", "--json", "--control-socket", self.control],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout)

    def wait_serving(self, timeout: float = 90) -> dict[str, Any]:
        def serving() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"corral exited with {self.proc.returncode}:\n{self.log()}")
            data = self.status()
            return data if data["phase"] == "running" and data["workers_ready"] == data["workers_wanted"] else None

        return wait_until(serving, timeout, 0.1, "all workers ready")

    def reload(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CORRAL, "reload", "--control-socket", self.control], capture_output=True,
                              text=True, timeout=timeout)

    def reload_async(self) -> subprocess.Popen[str]:
        return subprocess.Popen([CORRAL, "reload", "--control-socket", self.control], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
