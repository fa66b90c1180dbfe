"""The supervisor's side of ``worker_start: zygote``: one zygote per generation, workers forked from it.

The zygote itself is ``corral.worker.zygote`` (how it imports, preloads and forks). Here:

- ``StartingSpawner`` is the supervisor's real ``Spawner``: ``worker_start: exec`` requests go to
  ``spawn.spawn_worker`` (a fresh interpreter each), ``zygote`` ones to the generation's zygote, which is
  started on the first request of its generation. So a reload that switches worker_start works.
- Exit statuses. A forked worker is the zygote's grandchild; the supervisor makes itself a child
  subreaper (PR_SET_CHILD_SUBREAPER) and the zygote forks through a middle process that exits at
  once, so every worker is re-parented to the supervisor before its pid is handed over. The
  supervisor then waits for it (``ForkedProcess.poll``, ``waitpid``) exactly as for an exec'd worker:
  the status is exact, signals never reach a recycled pid, and workers keep serving (and are still
  watched) when their zygote crashes. The other choice, the zygote reporting exits, would lose them
  with the zygote. Being a subreaper also makes orphans the app leaves behind corral's children:
  the supervisor's reaper (corral.supervisor.reaper) waits for them.
- A zygote that exits while its generation lives is restarted with backoff (0.1 s doubling to 30 s,
  as a slot's) on the next tick; its workers keep serving meanwhile. A slot whose worker is due
  while its zygote is down backs off as for a failed start.
- The zygote of a generation that is gone (a reload cut over, or rolled back) is told to exit by
  closing its request channel.

Starting a zygote never blocks the supervisor's loop: the zygote is started, and until its
``zygote_ready`` comes (the runtime's imports, and the app's with preload: seconds for a big app) a
slot that asks for a worker gets ``SpawnPending`` and asks again every ``POLL_INTERVAL``. Meanwhile
the supervisor goes on answering heartbeats, systemd's watchdog and the control socket. A zygote
silent for ``boot_timeout`` is killed and counts as a failed start.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from corral.config import Config
from corral.metrics import procfs
from corral.supervisor.reaper import become_subreaper
from corral.supervisor.spawn import SpawnPending, SpawnRequest, spawn_worker, worker_argv, worker_env
from corral.supervisor.worker_process import WorkerProcess
from corral.worker import inflight
from corral.worker import zygote_protocol as wire
from corral.worker.protocol import Channel, socketpair

log = logging.getLogger("corral.supervisor")

FORK_TIMEOUT = 10.0  # a fork takes milliseconds; a zygote this slow is treated as dead
POLL_INTERVAL = 0.05  # how soon a slot waiting for its importing zygote asks again
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
STOP_WAIT = 2.0  # how long an old zygote may take to exit after its channel closed, before SIGKILL
ZYGOTE = "zygote"  # the worker_start value that selects this module


class ZygoteState:
    """Where a zygote is in its life (``corral status`` shows it)."""

    BOOTING = "booting"
    READY = "ready"
    FAILED = "failed"  # up, but its workers report its import error
    EXITED = "exited"


class ZygoteError(OSError):
    """A zygote could not be started or could not fork: the slot backs off as for a failed start."""


class ForkedProcess:
    """A worker forked by a zygote and re-parented to the supervisor: waited for with waitpid."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def poll(self) -> int | None:
        if self._returncode is not None:
            return self._returncode
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            # Not (or no longer) our child: someone else reaped it. Alive only if it still runs.
            if not _running(self._pid):
                self._returncode = 255
            return self._returncode
        if pid == self._pid:
            self._returncode = os.waitstatus_to_exitcode(status)
        return self._returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self._pid}", timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self._returncode is None:  # an unreaped child's pid is never recycled
            os.kill(self._pid, sig)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


