"""Driving the real Supervisor and Reloader in-process, in milliseconds: no fork, no sockets to
serve, no sleeps.

* ``FakeSpawner`` is the supervisor's ``Spawner``: each "process" is a ``FakeProcess`` (a pid
  far beyond pid_max, so nothing can ever signal a real process) and a real control-channel
  socketpair whose worker end the test holds (``FakeWorker``). The test says when a worker
  booted, is ready, sends a heartbeat or exits, with the messages a real worker sends
  (``corral.worker.protocol``).
* ``FakeClock`` is the supervisor's clock: backoff, the respawn budget and reload_timeout
  run on it, and the test moves it.
* ``FakeNotifier`` records what would go to systemd (READY=1, RELOADING=1, STATUS=...).

The supervisor runs on the test's event loop (``Harness.settle()`` lets it read the channels);
``supervisor.tick()`` is called by the test, after moving the clock, instead of every 0.25 s.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from corral.config import Config
from corral.supervisor.identity import CodeIdentity
from corral.supervisor.listeners import Listeners
from corral.supervisor.notify import Notifier
from corral.supervisor.reload import ReloadOutcome
from corral.supervisor.spawn import SpawnRequest
from corral.supervisor.supervisor import Supervisor
from corral.supervisor.worker_process import WorkerProcess
from corral.worker import protocol
from corral.worker.protocol import Channel, ChannelClosed, Kind

# Above the kernel's largest pid_max (2**22): never a real process.
_PIDS = itertools.count(1 << 30)
CODE = CodeIdentity("test", "0" * 16)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeNotifier(Notifier):
    """Records each sd_notify datagram as a dict instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self._notifier = None
        self.watchdog_usec = 0
        self.sent: list[dict[str, object]] = []

    @property
    def enabled(self) -> bool:
        return True

    def send(self, **fields: object) -> bool:
        self.sent.append(fields)
        return True

    def count(self, key: str) -> int:
        return sum(1 for message in self.sent if key in message)


@dataclass
class FakeProcess:
    """What the supervisor uses of a Popen; the test decides when it exits."""

    pid: int = field(default_factory=lambda: next(_PIDS))
    returncode: int | None = None
    exit_code: int | None = None  # set by the test: poll() reports it
    signals: list[int] = field(default_factory=list)

    def poll(self) -> int | None:
        if self.returncode is None and self.exit_code is not None:
            self.returncode = self.exit_code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            self.exit_code = -signal.SIGKILL  # only the final SIGKILL waits: it "dies"
            self.poll()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            self.signals.append(sig)


class FakeWorker:
    """The worker side of one fake process."""

    def __init__(self, process: WorkerProcess, end: socket.socket) -> None:
        self.process = process
        self.channel = Channel(end)
        self.inbox: list[dict[str, Any]] = []  # what the supervisor sent, read so far

    @property
    def proc(self) -> FakeProcess:
        assert isinstance(self.process.proc, FakeProcess)
        return self.process.proc

    @property
    def id(self) -> int:
        return self.process.id

    @property
    def state(self) -> str:
        return self.process.state

    def received(self) -> list[dict[str, Any]]:
        try:
            self.inbox.extend(self.channel.receive())
        except (ChannelClosed, OSError):
            pass  # the supervisor closed its end: nothing more will come
        return self.inbox

    def kinds_received(self) -> list[str]:
        return [str(m.get("t")) for m in self.received()]

    def booted(self) -> None:
        self.channel.send(protocol.booted("asgi"))

    def ready(self, requests: int = 0) -> None:
        self.channel.send(protocol.ready(self.proc.pid, "asgi", {"version": "1"}, requests))

    def heartbeat(self, **stats: Any) -> None:
        self.channel.send(protocol.heartbeat(stats))

    def boot_error(self, error: str) -> None:
        self.channel.send(protocol.boot_error(error))

    def standby(self) -> None:
        self.channel.send(protocol.bare(Kind.STANDBY))

    def quiesced(self) -> None:
        self.channel.send(protocol.bare(Kind.QUIESCED))

    def exit(self, code: int) -> None:
        """The process ends: its channel closes, as a real one's does, and it reports ``code``."""
        self.proc.exit_code = code
        self.channel.close()


