"""The supervisor's view of one worker process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.supervisor import policies
from corral.worker import inflight, protocol
from corral.worker.protocol import Channel, socketpair

log = logging.getLogger("corral.supervisor")

# Worker states, in lifecycle order.
BOOTING = "booting"  # spawned; importing the app / running lifespan startup
STANDBY = "standby"  # booted and warmed up, serving nothing until it is given a slot (config: standby)
READY = "ready"  # serving
DRAINING = "draining"  # told to stop gracefully; finishing in-flight requests
KILLED = "killed"  # hung or overdue: traceback requested / SIGKILL sent
EXITED = "exited"


class Process(Protocol):
    """What the supervisor uses of a child process: ``subprocess.Popen``, a process adopted
    across a re-exec (``reexec.AdoptedProcess``) or a test's fake."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None:
        """Signal it, unless it is known to have exited (never a recycled pid)."""
        ...


@dataclass
class WorkerProcess:
    id: int  # unique for the supervisor's lifetime
    slot: int
    generation: int
    proc: Process
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
    sample: dict[str, int] = field(default_factory=dict)  # last /proc sample (corral.metrics.procfs.SAMPLE_KEYS)
    successor_of: int | None = None  # id of the worker this one replaces (a recycle)
    identity: dict[str, Any] | None = None  # the app code it serves (version, file hash, git), from "ready"
    requests_at_ready: int = 0  # requests it had answered when ready (a reload gate's own probes)
    in_flight_fd: int = -1  # its in-flight table (corral.worker.inflight); -1: none (adopted after a re-exec)
    in_flight_slots: int = 0

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
        """Send a signal; False if the process is already gone."""
        if self.proc.returncode is not None:
            return False
        try:
            self.proc.send_signal(sig)
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
        self.tell_why(reason)
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
        self.tell_why(reason)
        self.signal(signal.SIGQUIT)

    def tell_why(self, reason: str) -> None:
        """Say, before the signal, whether the service goes on without this worker (a reload, a
        recycle, a scale-down: its WebSockets close with 1012 Service Restart, so clients reconnect
        at once) or is stopping (1001 Going Away). Sent first on the same ordered channel, so the
        worker has it by the time it handles the signal; a lost message only means 1001."""
        # ``reason``, not stop_reason: a worker being recycled when corral stops is going away.
        self.channel.send(protocol.retiring(reason, restart=reason != policies.STOP))

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

    def in_flight(self) -> list[inflight.InFlight]:
        """The requests it is (or, once dead, was) in the middle of serving."""
        return inflight.read(self.in_flight_fd) if self.in_flight_fd >= 0 else []

    def served_any(self) -> bool:
        """Whether it answered, or is (was) answering, a request since it became ready, as far as
        its last heartbeat and its in-flight table say."""
        total = self.stats.get("requests_total")
        return (isinstance(total, int) and total > self.requests_at_ready) or bool(self.in_flight())

    def close(self) -> None:
        self.channel.close()
        if self.in_flight_fd >= 0:
            os.close(self.in_flight_fd)
            self.in_flight_fd = -1


def spawn(worker_id: int, slot: int, generation: int, argv: Sequence[str], env: Mapping[str, str],
          cwd: str, listener_fds: Sequence[int], extra_fds: Sequence[int] = (),
          in_flight_slots: int = 0) -> WorkerProcess:
    """fork+exec one worker with its listening fds, the worker end of a control channel and,
    with ``in_flight_slots``, an in-flight table (its fd: ``WorkerProcess.in_flight_fd``)."""
    parent, child = socketpair()
    table = inflight.create(in_flight_slots) if in_flight_slots > 0 else -1
    try:
        args = [*argv, "--channel-fd", str(child.fileno()), "--slot", str(slot),
                "--generation", str(generation)]
        proc = subprocess.Popen(
            args, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
            pass_fds=(child.fileno(), *listener_fds, *extra_fds, *([table] if table >= 0 else [])),
            # Its own process group: a terminal's Ctrl-C reaches only the supervisor,
            # which then stops the workers in order.
            process_group=0,
        )
    except BaseException:
        parent.close()
        if table >= 0:
            os.close(table)
        raise
    finally:
        child.close()
    return WorkerProcess(id=worker_id, slot=slot, generation=generation, proc=proc, channel=Channel(parent),
                         in_flight_fd=table, in_flight_slots=in_flight_slots if table >= 0 else 0)