@dataclass
class Zygote:
    """One generation's zygote process."""

    generation: int
    config: Config
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    state: str = ZygoteState.BOOTING
    started_at: float = field(default_factory=time.monotonic)
    error: str | None = None
    preloaded: bool = False
    import_seconds: float = 0.0
    forks: int = 0
    stopped_at: float = 0.0
    boot_timeout: float = 60.0  # how long it may import before it counts as dead

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll_ready(self) -> bool:
        """Whether it is up (ready, or failed with an error its workers report), reading its
        ``zygote_ready`` if that came; never waits. ZygoteError when it died while importing or
        stayed silent for ``boot_timeout``."""
        if self.state != ZygoteState.BOOTING:
            return True
        if not select.select([self.sock], [], [], 0)[0]:  # neither its message nor its exit yet
            if time.monotonic() - self.started_at > self.boot_timeout:
                raise ZygoteError(f"zygote of generation {self.generation} (pid {self.pid}) not ready after "
                                  f"boot_timeout={self.boot_timeout:g}s (the runtime's and, with preload, "
                                  "the app's imports); raise boot_timeout if the app is just slow")
            return False
        self._take_ready(self._receive(FORK_TIMEOUT, "start"))  # readable: returns at once
        return True

    def _take_ready(self, message: dict[str, Any]) -> None:
        if wire.kind_of(message) is not wire.ZygoteKind.READY:
            raise ZygoteError(f"zygote of generation {self.generation} sent {message.get('t')!r} before ready")
        self.error = message.get("error") if isinstance(message.get("error"), str) else None
        self.preloaded = bool(message.get("preloaded"))
        self.import_seconds = float(message.get("seconds") or 0.0)
        self.state = ZygoteState.FAILED if self.error else ZygoteState.READY

    def fork(self, request: SpawnRequest) -> WorkerProcess:
        """A worker for ``request``, forked by this zygote with the same fds an exec'd one inherits."""
        parent, child = socketpair()
        table = inflight.create(request.in_flight_slots) if request.in_flight_slots > 0 else -1
        try:
            fds = [child.fileno(), *request.listener_fds, *request.extra_fds, *([table] if table >= 0 else [])]
            message = wire.fork_request(fds, child.fileno())
            try:
                socket.send_fds(self.sock, [wire.encode(message)], fds)
                reply = self._receive(FORK_TIMEOUT, "fork")
            except OSError as exc:
                raise ZygoteError(f"zygote of generation {self.generation} (pid {self.pid}) cannot fork: {exc}") \
                    from exc
            if wire.kind_of(reply) is not wire.ZygoteKind.FORKED or not isinstance(reply.get("pid"), int):
                raise ZygoteError(f"zygote of generation {self.generation} could not fork a worker: "
                                  f"{reply.get('error', reply)}")
        except BaseException:
            parent.close()
            if table >= 0:
                os.close(table)
            raise
        finally:
            child.close()
        self.forks += 1
        return WorkerProcess(id=request.worker_id, slot=request.slot, generation=request.generation,
                             proc=ForkedProcess(reply["pid"]), channel=Channel(parent), in_flight_fd=table,
                             in_flight_slots=request.in_flight_slots if table >= 0 else 0)

    def _receive(self, timeout: float, doing: str) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(wire.MAX_MESSAGE)
        except TimeoutError:
            raise ZygoteError(f"zygote of generation {self.generation} (pid {self.pid}) did not answer within "
                              f"{timeout:g}s ({doing})") from None
        if not data:
            code = self._exit_code()
            raise ZygoteError(f"zygote of generation {self.generation} (pid {self.pid}) "
                              f"{'exited' if code is None else _describe(code)} during {doing}")
        try:
            return wire.decode(data)
        except ValueError as exc:
            raise ZygoteError(f"zygote of generation {self.generation} sent garbage: {exc}") from None

    def _exit_code(self) -> int | None:
        try:
            return self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return None

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        """Close its channel: it exits (its workers, the supervisor's children, are not affected)."""
        self.sock.close()
        self.state = ZygoteState.EXITED
        self.stopped_at = time.monotonic()

    def kill(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                log.error("zygote pid %d is still alive after SIGKILL", self.pid)
        self.state = ZygoteState.EXITED


def start_zygote(config: Config, generation: int) -> Zygote:
    """fork+exec a zygote exactly as a worker is started and send it its hello; it is ready (or
    failed) once ``poll_ready()`` says so."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            worker_argv(config.python, ["--zygote", "--channel-fd", str(child.fileno()),
                                        "--generation", str(generation)]),
            env=worker_env(os.environ, config.environment), cwd=config.app_dir, stdin=subprocess.DEVNULL,
            pass_fds=(child.fileno(),), process_group=0)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    zygote = Zygote(generation, config, proc, parent, boot_timeout=config.boot_timeout)
    try:
        parent.send(wire.encode(wire.zygote_hello(config.to_json(), generation)))
    except OSError:
        zygote.kill()
        raise
    return zygote


Starter = Callable[[Config, int], Zygote]


@dataclass
class Restart:
    """A crashed zygote's pending restart."""

    failures: int
    at: float
    last: str


class StartingSpawner:
    """The supervisor's real spawner: exec'd workers, or forks of each generation's zygote."""

    def __init__(self, exec_spawner: Callable[[SpawnRequest], WorkerProcess] = spawn_worker,
                 starter: Starter = start_zygote, clock: Callable[[], float] = time.monotonic) -> None:
        self.exec_spawner = exec_spawner
        self.starter = starter
        self.clock = clock
        self.zygotes: dict[int, Zygote] = {}  # generation -> its zygote
        self.restarts: dict[int, Restart] = {}  # generation -> when its crashed zygote is restarted
        self.restarted = 0  # zygote restarts since corral started
        self.subreaper = False
        self._retired: list[Zygote] = []  # told to exit, not reaped yet

    def __call__(self, request: SpawnRequest) -> WorkerProcess:
        if request.config.worker_start != ZYGOTE:
            return self.exec_spawner(request)
        zygote = self.zygotes.get(request.generation)
        if zygote is None or zygote.state == ZygoteState.EXITED:
            zygote = self._start(request.config, request.generation)
        try:
            if not self._up(zygote):
                raise SpawnPending(f"waiting for the zygote of generation {zygote.generation} (pid {zygote.pid}) "
                                   "to finish importing", self.clock() + POLL_INTERVAL)
            return zygote.fork(request)
        except ZygoteError as exc:
            self._lost(zygote, str(exc))
            raise

    def _up(self, zygote: Zygote) -> bool:
        """Whether ``zygote`` finished importing (ZygoteError if it died trying); says so once."""
        booting = zygote.state == ZygoteState.BOOTING
        if not zygote.poll_ready():
            return False
        if booting:
            what = "with the app preloaded" if zygote.preloaded else "runtime only"
            if zygote.error:
                log.error("zygote of generation %d (pid %d) is up but failed: %s; its workers report it",
                          zygote.generation, zygote.pid, zygote.error)
            else:
                log.info("zygote of generation %d (pid %d) ready in %.2fs (%s)", zygote.generation, zygote.pid,
                         zygote.import_seconds, what)
        return True

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is one of the zygotes (the reaper leaves it to ``tend``)."""
        return any(z.pid == pid for z in (*self.zygotes.values(), *self._retired))

    def tend(self, live: Iterable[tuple[int, Config]]) -> None:
        """Reap zygotes that exited, restart those of live generations when due, stop the others."""
        live_configs = dict(live)
        for retired in list(self._retired):
            if retired.poll() is not None:
                self._retired.remove(retired)
            elif time.monotonic() - retired.stopped_at > STOP_WAIT:
                log.warning("zygote pid %d did not exit %gs after its generation went; killing it",
                            retired.pid, STOP_WAIT)
                retired.kill()
        for number, zygote in list(self.zygotes.items()):
            code = zygote.poll()
            if number not in live_configs:
                del self.zygotes[number]
                self.restarts.pop(number, None)
                if code is None:
                    log.info("zygote of generation %d (pid %d) stops: its generation is gone", number, zygote.pid)
                    zygote.stop()
                    self._retired.append(zygote)
            elif code is not None and zygote.state != ZygoteState.EXITED:
                self._lost(zygote, f"zygote of generation {number} (pid {zygote.pid}) {_describe(code)}")
            elif zygote.state == ZygoteState.BOOTING:
                try:
                    self._up(zygote)  # its state for `corral status`, and its boot_timeout
                except ZygoteError as exc:
                    self._lost(zygote, str(exc))
        now = self.clock()
        for number, restart in list(self.restarts.items()):
            config = live_configs.get(number)
            if config is None or config.worker_start != ZYGOTE:
                del self.restarts[number]
                continue
            if now >= restart.at:
                try:
                    self._start(config, number)
                except OSError:
                    pass  # _start logged it and scheduled the next try

    def _start(self, config: Config, generation: int) -> Zygote:
        restart = self.restarts.get(generation)
        if restart is not None and self.clock() < restart.at:
            raise ZygoteError(f"{restart.last}; restarting it in {restart.at - self.clock():.1f}s")
        if not self.subreaper:
            self.subreaper = become_subreaper()
            if not self.subreaper:
                raise ZygoteError("cannot make the supervisor a child subreaper (prctl failed), which "
                                  "worker_start: zygote needs; use worker_start: exec")
        try:
            zygote = self.starter(config, generation)
        except OSError as exc:
            self._schedule(generation, f"cannot start the zygote of generation {generation}: {exc}")
            raise ZygoteError(str(exc)) from exc
        self.zygotes[generation] = zygote
        if restart is not None:
            self.restarted += 1
            del self.restarts[generation]
        log.info("zygote of generation %d (pid %d) starting%s", generation, zygote.pid,
                 " again" if restart is not None else "")
        return zygote

    def _lost(self, zygote: Zygote, why: str) -> None:
        if zygote.state == ZygoteState.EXITED:
            return
        zygote.kill()
        self._schedule(zygote.generation, why)

    def _schedule(self, generation: int, why: str) -> None:
        previous = self.restarts.get(generation)
        failures = previous.failures + 1 if previous is not None else 1
        delay = min(BACKOFF_FIRST * 2.0 ** (failures - 1), BACKOFF_MAX)
        self.restarts[generation] = Restart(failures, self.clock() + delay, why)
        log.error("%s; restarting it in %.1fs (its workers keep serving)", why, delay)

    def report(self) -> list[dict[str, Any]]:
        """The zygotes, for `corral status`."""
        now = time.monotonic()
        rows: list[dict[str, Any]] = []
        for number, zygote in sorted(self.zygotes.items()):
            rows.append({"generation": number, "pid": zygote.pid, "state": zygote.state,
                         "preloaded": zygote.preloaded, "error": zygote.error, "forks": zygote.forks,
                         "age": round(now - zygote.started_at, 3), **_memory(zygote.pid)})
        for number, restart in sorted(self.restarts.items()):
            if number not in self.zygotes or self.zygotes[number].state == ZygoteState.EXITED:
                rows.append({"generation": number, "pid": None, "state": "restarting", "preloaded": False,
                             "error": restart.last, "forks": 0, "age": 0.0, "uss": None, "pss": None})
        return rows

    def close(self) -> None:
        """At exit: every zygote goes (the workers are stopped by the supervisor)."""
        for zygote in (*self.zygotes.values(), *self._retired):
            zygote.kill()
        self.zygotes.clear()
        self._retired.clear()


def _memory(pid: int) -> dict[str, int | None]:
    try:
        _rss, uss, pss = procfs.memory(pid)
    except (OSError, ValueError):  # it just exited; only a figure
        return {"uss": None, "pss": None}
    return {"uss": uss, "pss": pss}


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


