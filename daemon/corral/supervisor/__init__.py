"""The supervisor (``corral run``): sockets, worker processes, health, systemd.

Never imports the application, uvloop or httptools; ``corral status --json``
lists the packages it has loaded, and a test holds it to that.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.config import Config

# Imported lazily: launch.serve keeps ssl out of asyncio first.

log = logging.getLogger("corral.supervisor")


class StartupError(Exception):
    """corral cannot start; the message names the fix."""


def run(config: Config, reload_config: Callable[[], Awaitable[Config]] | None = None) -> int:
    """Run the supervisor in the foreground until it is stopped; returns the exit status."""
    import asyncio
    import faulthandler

    from corral.config import ConfigError, apply_log_config, check_app_dir
    from corral.logs import print_error, setup_logging
    from corral.supervisor import reexec, rundir
    from corral.supervisor.control import ControlError
    from corral.supervisor.listeners import SocketError, acquire
    from corral.supervisor.notify import Notifier
    from corral.supervisor.supervisor import Supervisor

    setup_logging(config.log_level, role="corral")
    # A watchdog kill (SIGABRT) then shows where the supervisor's loop was stuck.
    faulthandler.enable()
    notifier = Notifier()
    try:
        try:
            apply_log_config(config.log_config)  # checked at load; dictConfig can still refuse a handler
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        if not config.app:
            raise StartupError("no app given: pass MODULE:ATTR on the command line or set app: in the config")
        # An in-place re-exec (a reload that found corral upgraded) hands over its sockets and workers.
        state = reexec.take_state()
        if state is None:
            try:
                check_app_dir(config)  # else every worker fails to start there, retried for ever
            except ConfigError as exc:
                raise StartupError(str(exc)) from None
        if state is None:
            # Before binding anything: a second corral with this name fails here, before its
            # listeners (reuse_port) could take a single connection from the first.
            rundir.claim_for(config)
        else:
            rundir.resume(state["control"].get("claim"), config)
        listeners = reexec.listeners_from(state) if state is not None else acquire(config)
        if not listeners.http():
            if not listeners.from_systemd:
                raise StartupError("nothing to listen on: the bind list is empty; give at least one address "
                                   "(bind: ['127.0.0.1:8000'], or -b HOST:PORT), or start corral from a socket unit")
            raise StartupError("no http socket to serve: systemd passed only other sockets (FileDescriptorName=)")
        if state is None:
            for item in listeners.items:
                log.info("listening on %s (%s, %s)", item.address, item.role, item.source)
        supervisor = Supervisor(config, listeners, reload_config=reload_config, notifier=notifier)
        if state is not None:
            reexec.restore(supervisor, state)
        return asyncio.run(supervisor.run())
    except (StartupError, SocketError, ControlError, rundir.ClaimError, reexec.ReexecError) as exc:
        notifier.send(STATUS=f"failed: {exc}"[:400])
        print_error(f"corral: {exc}")
        return 1
    finally:
        rundir.release()  # the lock file and the (empty) directories this corral made

