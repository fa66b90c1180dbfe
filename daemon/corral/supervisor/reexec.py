"""In-place self-upgrade: the supervisor re-executes itself (same PID) and adopts its workers.

When a reload finds that corral's own code on disk changed (``identity``), the
supervisor must start running the new code without stopping the service:

1. **Preflight.** The new code is imported and the config loaded by it, in a
   throw-away interpreter. If that fails the reload fails and nothing changes:
   the running (old) supervisor and its workers keep serving.
2. **Capture.** Everything the supervisor knows is written as JSON into a
   memfd: listening sockets (fd numbers, roles), the control socket, its claim
   (the locked lock file: see ``rundir``) and the
   connections of ``corral reload`` clients waiting for the outcome, the accept
   balance table, and the whole ``SupervisorState`` (``state.py``: every worker
   with its pid, control-channel and in-flight fds, deadlines and last heartbeat;
   the generations and their slots' backoff; the respawn budget; the counters the
   metrics and `corral status` report). All those
   fds are made inheritable; the signals the supervisor handles are blocked, so
   one arriving during the exec waits instead of killing the process.
3. **exec.** ``os.execv`` of the same interpreter and command line, with
   ``_CORRAL_REEXEC_FD`` naming the memfd. execve keeps the PID, so systemd keeps
   tracking the same main process; ``NOTIFY_SOCKET`` and ``WATCHDOG_*`` are still
   in the environment; workers are still our children (waitpid works) and never
   notice: their channels and sockets stay open.
4. **Restore.** The new image reads the state instead of taking sockets from
   systemd or binding them, adopts the workers, unblocks the signals, and runs
   the reload it was asked for (a new generation, gate, drain).

Times in the state are CLOCK_MONOTONIC readings, which mean the same in the new
image. Nothing here imports the app, uvloop or httptools.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from corral.config import SUPERVISOR_KEYS, BindSpec, Config

# Now, not in capture()/restore(): after an upgrade the disk holds new code.
from corral.supervisor import child, handover, rundir
from corral.supervisor.listeners import Listeners
from corral.supervisor.state import SupervisorState, worker_fields
from corral.supervisor.worker_process import WorkerProcess
from corral.worker.balance import BalanceTable
from corral.worker.protocol import Channel

log = logging.getLogger("corral.reexec")

ENV = "_CORRAL_REEXEC_FD"  # not CORRAL_*: those are config keys
STATE_VERSION = 2
ADOPTABLE = (1, STATE_VERSION)  # 1: written by corral before SupervisorState (see _from_version_1)
PREFLIGHT_TIMEOUT = 60.0
# Every signal the supervisor handles: blocked across the exec, unblocked once the new image
# has installed its handlers (a pending one is then delivered to it).
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
           signal.SIGUSR1, signal.SIGCHLD)



class ReexecError(Exception):
    """The in-place upgrade cannot be done; the message says why (the old code keeps running)."""


class ControlHandover(Protocol):
    def listening_fd(self) -> int | None: ...
    def waiting_clients(self) -> list[int]: ...


class Handing(Protocol):
    """What ``capture`` reads of the supervisor."""

    @property
    def state(self) -> SupervisorState: ...
    @property
    def config(self) -> Config: ...
    @property
    def listeners(self) -> Listeners: ...
    @property
    def control(self) -> ControlHandover | None: ...
    @property
    def balance(self) -> BalanceTable | None: ...


class Adopting(Protocol):
    """What ``restore`` gives the supervisor of the new image."""

    @property
    def state(self) -> SupervisorState: ...
    @property
    def balance(self) -> BalanceTable | None: ...

    def adopt(self, state: SupervisorState, balance: BalanceTable | None, resumed: Mapping[str, Any]) -> None: ...


# --------------------------------------------------------------------------- the old image


async def preflight(argv: Sequence[str], state: dict[str, Any], timeout: float = PREFLIGHT_TIMEOUT) -> None:
    """Check that the code now on disk can take over: raise ReexecError with its error if not.

    Runs in a child interpreter (a second or so), without blocking the supervisor's loop.
    """
    env = dict(os.environ)
    env.pop(ENV, None)
    payload = json.dumps({"argv": list(argv), "state": state}).encode()
    try:
        done = await child.run_function("corral.supervisor.reexec", "_preflight_main", payload, timeout, env)
    except TimeoutError:  # first: it is an OSError too
        raise ReexecError(f"the new corral code did not load within {timeout:g}s") from None
    except OSError as exc:
        raise ReexecError(f"cannot run {sys.executable}: {exc.strerror}") from None
    if done.returncode != 0:
        raise ReexecError(f"the new corral code cannot take over: {done.last_line()}")


def capture(sup: Handing) -> dict[str, Any]:
    """The supervisor's state as JSON data (fds by number); see the module docstring."""
    assert sup.state.generation is not None, "re-exec only while a generation serves"
    control = sup.control
    claim = rundir.held()
    state = sup.state.to_json()
    state["reexecs"] += 1  # the one about to happen
    return {
        "version": STATE_VERSION,
        "config": sup.config.to_json(),
        "listeners": sup.listeners.handover(),
        "control": {"fd": control.listening_fd() if control is not None else None,
                    "clients": control.waiting_clients() if control is not None else [],
                    "claim": claim.handover() if claim is not None else None},
        "balance": {"fd": sup.balance.fd} if sup.balance is not None else None,
        "state": state,
    }


