"""The private control channel between the supervisor and one worker.

A ``SOCK_SEQPACKET`` socketpair: every message is one datagram holding one JSON
object with a ``"t"`` (type) field, so no framing code is needed and a reader
never sees half a message. Both ends are non-blocking. A sender that finds the
channel full drops the message (heartbeats are periodic, and a stalled peer must
never block a worker's event loop or the supervisor's loop).

This module is imported by both sides and uses only the standard library.

Supervisor -> worker:
  ``hello``   the config, the worker's identity and its listening fds (first message)
  ``reload_gate`` (right after the hello) the worker belongs to a reload: a failed warm-up fails its
              boot, since the old generation serves on (``corral.worker.probe``)
  ``park``    a rolling reload replaced the worker: accept no new connections, keep the app loaded
  ``unpark``  that reload rolled back: accept again
  ``drain_notice`` corral announced a stop to the load balancers (``drain_delay``): ``on`` true: keep
              serving, but answer with ``Connection: close`` so clients reconnect elsewhere; false: undo
  ``promote`` a standby worker (hello ``standby``) takes ``slot``: serve on ``listeners`` (fds)
  ``retiring`` (right before the stop signal) why: ``restart`` is true for a reload, recycle or
              scale-down (the service goes on: WebSockets close with 1012), false on stop (1001)
Worker -> supervisor:
  ``booted``  the app is imported (lifespan startup follows)
  ``ready``   lifespan startup finished (and the warm-up and health check passed); the sockets are being
              served. Carries ``identity``: the app's version / file hash / git revision
  ``hb``      heartbeat, once a second from the event loop, with the engine's counters
  ``boot_error`` the app could not be imported or its startup failed (message included)
  ``draining`` the worker stopped accepting and is finishing in-flight requests
  ``quiesced`` while draining: no idle connection is left open (only busy ones, each closing after
              its response), so no new request can reach this worker any more
  ``standby`` a standby is booted (app imported, startup and warm-up passed) and waits for ``promote``

(A worker that wants to be replaced, e.g. for a WSGI request stuck past its deadline, says
so in its heartbeat's ``wants_recycle``, which the supervisor's health policies read.)

Each kind is a member of ``Kind``; a message with a payload has a TypedDict and one
constructor here (``hello()``, ``heartbeat()``, ...), so both sides build and read the
same fields. ``kind_of()`` is the one place a received message's type is decoded.
"""

from __future__ import annotations

import enum
import errno
import json
import socket
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

if TYPE_CHECKING:
    from corral.config import Config
    from corral.engine import Server
    from corral.engine.settings import EngineSettings
    from corral.logs import LogSetup

MAX_MESSAGE = 1 << 20


class Kind(enum.StrEnum):
    """The ``"t"`` of a message: what it is."""

    # supervisor -> worker
    HELLO = "hello"
    RELOAD_GATE = "reload_gate"
    PARK = "park"
    UNPARK = "unpark"
    RETIRING = "retiring"
    DRAIN_NOTICE = "drain_notice"
    PROMOTE = "promote"  # a standby takes a slot: serve on these listeners
    # worker -> supervisor
    BOOTED = "booted"
    READY = "ready"
    HEARTBEAT = "hb"
    BOOT_ERROR = "boot_error"
    DRAINING = "draining"
    QUIESCED = "quiesced"
    STANDBY = "standby"  # booted and warmed up; waiting for a slot (PROMOTE)


Message = Mapping[str, Any]  # one decoded datagram: a JSON object with a "t"


class WorkerInfo(TypedDict):
    id: int
    slot: int
    generation: int


class ListenerInfo(TypedDict):
    fd: int
    role: str
    address: str
    name: str  # systemd's FileDescriptorName ("" for a socket corral bound): ssl_listeners may name it


class BalanceInfo(TypedDict):
    fd: int
    cell: int


class InFlightInfo(TypedDict):
    fd: int
    slots: int


class Hello(TypedDict):
    t: str
    config: dict[str, Any]
    worker: WorkerInfo
    listeners: list[ListenerInfo]
    balance: BalanceInfo | None
    in_flight: InFlightInfo | None
    standby: bool  # boot, then wait for PROMOTE before serving (``listeners``: every slot's)


class Promote(TypedDict):
    t: str
    slot: int
    listeners: list[int]  # the fds (of the hello's listeners) to serve on; the others are closed


WORKER_LOG_ROLE = "corral-worker"  # a worker's name in its log lines: corral-worker[PID]


def config_text(data: Mapping[str, Any]) -> str:
    """A hello's config as canonical JSON text, which a worker compares with its zygote's
    (KnownConfig.text). Comparing the dicts would take a reference to each of the zygote's
    values, writing to (and so copying) the pages they sit on."""
    return json.dumps(data, sort_keys=True)


