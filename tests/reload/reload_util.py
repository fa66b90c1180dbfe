"""Shared pieces of the reload tests: a deployable app, an httpx load generator, the units.

The load is the shared closed-loop ``util.Load`` (every request recorded with
when it was sent, what came back or how it failed; nothing retried), with some
clients opening a new connection per request so the accept path is exercised too.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx

import util
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
class Load(util.Load):
    """The shared closed-loop load (``util.Load``); in the reload suites every 4th client opens a
    new connection per request, so a reload is seen by the accept path as well as by kept-alive ones."""

    fresh_every: int = 4


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


class LocalCorral(util.Corral):
    """`corral run` as a plain child process (no systemd) serving the deployable app (``util.Corral``).

    ``start(version)`` deploys that version first; use ``with LocalCorral(...).start("v1") as corral``.
    """

    config_name = "corral.json"

    def __init__(self, tmp_path: Path, app: str = "deployapp:app", workers: int = 2, graceful_timeout: float = 30,
                 **config: Any) -> None:
        super().__init__(tmp_path, app, tmp_path / "app", workers, graceful_timeout=graceful_timeout, **config)

    def configure(self, **changes: Any) -> None:
        self.config.update(changes)
        self.config_path.write_text(json.dumps(self.config))  # JSON is YAML

    def write_config(self, **changes: Any) -> None:
        self.configure(**changes)

    def deploy(self, version: str, **app: Any) -> None:
        write_app(self.app_dir, version, **app)

    def start(self, version: str = "v1", **app: Any) -> LocalCorral:  # type: ignore[override]  # deploys first
        self.deploy(version, **app)
        super().start(wait=False)
        self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 90) -> dict[str, Any]:
        """Every wanted worker is ready (a reload's new generation included)."""
        def serving() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"corral exited with {self.proc.returncode}:\n{self.log()}")
            data = self.status()
            return data if data["phase"] == "running" and data["workers_ready"] == data["workers_wanted"] else None

        return wait_until(serving, timeout, 0.1, "all workers ready")
