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
   balance table, every worker (pid, control-channel fd, slot, generation, state,
   deadlines, counters) and the slot layout of the serving generation. All those
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

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from corral.config import SUPERVISOR_KEYS, BindSpec, Config
from corral.supervisor import rundir  # now, not in capture(): after an upgrade the disk holds new code

if TYPE_CHECKING:
    from corral.supervisor.supervisor import Supervisor

log = logging.getLogger("corral.reexec")

ENV = "_CORRAL_REEXEC_FD"  # not CORRAL_*: those are config keys
STATE_VERSION = 1
PREFLIGHT_TIMEOUT = 60.0
# Every signal the supervisor handles: blocked across the exec, unblocked once the new image
# has installed its handlers (a pending one is then delivered to it).
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
           signal.SIGUSR1, signal.SIGCHLD)

WORKER_FIELDS = ("id", "slot", "generation", "balance_cell", "state", "spawned_at", "ready_at",
                 "last_heartbeat", "stats", "stop_reason", "stop_started", "kill_at", "boot_error",
                 "max_requests", "max_lifetime", "breaches", "successor_of", "identity")


class ReexecError(Exception):
    """The in-place upgrade cannot be done; the message says why (the old code keeps running)."""


# --------------------------------------------------------------------------- the old image


async def preflight(argv: Sequence[str], state: dict[str, Any], timeout: float = PREFLIGHT_TIMEOUT) -> None:
    """Check that the code now on disk can take over: raise ReexecError with its error if not.

    Runs in a child interpreter (a second or so), without blocking the supervisor's loop.
    """
    env = dict(os.environ)
    env.pop(ENV, None)
    payload = json.dumps({"argv": list(argv), "state": state}).encode()
    # -P: never import a `corral` from the working directory instead of the installed one.
    command = [sys.executable, "-P", "-c", "from corral.supervisor.reexec import _preflight_main; "
                                           "raise SystemExit(_preflight_main())"]
    try:
        proc = await asyncio.create_subprocess_exec(*command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        raise ReexecError(f"cannot run {sys.executable}: {exc.strerror}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(payload), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ReexecError(f"the new corral code did not load within {timeout:g}s") from None
    if proc.returncode != 0:
        lines = (err or out).decode(errors="replace").strip().splitlines()
        raise ReexecError(f"the new corral code cannot take over: {lines[-1] if lines else proc.returncode}")


def capture(sup: Supervisor) -> dict[str, Any]:
    """The supervisor's state as JSON data (fds by number); see the module docstring."""
    generation = sup.generation
    assert generation is not None, "re-exec only while a generation serves"
    workers = []
    for worker in sup.workers.values():
        entry = {name: getattr(worker, name, None) for name in WORKER_FIELDS}
        entry["pid"] = worker.pid
        entry["channel_fd"] = worker.channel.fileno()
        entry["sample"] = dict(worker.sample)
        workers.append(entry)
    control = sup.control
    claim = rundir.held()
    return {
        "version": STATE_VERSION,
        "config": sup.config.to_json(),
        "listeners": {
            "from_systemd": sup.listeners.from_systemd,
            "items": [{"fd": item.fd, "role": item.role, "source": item.source, "name": item.name,
                       "unlink_path": item.unlink_path, "group": item.group} for item in sup.listeners.items],
        },
        "control": {"fd": control.listening_fd() if control is not None else None,
                    "clients": control.waiting_clients() if control is not None else [],
                    "claim": claim.handover() if claim is not None else None},
        "balance": {"fd": sup.balance.fd} if sup.balance is not None else None,
        "supervisor": {
            "started_at": sup.started_at, "next_id": sup.next_id,
            "generation_counter": sup.generation_counter, "reexecs": getattr(sup, "reexecs", 0) + 1,
            "last_reload": dataclasses.asdict(sup.last_reload) if sup.last_reload is not None else None,
            "reload_started": time.monotonic(),
        },
        "generation": {
            "number": generation.number, "started_at": generation.started_at,
            "slots": [{"index": slot.index, "worker": slot.worker.id if slot.worker else None,
                       "successor": slot.successor.id if slot.successor else None,
                       "failures": slot.failures, "restart_at": slot.restart_at, "last_error": slot.last_error}
                      for slot in generation.slots],
        },
        "retiring": [worker.id for worker in sup.retiring],
        "recycling": sup.recycling.id if sup.recycling is not None else None,
        "workers": workers,
    }


def fds_of(state: dict[str, Any]) -> list[int]:
    fds = [item["fd"] for item in state["listeners"]["items"]]
    fds += [worker["channel_fd"] for worker in state["workers"]]
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
    payload = json.dumps(state, default=str).encode()
    memfd = os.memfd_create("corral-reexec", 0)  # inheritable: the new image reads it
    fds = fds_of(state)
    was_inheritable = {fd: os.get_inheritable(fd) for fd in fds}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        os.write(memfd, payload)
        os.lseek(memfd, 0, os.SEEK_SET)
        for fd in fds:
            os.set_inheritable(fd, True)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        command = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
        os.environ[ENV] = str(memfd)
        try:
            os.execv(command[0], command)
        finally:
            os.environ.pop(ENV, None)
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


def take_state(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The state a previous image of this process left, or None on a normal start.

    Read once (the variable is removed, so workers never see it); later calls get the same state.
    """
    global _taken
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    value = environ.pop(ENV, None)
    if value is None:
        return _taken
    fd = int(value)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    state = json.loads(b"".join(chunks))
    if state.get("version") != STATE_VERSION:
        raise ReexecError(f"state version {state.get('version')} from the previous image is not {STATE_VERSION}")
    _taken = state
    return state


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
    for name in ("bind", "metrics_bind"):
        if name in values:
            values[name] = tuple(BindSpec(**b) if isinstance(b, dict) else BindSpec(str(b)) for b in values[name])
    values["explicit"] = frozenset(values.get("explicit") or ())
    return Config(**values)


def listeners_from(state: dict[str, Any]) -> Any:
    from corral.supervisor.sockets import Listener, Listeners

    listeners = Listeners(from_systemd=bool(state["listeners"]["from_systemd"]))
    for item in state["listeners"]["items"]:
        sock = socket.socket(fileno=item["fd"])
        os.set_inheritable(item["fd"], False)
        listeners.items.append(Listener(sock, item["role"], item["source"], name=item["name"] or "",
                                        unlink_path=item["unlink_path"], group=int(item["group"] or 0)))
    return listeners


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
        return self.returncode  # type: ignore[return-value]


def restore(sup: Supervisor, state: dict[str, Any]) -> None:
    """Adopt the previous image's workers, generation and counters into a fresh Supervisor."""
    from corral.supervisor.slots import Generation, Slot
    from corral.supervisor.worker_process import WorkerProcess
    from corral.worker.protocol import Channel

    info = state["supervisor"]
    sup.started_at = info["started_at"]
    sup.next_id = info["next_id"]
    sup.generation_counter = info["generation_counter"]
    sup.reexecs = info["reexecs"]
    if info.get("last_reload"):
        from corral.supervisor.supervisor import ReloadOutcome

        sup.last_reload = ReloadOutcome(**info["last_reload"])
    _adopt_balance_table(sup, state)
    by_id: dict[int, WorkerProcess] = {}
    for entry in state["workers"]:
        channel = Channel(socket.socket(fileno=entry["channel_fd"]))
        os.set_inheritable(entry["channel_fd"], False)
        worker = WorkerProcess(id=entry["id"], slot=entry["slot"], generation=entry["generation"],
                               proc=AdoptedProcess(entry["pid"]), channel=channel)  # type: ignore[arg-type]
        for name in WORKER_FIELDS:
            if name in entry and hasattr(worker, name):
                setattr(worker, name, entry[name])
        worker.sample = entry.get("sample") or {}
        by_id[worker.id] = worker
        sup.workers[worker.pid] = worker
        if sup.cells is not None and worker.balance_cell >= 0:
            sup.cells.adopt(worker.balance_cell)
    gen_state = state["generation"]
    generation = Generation(gen_state["number"], sup.config)
    generation.started_at = gen_state["started_at"]
    for slot_state in gen_state["slots"]:
        slot = Slot(slot_state["index"], worker=by_id.get(slot_state["worker"]),
                    successor=by_id.get(slot_state["successor"]), failures=slot_state["failures"],
                    restart_at=slot_state["restart_at"], last_error=slot_state["last_error"])
        generation.slots.append(slot)
    sup.generation = generation
    sup.retiring = [by_id[i] for i in state["retiring"] if i in by_id]
    sup.recycling = by_id.get(state["recycling"]) if state["recycling"] is not None else None
    sup.phase = "running"
    sup.resumed = state


def _adopt_balance_table(sup: Supervisor, state: dict[str, Any]) -> None:
    """Keep the accept-balance table the running workers write to (old and new workers share it)."""
    from corral.worker.balance import BalanceTable, CellAllocator

    info = state["balance"]
    if info is None:
        return
    fd = info["fd"]
    if sup.balance is None:
        os.close(fd)  # accept_balance is off now; the adopted workers keep their own mapping
        return
    sup.balance.close()
    os.set_inheritable(fd, False)
    sup.balance = BalanceTable(fd)
    sup.cells = CellAllocator(sup.balance)


def control_socket_from(state: dict[str, Any]) -> socket.socket | None:
    fd = state["control"]["fd"]
    if fd is None:
        return None
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd)


def waiting_clients_from(state: dict[str, Any]) -> list[socket.socket]:
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
        from corral import cli
        from corral.supervisor import control, supervisor  # noqa: F401  (the modules the new image runs)

        args = cli.build_parser().parse_args(payload["argv"])
        if getattr(args, "command", None) == "run":
            cli._load(args, cli._overrides(args))
        state = payload["state"]
        if state.get("version") != STATE_VERSION:
            raise ReexecError(f"cannot adopt state version {state.get('version')} (this code speaks "
                              f"{STATE_VERSION}); restart the service instead")
        config_from_json(state["config"])
    except SystemExit as exc:
        print(f"invalid command line {payload.get('argv')!r} ({exc})", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
