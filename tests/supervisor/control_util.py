"""Helpers for the control-socket tests: `corral run` without a private control_socket:,
as root or as another (numeric, unnamed) user, with an environment that chooses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any, Sequence

from supervisor_util import APPS
from util import CORRAL, free_port, stop_process, wait_until

# Variables that would choose the runtime directory or the name for corral: the tests set them.
_CHOOSERS = ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
             "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CHOOSERS and not k.startswith("CORRAL_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def unique(prefix: str) -> str:
    """A name no other test (or test run) on this machine uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def as_user(uid: int | None) -> dict[str, Any]:
    """Popen keywords that run a command as ``uid`` (its own group, no others); {} for ourselves."""
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


def corral(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None, uid: int | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env() if env is None else env, cwd=cwd, **as_user(uid))


class Instance:
    """A `corral run` under test, stopped (by pid) and reaped when the test ends."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, uid: int | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = clean_env() if env is None else env
        self.cwd, self.uid, self.log_path = cwd, uid, log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([CORRAL, "run", "-b", f"127.0.0.1:{self.port}", "-w", "1", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=cwd,
                                     start_new_session=True, **as_user(uid))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, *args: str, cwd: str | Path | None = None) -> dict[str, Any]:
        out = corral("status", "--json", *args, env=self.env, cwd=cwd or self.cwd, uid=self.uid)
        if out.returncode != 0:
            raise RuntimeError(f"corral status failed: {out.stderr}")
        return json.loads(out.stdout)

    def wait_running(self, *status_args: str, timeout: float = 60) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"corral exited with {self.proc.returncode}:\n{self.log()}")
            data = self.status(*status_args)
            return data if data["phase"] == "running" and data["workers_ready"] >= 1 else None

        return wait_until(running, timeout, 0.1, "corral running and answering `corral status`")

    def stop(self) -> int:
        try:
            return stop_process(self.proc, signal.SIGTERM, 30)
        finally:
            self._log.close()

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def probe_args(name: str | None = None) -> list[str]:
    """`corral run` arguments for the probe app, readable by any user."""
    return [*(["-n", name] if name else []), "probe:app"]


def probe_env(**extra: str) -> dict[str, str]:
    return clean_env(CORRAL_APP_DIR=str(APPS), **extra)


def remove(path: Path) -> None:
    """Remove a file, symlink or directory tree a test made (never following a symlink)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
