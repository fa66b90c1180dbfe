"""The supervisor's view of one worker process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from corral.worker.protocol import Channel, socketpair

log = logging.getLogger("corral.supervisor")

# Worker states, in lifecycle order.
BOOTING = "booting"  # spawned; importing the app / running lifespan startup
READY = "ready"  # serving
DRAINING = "draining"  # told to stop gracefully; finishing in-flight requests
KILLED = "killed"  # hung or overdue: traceback requested / SIGKILL sent
EXITED = "exited"


@dataclass
class WorkerProcess:
    id: int  # unique for the supervisor's lifetime
    slot: int
    generation: int
    proc: subprocess.Popen
    channel: Channel
    balance_cell: int = -1
    state: str = BOOTING
    spawned_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    last_heartbeat: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    # why it is being stopped (crash, hung, memory, fds, max_requests, lifetime, reload, ...)
    stop_reason: str | None = None
    stop_started: float | None = None
    kill_at: float | None = None  # SIGKILL at this monotonic time if still alive
    boot_error: str | None = None
    returncode: int | None = None
    max_requests: int = 0  # with jitter applied; 0 = off
    max_lifetime: float = 0.0  # with jitter applied; 0 = off
    breaches: dict[str, int] = field(default_factory=dict)  # policy -> consecutive breaches
    sample: dict[str, int] = field(default_factory=dict)  # last psutil sample (uss, rss, fds)
    successor_of: int | None = None  # id of the worker this one replaces (a recycle)
    identity: dict[str, Any] | None = None  # the app code it serves (version, file hash, git), from "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.state != EXITED

    def age(self, now: float | None = None) -> float:
        return (now or time.monotonic()) - self.spawned_at

    def heartbeat_age(self, now: float | None = None) -> float | None:
        if self.last_heartbeat is None:
            return None
        return (now or time.monotonic()) - self.last_heartbeat

    def signal(self, sig: int) -> bool:
        """Send a signal by pid; False if the process is already gone."""
        if self.proc.returncode is not None:
            return False
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop_gracefully(self, reason: str, timeout: float, now: float) -> None:
        """SIGTERM: stop accepting, finish in-flight requests within ``timeout``."""
        if self.state in (DRAINING, KILLED, EXITED):
            return
        self.state = DRAINING
        self.stop_reason = self.stop_reason or reason
        self.stop_started = now
        # The worker enforces its own drain deadline; this is the backstop.
        self.kill_at = now + timeout + 5.0
        self.signal(signal.SIGTERM)

    def stop_fast(self, reason: str, now: float, grace: float = 5.0) -> None:
        """SIGQUIT: close everything now; SIGKILL after ``grace``."""
        if self.state == EXITED:
            return
        self.stop_reason = self.stop_reason or reason
        self.stop_started = self.stop_started or now
        if self.state != KILLED:
            self.state = DRAINING
        self.kill_at = min(self.kill_at or now + grace, now + grace)
        self.signal(signal.SIGQUIT)

    def kill_hung(self, reason: str, now: float, grace: float = 1.0) -> None:
        """Ask for a traceback (faulthandler on SIGUSR2), SIGKILL after ``grace``."""
        if self.state in (KILLED, EXITED):
            return
        self.state = KILLED
        self.stop_reason = reason
        self.stop_started = now
        self.kill_at = now + grace
        self.signal(signal.SIGUSR2)

    def poll(self) -> int | None:
        """Reap the process if it exited; returns its exit status."""
        if self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def close(self) -> None:
        self.channel.close()


def spawn(worker_id: int, slot: int, generation: int, argv: Sequence[str], env: Mapping[str, str],
          cwd: str, listener_fds: Sequence[int], extra_fds: Sequence[int] = ()) -> WorkerProcess:
    """fork+exec one worker with its listening fds and the worker end of a control channel."""
    parent, child = socketpair()
    try:
        args = list(argv) + ["--channel-fd", str(child.fileno()), "--slot", str(slot),
                             "--generation", str(generation)]
        proc = subprocess.Popen(
            args, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
            pass_fds=(child.fileno(), *listener_fds, *extra_fds),
            # Its own process group: a terminal's Ctrl-C reaches only the supervisor,
            # which then stops the workers in order.
            process_group=0,
        )
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return WorkerProcess(id=worker_id, slot=slot, generation=generation, proc=proc, channel=Channel(parent))
