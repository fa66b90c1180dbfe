"""Running `corral run` in tests: a config in tmp_path, a free port, a private control socket."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from util import CORRAL, free_port, stop_process, wait_until

APPS = Path(__file__).resolve().parent / "apps"


class Corral:
    """One supervisor under test. Use as a context manager: it is always stopped and reaped."""

    def __init__(self, tmp_path: Path, app: str = "probe:app", workers: int = 2, env: dict[str, str] | None = None,
                 args: list[str] | None = None, **config: Any) -> None:
        self.port = free_port()
        self.tmp = tmp_path
        self.config_path = tmp_path / "corral.yaml"
        self.control = str(tmp_path / "control.sock")
        self.config: dict[str, Any] = {
            "app": app, "app_dir": str(APPS), "workers": workers, "bind": [f"127.0.0.1:{self.port}"],
            "control_socket": self.control, "graceful_timeout": 10, **config,
        }
        self.env = {**os.environ, **(env or {})}
        self.args = args or []
        self.log_path = tmp_path / "corral.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self, **changes: Any) -> None:
        self.config.update(changes)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, wait: bool = True) -> Corral:
        self.write_config()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([CORRAL, "run", "--config", str(self.config_path), *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def __enter__(self) -> Corral:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        try:
            code = stop_process(self.proc, sig, timeout)
        finally:
            self._kill_strays()
            self._log.close()
        return code

    def _kill_strays(self) -> None:
        # Workers are in their own process groups; kill any that outlived a failed test by pid.
        for pid in _children_of(self.proc.pid) if self.proc else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # ------------------------------------------------------------------ queries

    def status(self) -> dict[str, Any]:
        out = subprocess.run([CORRAL, "status", "--json", "--control-socket", self.control],
                             capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise RuntimeError(f"corral status failed: {out.stderr}")
        return json.loads(out.stdout)

    def status_fast(self) -> dict[str, Any]:
        """The same as status(), straight over the control socket (no CLI start-up: for timing)."""
        from corral.supervisor.control import request

        return request(self.control, {"cmd": "status"}, timeout=20)

    def ready_workers(self, generation: int | None = None) -> list[dict[str, Any]]:
        data = self.status()
        return [w for w in data["workers"] if w["state"] == "ready"
                and (generation is None or w["generation"] == generation)]

    def wait_ready(self, count: int | None = None, timeout: float = 60.0) -> dict[str, Any]:
        count = self.config["workers"] if count is None else count

        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"corral exited with {self.proc.returncode}:\n{self.log()}")
            data = self.status()
            serving = [w for w in data["workers"] if w["state"] == "ready"]
            return data if data["phase"] == "running" and len(serving) >= count else None

        return wait_until(ready, timeout, 0.1, f"{count} ready workers")

    def get(self, path: str = "/", timeout: float = 30.0) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()


def _children_of(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


@dataclass
class Load:
    """Closed-loop load: ``clients`` threads, each with one keep-alive connection, until stopped.

    Counts successes and failures; a failure is any request that did not get a 2xx
    (reset, EOF, timeout, error status). A client whose connection broke reconnects.
    """

    port: int
    clients: int = 8
    path: str = "/"
    timeout: float = 30.0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    pids: dict[int, int] = field(default_factory=dict)  # worker pid -> responses
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def total(self) -> int:
        return self.ok + self.failed

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is not None and _dropped(conn):
                # As urllib3 and httpx do: a pooled connection the server has closed is
                # not reused (the server closes idle keep-alive connections when draining).
                conn.close()
                conn = None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                pid = int(response.getheader("x-worker-pid", "0"))
                good = 200 <= response.status < 300
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                good, pid = False, 0
                with self._lock:
                    self.errors.append(repr(exc))
                conn.close()
                conn = None
            with self._lock:
                if good:
                    self.ok += 1
                    self.pids[pid] = self.pids.get(pid, 0) + 1
                else:
                    self.failed += 1
        if conn is not None:
            conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    sock = conn.sock
    if sock is None:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    def connectable() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(connectable, timeout, 0.05, f"port {port}")


def since(start: float) -> float:
    return time.monotonic() - start