class KnownConfig(NamedTuple):
    """A config a zygote already read and checked, with the hello data it was read from
    (``text``: its config_text()): a worker it forks takes it as it is when its own hello carries
    the same data (corral.worker.main.run).

    Built in the zygote from it too, since building them in a forked worker writes to (and so
    copies) pages it shares with the zygote: together about 1.4 MiB of a Django tree's USS with
    4 workers (docs/zygote.md):

    - ``settings``: the engine's settings (None: each worker builds its own, and reports what is
      wrong with them);
    - ``logging``: the worker's log handlers (corral.logs.log_setup, role ``corral-worker``);
    - ``server``: with preload, the engine for the app object (corral.engine.Server, with its app
      and interface), made but not started: it has no loop and no socket until a worker starts it.
      None (an app factory, which each worker calls; an app that cannot be loaded): each worker
      loads its app and builds its own, and reports what is wrong.
    """

    text: str
    config: Config
    settings: EngineSettings | None = None
    logging: LogSetup | None = None
    server: Server | None = None


class Retiring(TypedDict):
    t: str
    reason: str
    restart: bool  # the service goes on (reload, recycle, scale-down): WebSockets close with 1012


class DrainNotice(TypedDict):
    t: str
    on: bool  # true: every response closes its connection (the host is leaving the pool); false: undo


class Booted(TypedDict):
    t: str
    interface: str


class Ready(TypedDict):
    t: str
    pid: int
    interface: str
    identity: dict[str, Any] | None
    requests: int  # answered before ready (the gate's own probes): not counted as served


class Heartbeat(TypedDict):
    t: str
    stats: dict[str, Any]


class BootError(TypedDict):
    t: str
    error: str


def hello(config: dict[str, Any], worker: WorkerInfo, listeners: list[ListenerInfo],
          balance: BalanceInfo | None, in_flight: InFlightInfo | None, standby: bool = False) -> Hello:
    return {"t": Kind.HELLO, "config": config, "worker": worker, "listeners": listeners,
            "balance": balance, "in_flight": in_flight, "standby": standby}


def promote(slot: int, listeners: list[int]) -> Promote:
    return {"t": Kind.PROMOTE, "slot": slot, "listeners": listeners}


def retiring(reason: str, restart: bool) -> Retiring:
    return {"t": Kind.RETIRING, "reason": reason, "restart": restart}


def drain_notice(on: bool) -> DrainNotice:
    return {"t": Kind.DRAIN_NOTICE, "on": on}


def booted(interface: str) -> Booted:
    return {"t": Kind.BOOTED, "interface": interface}


def ready(pid: int, interface: str, identity: dict[str, Any] | None, requests: int) -> Ready:
    return {"t": Kind.READY, "pid": pid, "interface": interface, "identity": identity, "requests": requests}


def heartbeat(stats: dict[str, Any]) -> Heartbeat:
    return {"t": Kind.HEARTBEAT, "stats": stats}


def boot_error(error: str) -> BootError:
    return {"t": Kind.BOOT_ERROR, "error": error}


def bare(kind: Kind) -> dict[str, str]:
    """A message without a payload (``reload_gate``, ``park``, ``unpark``, ``draining``, ``quiesced``)."""
    return {"t": kind}


def kind_of(message: Message) -> Kind | None:
    """What a received message is; None for a kind this side does not know (a peer of another
    version): it is ignored, never fatal."""
    value = message.get("t")
    if not isinstance(value, str):
        return None
    try:
        return Kind(value)
    except ValueError:
        return None


class ChannelClosed(Exception):
    """The peer closed its end (it exited or is exiting)."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end). The worker end is made inheritable by the spawner."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    return a, b


class Channel:
    """One end of the control channel."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.dropped = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> bool:
        """Send one message; False (and counted) if the channel is full or closed."""
        data = json.dumps(message, separators=(",", ":"), default=_default).encode()
        try:
            self.sock.send(data)
        except BlockingIOError:
            self.dropped += 1
            return False
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                return False
            raise
        return True

    def receive(self) -> Iterator[dict[str, Any]]:
        """Yield every message waiting now; raise ChannelClosed at end of stream."""
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except ConnectionResetError:
                raise ChannelClosed() from None
            if not data:
                raise ChannelClosed()
            try:
                message = json.loads(data)
            except ValueError:
                continue  # a corrupt datagram is skipped, never fatal
            if isinstance(message, dict):
                yield message

    def receive_blocking(self, timeout: float | None) -> dict[str, Any]:
        """Wait for one message (the worker's hello); raise ChannelClosed or TimeoutError."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except TimeoutError:
            raise TimeoutError("no message on the control channel") from None
        finally:
            self.sock.setblocking(False)
        if not data:
            raise ChannelClosed()
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError(f"the control channel sent {type(message).__name__}, not a message object")
        return message

    def close(self) -> None:
        self.sock.close()


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    return str(obj)
