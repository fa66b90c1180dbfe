"""How a worker process is started: interpreter, command line and environment.

Every worker is a fresh interpreter (fork+exec), never a fork of the supervisor,
so a restart always loads the code on disk and no supervisor state leaks into
the app. See ``corral/worker/boot.py`` for the sys.path rule applied when the app
has its own interpreter or virtualenv.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import corral
from corral.supervisor.sockets import env_without_systemd

BOOT_SCRIPT = str(Path(corral.__file__).resolve().parent / "worker" / "boot.py")

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
        site_dir = str(Path(list(spec.submodule_search_locations)[0]).parent)
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
    path = Path(python).absolute().parent.parent
    return str(path) if (path / "pyvenv.cfg").exists() else ""


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
