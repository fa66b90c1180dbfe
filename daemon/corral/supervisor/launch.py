"""How ``corral run`` becomes the supervisor: two images of one process.

1. **The command line** (corral.cli) parses the flags, loads and checks the config
   (PyYAML, argparse) and prints what is wrong with them.
2. It then re-executes itself (``execve``: the same PID, fds, environment and
   command line) with the loaded config in a memfd named by ``_CORRAL_CONFIG_FD``.
   The new image (corral.entry) sees the variable and runs the **supervisor**
   (:func:`serve`) with that config. It never imports the command line or PyYAML,
   which would stay in its memory for as long as the service runs: it is 12.3 MiB
   USS without them, 14.0-14.3 with them. Nor ctypes: the command line's image
   makes the process a child subreaper when ``worker_start: zygote`` needs one
   (the attribute survives ``execve``) and hands over whether it is one
   (corral.supervisor.reaper).

A reload reads the config again the way it was loaded (the same file and
command-line values, the environment of now) in a child interpreter
(:func:`load_again`), and gets it back as JSON. systemd sees one main process
throughout: ``execve`` keeps the PID, and the listening sockets it passed stay
open. An in-place self-upgrade (corral.supervisor.reexec) re-executes the same
command line, so it goes through both images again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from corral.supervisor import child, handover
from corral.supervisor.reaper import SUBREAPER_ENV, hand_over_subreaper

if TYPE_CHECKING:
    from corral.config import Config

ENV = "_CORRAL_CONFIG_FD"  # not CORRAL_*: those are config keys
LOAD_TIMEOUT = 30.0  # seconds for the child that reads the config on a reload


class LaunchError(Exception):
    """The supervisor's image could not be started; the message names the fix."""


# --------------------------------------------------------------------------- the command line's image


def exec_supervisor(config: Config | None, argv: Sequence[str] | None = None) -> None:
    """Replace this process with the supervisor's image, serving ``config``.

    ``argv``: the command line's arguments when ``corral.cli.main`` was handed them (they are
    run again as ``python -P -m corral ARGS``); None re-executes the command line this process
    was started with, interpreter options included. ``config`` None: an in-place self-upgrade
    whose config no longer loads goes on with the one it ran with (the re-exec state's).
    Returns only by raising LaunchError; then nothing changed.
    """
    try:
        fd = handover.write_json(None if config is None else config.to_json(), "corral-config")
    except OSError as exc:
        raise LaunchError(f"cannot hand the config over: {exc.strerror or exc}") from None
    if os.getpid() != 1:  # a PID 1 inherits orphans anyway, and never asks
        # worker_start: zygote re-parents forked workers to the supervisor (supervisor.zygote).
        from corral.supervisor.zygote import ZYGOTE  # only here: the supervisor's image imports it later

        hand_over_subreaper(config is not None and config.worker_start == ZYGOTE)
    try:
        handover.exec_with([sys.executable, *sys.orig_argv[1:]] if argv is None
                           else [sys.executable, "-P", "-m", "corral", *argv], ENV, fd)
    except OSError as exc:
        os.close(fd)
        os.environ.pop(SUBREAPER_ENV, None)
        raise LaunchError(f"cannot start the supervisor: exec {sys.executable} failed: "
                          f"{exc.strerror or exc}") from None


# --------------------------------------------------------------------------- the supervisor's image


def pending() -> bool:
    """Whether this image is the supervisor's half of a ``corral run`` (corral.entry)."""
    return ENV in os.environ


def take_config() -> Config | None:
    """The config the command line's image loaded; None: the re-exec state's (see exec_supervisor).

    Read once: the variable is removed and the memfd closed, so workers never see them.
    """
    from corral.config import Config

    data = handover.read_json(int(os.environ.pop(ENV)))
    return None if data is None else Config.from_json(data)


def handed_config() -> Config:
    """The config to serve: the command line's, or an in-place re-exec's when that one's file
    no longer loads (corral.cli.cmd_run hands over None then)."""
    config = take_config()
    if config is not None:
        return config
    from corral.supervisor import reexec

    state = reexec.take_state()  # taken again, and kept, by supervisor.run: read once, cached
    if state is None:
        raise LaunchError("no config was handed over, and this is no in-place re-exec")
    return reexec.config_from_json(state["config"])


def serve() -> int:
    """The supervisor's image: runs the supervisor with the config the command line loaded."""
    from corral.logs import print_error
    from corral.supervisor.listeners import secure_standard_fds
    from corral.supervisor.reaper import prepare_pid1, take_subreaper

    take_subreaper()
    secure_standard_fds()  # as the command line's image did: the sockets must not land on fds 0-2
    prepare_pid1()  # again: execve reset the signal handler the command line's image set
    # The supervisor never speaks TLS, but asyncio imports ssl when it can, which maps
    # libssl and libcrypto: about 6 MiB of the supervisor's 25 MiB budget. Python
    # built without ssl is a supported asyncio configuration; this makes ours one.
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        config = handed_config()
    except (OSError, ValueError, LaunchError) as exc:  # ConfigError is a ValueError
        print_error(f"corral: cannot read the config the command line loaded: {exc}")
        return 1
    from corral.supervisor import run

    data = config.to_json()
    return run(config, reload_config=lambda: load_again(data))


async def load_again(data: Mapping[str, Any], timeout: float = LOAD_TIMEOUT) -> Config:
    """The config loaded as the one whose ``to_json()`` is ``data`` was (corral.config.load_again),
    by a child interpreter: PyYAML is imported there, not in the supervisor. Raises ConfigError
    with the loader's message."""
    from corral.config import Config, ConfigError

    try:
        done = await child.run_function("corral.supervisor.launch", "load_again_main", json.dumps(data).encode(),
                                        timeout)
    except TimeoutError:  # first: it is an OSError too
        raise ConfigError(f"cannot read the config: its loader did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config: cannot run {sys.executable}: {exc.strerror}") from None
    try:
        reply = json.loads(done.out) if done.returncode == 0 else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ConfigError(f"cannot read the config: its loader failed ({done.last_line()})")
    if "error" in reply:
        raise ConfigError(str(reply["error"]))
    return Config.from_json(reply["config"])


def load_again_main() -> int:
    """The child of :func:`load_again`: the old config's JSON on stdin, ``{"config": ...}`` or
    ``{"error": "..."}`` on stdout."""
    from corral.config import ConfigError
    from corral.config import load_again as load

    try:
        reply: dict[str, Any] = {"config": load(json.load(sys.stdin)).to_json()}
    except ConfigError as exc:
        reply = {"error": str(exc)}
    json.dump(reply, sys.stdout)
    return 0
