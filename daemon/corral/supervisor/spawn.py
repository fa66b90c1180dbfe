"""How a worker process is started: interpreter, command line and environment.

Every worker is a fresh interpreter (fork+exec), never a fork of the supervisor,
so a restart always loads the code on disk and no supervisor state leaks into
the app. With ``worker_start: zygote`` workers are forks of a per-generation zygote
that was itself started exactly like this (corral.supervisor.zygote). See ``corral/worker/boot.py`` for the sys.path rule applied when the app
has its own interpreter or virtualenv.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import corral
from corral.config import Config
from corral.supervisor.listeners import env_without_systemd
from corral.supervisor.worker_process import WorkerProcess, spawn

BOOT_SCRIPT = os.path.join(os.path.dirname(os.path.realpath(corral.__file__)), "worker", "boot.py")

# The worker's own third-party imports; found in the supervisor's environment
# without importing them (find_spec only locates a top-level package).
WORKER_DEPENDENCIES = ("uvloop", "httptools")


def dependency_paths(python: str) -> list[str]:
    """sys.path entries the app's interpreter needs for corral's worker dependencies.

    Nothing when the app runs under corral's own interpreter.
    """
    if _same_interpreter(python, sys.executable):
        return []
    paths: list[str] = []
    for name in WORKER_DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        site_dir = os.path.dirname(os.path.normpath(next(iter(spec.submodule_search_locations))))
        if site_dir not in paths:
            paths.append(site_dir)
    return paths


def _same_interpreter(a: str, b: str) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b) and _venv_of(a) == _venv_of(b)
    except OSError:
        return False


def _venv_of(python: str) -> str:
    # A venv's bin/python is a symlink to the base interpreter: compare the venv too.
    path = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    return path if os.path.exists(os.path.join(path, "pyvenv.cfg")) else ""


def worker_argv(python: str, args: Sequence[str]) -> list[str]:
    argv = [python, BOOT_SCRIPT]
    for path in dependency_paths(python):
        argv += ["--path", path]
    return argv + list(args)


def worker_env(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: ours minus systemd's variables, plus the config's ``environment``."""
    env = env_without_systemd(environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")  # the app's prints reach the journal promptly
    return env


@dataclass(frozen=True)
class SpawnRequest:
    """One worker to start: who it is, with which config, and the fds it inherits."""

    worker_id: int
    slot: int
    generation: int
    config: Config
    listener_fds: Sequence[int]
    extra_fds: Sequence[int]  # the accept-balance table, if any
    in_flight_slots: int


class SpawnPending(Exception):
    """The worker cannot be started yet, through no fault of its own (its generation's zygote is
    still importing): the supervisor asks again at ``retry_at`` (its clock), with no backoff."""

    def __init__(self, why: str, retry_at: float) -> None:
        super().__init__(why)
        self.retry_at = retry_at


class Spawner(Protocol):
    """Starts a worker process. The supervisor's only way to make one, so that tests can hand it
    fake processes (tests/supervisor/fakes.py); raises OSError when the process cannot start, and
    SpawnPending when it cannot start yet."""

    def __call__(self, request: SpawnRequest) -> WorkerProcess: ...


def spawn_worker(request: SpawnRequest) -> WorkerProcess:
    """The real spawner: a fresh interpreter (fork+exec) running corral's worker."""
    config = request.config
    return spawn(request.worker_id, request.slot, request.generation, worker_argv(config.python, []),
                 worker_env(os.environ, config.environment), config.app_dir, request.listener_fds,
                 request.extra_fds, in_flight_slots=request.in_flight_slots)