def fds_of(state: dict[str, Any]) -> list[int]:
    fds = [item["fd"] for item in state["listeners"]["items"]]
    for worker in state["state"]["workers"]:
        fds.append(worker["channel_fd"])
        if worker.get("in_flight_fd", -1) >= 0:
            fds.append(worker["in_flight_fd"])  # its in-flight table: a crash still names its request
    if state["control"]["fd"] is not None:
        fds.append(state["control"]["fd"])
    fds += state["control"]["clients"]
    if state["control"].get("claim"):
        fds.append(state["control"]["claim"]["lock_fd"])  # the lock must outlive the exec
    if state["balance"] is not None:
        fds.append(state["balance"]["fd"])
    return fds


def exec_in_place(state: dict[str, Any], argv: Sequence[str] | None = None) -> None:
    """Replace this process image; returns only by raising ReexecError (then nothing changed)."""
    try:
        memfd = handover.write_json(state, "corral-reexec")
    except OSError as exc:
        raise ReexecError(f"cannot hand the state over: {exc.strerror or exc}") from None
    fds = fds_of(state)
    was_inheritable = {fd: os.get_inheritable(fd) for fd in fds}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        for fd in fds:
            os.set_inheritable(fd, True)
        for handler in logging.getLogger().handlers:
            handler.flush()
        handover.exec_with(list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]], ENV, memfd)
    except OSError as exc:
        for fd, inheritable in was_inheritable.items():
            try:
                os.set_inheritable(fd, inheritable)
            except OSError:
                pass
        os.close(memfd)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        raise ReexecError(f"exec {sys.executable} failed: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- the new image


_taken: dict[str, Any] | None = None


def state_pending() -> bool:
    """Whether this process is an in-place re-exec whose state is still to be taken."""
    return ENV in os.environ


def take_state(environ: MutableMapping[str, str] | None = None) -> dict[str, Any] | None:
    """The state a previous image of this process left, or None on a normal start.

    Read once (the variable is removed, so workers never see it); later calls get the same state.
    """
    global _taken
    value = (os.environ if environ is None else environ).pop(ENV, None)
    if value is None:
        return _taken
    state = handover.read_json(int(value))
    if not isinstance(state, dict) or state.get("version") not in ADOPTABLE:
        version = state.get("version") if isinstance(state, dict) else None
        raise ReexecError(f"state version {version} from the previous image is not one of {ADOPTABLE}")
    _taken = state = _from_version_1(state) if state["version"] == 1 else state
    return state


def _from_version_1(old: dict[str, Any]) -> dict[str, Any]:
    """The state an image of corral before ``SupervisorState`` wrote, in today's form (it carried
    no metrics, no respawn budget and no pending generation: those start fresh)."""
    info = old["supervisor"]
    generation = old["generation"]
    state = {"started_at": info["started_at"], "next_id": info["next_id"],
             "generation_counter": info["generation_counter"], "reexecs": info["reexecs"],
             "last_reload": info.get("last_reload"), "workers": old["workers"],
             "generation": {**generation, "config": old["config"]}, "pending": None,
             "retiring": old["retiring"], "recycling": old["recycling"]}
    return {**old, "version": STATE_VERSION, "state": state}


def unblock_signals() -> None:
    """Deliver the signals held during the exec (no-op on a normal start)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def config_from_json(data: dict[str, Any]) -> Config:
    """Rebuild a Config sent by the previous image; fields it did not know get their defaults."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Config):
        if field.name in data:
            values[field.name] = data[field.name]
        elif field.name in SUPERVISOR_KEYS:
            values[field.name] = SUPERVISOR_KEYS[field.name].default
    for name in ("bind", "metrics_bind", "health_bind", "agent_bind"):
        if name in values:
            values[name] = tuple(BindSpec(**b) if isinstance(b, dict) else BindSpec(str(b)) for b in values[name])
    values["explicit"] = frozenset(values.get("explicit") or ())
    return Config(**values)


def listeners_from(state: dict[str, Any]) -> Listeners:
    return Listeners.from_handover(state["listeners"])


class AdoptedProcess:
    """What the supervisor needs of a ``subprocess.Popen`` for a child started by a previous image."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL  # reaped elsewhere: gone, status unknown
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None  # the loop above ends only once poll() set it
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal it unless it is known to have exited (then its pid may be another process's)."""
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # exited just now: the next poll() reaps it


def restore(sup: Adopting, state: dict[str, Any]) -> None:
    """Adopt the previous image's workers, generations and counters into a fresh Supervisor."""
    balance = _balance_table_from(state, sup.balance)
    restored = SupervisorState.from_json(state["state"], metrics=sup.state.metrics,
                                         decode_config=config_from_json, adopt=_adopt_worker)
    sup.adopt(restored, balance, state)


def _adopt_worker(entry: Mapping[str, Any]) -> WorkerProcess:
    """A worker a previous image started: its process by pid, its channel and in-flight table by fd."""
    channel = Channel(socket.socket(fileno=entry["channel_fd"]))
    os.set_inheritable(entry["channel_fd"], False)
    values = worker_fields(entry)
    if values.get("in_flight_fd", -1) >= 0:
        os.set_inheritable(values["in_flight_fd"], False)
    return WorkerProcess(proc=AdoptedProcess(entry["pid"]), channel=channel, **values)


def _balance_table_from(state: dict[str, Any], current: BalanceTable | None) -> BalanceTable | None:
    """The accept-balance table the running workers write to (old and new workers share it)."""
    info = state["balance"]
    if info is None:
        return current
    fd = info["fd"]
    if current is None:
        os.close(fd)  # accept_balance is off now; the adopted workers keep their own mapping
        return None
    os.set_inheritable(fd, False)
    return BalanceTable(fd)


def control_socket_from(state: Mapping[str, Any]) -> socket.socket | None:
    fd = state["control"]["fd"]
    if fd is None:
        return None
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd)


def waiting_clients_from(state: Mapping[str, Any]) -> list[socket.socket]:
    """The ``corral reload`` connections the previous image owed an answer."""
    clients = []
    for fd in state["control"]["clients"]:
        os.set_inheritable(fd, False)
        clients.append(socket.socket(fileno=fd))
    return clients


# --------------------------------------------------------------------------- the preflight child


def _preflight_main() -> int:
    """Run by ``preflight()`` with the new code: load the config and parse the state as the new image will."""
    try:
        payload = json.load(sys.stdin)
        from corral.config import load_again
        for module in ("corral.supervisor.control", "corral.supervisor.supervisor"):
            # The modules the new image runs must load; imported by name, since this check is no
            # dependency of this module's (a static import would make a cycle of them).
            importlib.import_module(module)

        state = payload["state"]
        if state.get("version") not in ADOPTABLE:
            raise ReexecError(f"cannot adopt state version {state.get('version')} (this code reads "
                              f"{', '.join(map(str, ADOPTABLE))}); restart the service instead")
        # The config as the new image will load it: the running one's file and command-line values.
        load_again(state["config"])
        config_from_json(state["config"])
    except Exception as exc:  # noqa: BLE001  (new code may fail in any way; each way refuses the upgrade)
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