class FakeSpawner:
    def __init__(self) -> None:
        self.workers: list[FakeWorker] = []
        self.failures: list[OSError] = []  # raised by the next spawns, in order
        self.requests: list[SpawnRequest] = []

    def __call__(self, request: SpawnRequest) -> WorkerProcess:
        self.requests.append(request)
        if self.failures:
            raise self.failures.pop(0)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = WorkerProcess(id=request.worker_id, slot=request.slot, generation=request.generation,
                                proc=FakeProcess(), channel=Channel(parent))
        self.workers.append(FakeWorker(process, child))
        return process


def make_config(**values: Any) -> Config:
    data = {"app": "fake:app", "workers": 2, "accept_balance": False, "policy_interval": 3600.0,
            "warmup": None, **values}
    return Config.from_json(data)


class Harness:
    """One Supervisor with fake processes, a fake clock and a fake notifier, on the running loop."""

    def __init__(self, config: Config, reload_config: Callable[[], Awaitable[Config]] | None = None) -> None:
        self.clock = FakeClock()
        self.spawner = FakeSpawner()
        self.notifier = FakeNotifier()
        self.config = config
        self.next_config: Config | None = None  # what the next reload reads
        self.sup = Supervisor(config, Listeners(), reload_config=reload_config or self._reload_config,
                              notifier=self.notifier, spawner=self.spawner, clock=self.clock,
                              installed_code=lambda: CODE)
        self.sup.attach(asyncio.get_running_loop())

    async def _reload_config(self) -> Config:
        return self.next_config or self.config

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> Any:
        return self.sup.state

    def worker(self, worker_id: int) -> FakeWorker:
        return next(w for w in self.spawner.workers if w.id == worker_id)

    def live(self, generation: int | None = None) -> list[FakeWorker]:
        """Fake workers whose process the supervisor still holds."""
        pids = self.sup.state.workers
        return [w for w in self.spawner.workers if w.proc.pid in pids
                and (generation is None or w.process.generation == generation)]

    def serving(self) -> list[FakeWorker]:
        generation = self.sup.state.generation
        ids = {s.worker.id for s in generation.slots if s.worker is not None} if generation else set()
        return [w for w in self.spawner.workers if w.id in ids]

    def restarts(self) -> dict[str, int]:
        return {k: v for k, v in self.sup.metrics.status()["restarts"].items() if v}

    # ------------------------------------------------------------------ driving

    async def settle(self, rounds: int = 20) -> None:
        """Let the loop run its ready callbacks (channel reads, the reload's task)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {what}")
            await asyncio.sleep(0.001)

    async def start(self, ready: bool = True) -> list[FakeWorker]:
        """Generation 1 boots; with ``ready`` every worker says ready (READY=1 follows)."""
        self.sup.begin()
        workers = list(self.spawner.workers)
        if ready:
            for worker in workers:
                worker.ready()
            await self.until(lambda: all(w.state == "ready" for w in workers), "generation 1 ready")
        return workers

    async def exit(self, worker: FakeWorker, code: int) -> None:
        worker.exit(code)
        await self.until(lambda: worker.proc.pid not in self.sup.state.workers, f"worker {worker.id} reaped")

    def reload(self) -> asyncio.Future[ReloadOutcome]:
        waiter: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
        self.sup.start_reload(waiter, notify=True)
        return waiter

    def tick(self, advance: float = 0.0) -> None:
        self.clock.advance(advance)
        self.sup.tick()

    def close(self) -> None:
        for worker in self.spawner.workers:
            worker.channel.close()
            if worker.process.alive:
                worker.process.close()


def run(coroutine_function: Callable[[], Any]) -> Any:
    """Run one async test body on a fresh loop."""
    return asyncio.run(coroutine_function())
