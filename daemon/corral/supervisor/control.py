"""The control socket: a unix stream socket in the runtime directory.

Protocol: one JSON object per line each way. Requests:
  ``{"cmd": "status"}``  -> the snapshot `corral status` prints
  ``{"cmd": "reload"}``  -> starts a reload, answers when it has succeeded or failed:
                            ``{"ok": true|false, "generation": N, "message": "..."}``
  ``{"cmd": "ping"}``    -> ``{"ok": true, "pid": N}``
Errors: ``{"ok": false, "error": "..."}``.

Only the owner (and root) may connect: the socket is created mode 0600, in a directory
``rundir`` made or checked, under the claim (a lock) ``corral run`` took before binding
anything. The server removes only the socket file it made itself.

The client believes only a server that runs as the expected user (``SO_PEERCRED``: its
own uid or root; for root also the user the socket's directory was given to, as systemd's
RuntimeDirectory= with User= does), and checks each reply's fields before it reads them.

An in-place re-exec (``reexec``) hands the listening socket, the claim and the
connections of reload requests still waiting to the new image, which answers them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import stat
import struct
from typing import Any, Protocol

from corral.config import socket_path_too_long
from corral.supervisor import rundir
from corral.supervisor.state import ReloadOutcome
from corral.supervisor.status import Reporting, snapshot

log = logging.getLogger("corral.control")

MAX_REQUEST = 65536


class ControlError(Exception):
    """The control socket cannot be reached or answered with an error; the message says why."""


class Controlled(Reporting, Protocol):
    """What the control socket needs of the supervisor: its report, and reloads."""

    def start_reload(self, waiter: asyncio.Future[ReloadOutcome] | None = None, notify: bool = True) -> None: ...


class ControlServer:
    def __init__(self, supervisor: Controlled, path: str) -> None:
        self.supervisor = supervisor
        self.path = path
        self.server: asyncio.Server | None = None
        # reload requests waiting for their outcome -> the fd of the client's connection
        # (handed over to the new image by an in-place re-exec, which answers them)
        self.waiting: dict[asyncio.Future[ReloadOutcome], int] = {}
        # (st_dev, st_ino) of the socket file this process made (or adopted): close() removes
        # that file and nothing else, never another corral's socket at the same path.
        self.made: tuple[int, int] | None = None
        self._own_claim = False  # claimed here, not by supervisor.run(): close() releases it

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on the control socket path, or on ``sock`` (already listening: an in-place re-exec)."""
        if sock is not None:
            self.path = sock.getsockname() or self.path  # where it is bound, whatever the config says now
            self.made = _identity(self.path)
            self.server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST)
            return
        if rundir.held() is None:
            try:
                rundir.claim_for(self.supervisor.config)
            except rundir.ClaimError as exc:
                raise ControlError(str(exc)) from None
            self._own_claim = True
        if os.path.lexists(self.path):
            # We hold the claim, so this is a crashed corral's socket, unless a corral from
            # before claims existed still serves it.
            if _answers(self.path):
                raise ControlError(f"another corral is running with control socket {self.path}; stop it, "
                                   "or give this one another name: -n NAME (or name:, or control_socket:)")
            try:
                os.unlink(self.path)
            except OSError as exc:
                raise ControlError(f"cannot remove the stale control socket {self.path}: {exc.strerror}") from None
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST)
        except OSError as exc:
            raise ControlError(f"cannot create control socket {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        self.made = _identity(self.path)

    def listening_fd(self) -> int | None:
        return self.server.sockets[0].fileno() if self.server is not None and self.server.sockets else None

    def waiting_clients(self) -> list[int]:
        """fds of the connections whose reload request has no answer yet."""
        return [fd for waiter, fd in self.waiting.items() if not waiter.done()]

    def adopt_waiting(self, clients: list[socket.socket]) -> list[asyncio.Future[ReloadOutcome]]:
        """Reload requests a previous image of this process accepted: one waiter each, answered
        on the client's connection once the reload is over."""
        waiters = []
        for client in clients:
            waiter: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
            waiter.add_done_callback(functools.partial(_answer_when_done, client))
            waiters.append(waiter)
        return waiters

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.made is not None and _identity(self.path) == self.made:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.made = None
        if self._own_claim:
            rundir.release()
            self._own_claim = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError:
                    reply: dict[str, Any] = {"ok": False, "error": "requests are one JSON object per line"}
                else:
                    sock = writer.get_extra_info("socket")
                    reply = await self._handle(request, sock.fileno() if sock is not None else None)
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except Exception:
            log.exception("control socket request failed")
        finally:
            writer.close()

    async def _handle(self, request: dict[str, Any], client_fd: int | None = None) -> dict[str, Any]:
        cmd = request.get("cmd")
        sup = self.supervisor
        if cmd == "status":
            return {"ok": True, **snapshot(sup)}
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid()}
        if cmd == "reload":
            waiter: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
            if client_fd is not None:
                self.waiting[waiter] = client_fd
            try:
                sup.start_reload(waiter, notify=not request.get("notified", False))
                return _outcome_reply(await waiter)
            finally:
                self.waiting.pop(waiter, None)
        return {"ok": False, "error": f"unknown command {cmd!r}; use status, reload or ping"}


def _outcome_reply(outcome: ReloadOutcome) -> dict[str, Any]:
    return {"ok": outcome.ok, "generation": outcome.generation, "message": outcome.message,
            "duration": outcome.duration}


def _answer_when_done(client: socket.socket, done: asyncio.Future[ReloadOutcome]) -> None:
    _answer(client, done.result())


def _answer(client: socket.socket, outcome: ReloadOutcome) -> None:
    """Answer an adopted reload request (small, so a short blocking send is fine), then hang up."""
    try:
        client.settimeout(5.0)
        client.sendall(json.dumps(_outcome_reply(outcome)).encode() + b"\n")
    except OSError as exc:
        log.warning("could not answer a reload request: %s", exc)
    finally:
        client.close()


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _answers(path: str) -> bool:
    try:
        request(path, {"cmd": "ping"}, timeout=2.0)
    except ControlError:
        return False
    return True


# --------------------------------------------------------------------------- the client


def request(path: str, message: dict[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
    """Client side: send one request and return the reply, checked (``check_reply``)."""
    problem = socket_path_too_long(path)
    if problem is not None:
        raise ControlError(f"{problem}; pass a shorter --control-socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}: is corral running? "
                               "(check `systemctl status`, or pass --config / -n NAME / --control-socket)") from None
        except ConnectionRefusedError:
            raise ControlError(f"nothing listens on {path}: corral is not running (a stale socket file)") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as the service's user or root") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        check_peer(sock, path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"no answer from {path} within {timeout}s") from None
            if not chunk:
                raise ControlError(f"{path} closed the connection without an answer")
            data += chunk
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"{path} sent an answer that is not JSON") from None
    return check_reply(path, str(message.get("cmd")), reply)


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def check_peer(sock: socket.socket, path: str) -> None:
    """Refuse a server that is not the expected user: on a shared machine another user may
    have put a socket where ours should be, to fake corral's answers ("reload ok")."""
    pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if uid in trusted_uids(path):
        return
    raise ControlError(f"refusing the control socket {path}: it is served by uid {uid} (pid {pid}), not by you "
                       f"(uid {os.geteuid()}) or root, so it is not your corral (another user may have put it "
                       "there); remove it if it is not yours, or pass -n NAME / --control-socket for yours")


def trusted_uids(path: str) -> set[int]:
    """Whose server a client believes: its own user's and root's; root also believes the user
    that root gave the socket's directory to (RuntimeDirectory= with User=: the service's)."""
    me = os.geteuid()
    trusted = {me, 0}
    if me == 0:
        owner = _given_directory_owner(path)
        if owner is not None:
            trusted.add(owner)
    return trusted


def _given_directory_owner(path: str) -> int | None:
    """The owner of the socket's directory, if it is a real directory (not a symlink) in one
    only root may write: then root (or systemd) made it for that user, who alone could bind there."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.lstat(directory)
        parent = os.stat(os.path.dirname(directory))
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or parent.st_uid != 0 or parent.st_mode & 0o022:
        return None
    return st.st_uid


# --------------------------------------------------------------------------- replies


class Maybe:
    """A field that may be missing or null."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema


_NUMBER = (int, float)
_NONE = type(None)

# What the client reads of each successful reply (`corral status` prints these); more is fine.
STATUS_REPLY: dict[str, Any] = {
    "name": str, "phase": str, "pid": int, "uptime": _NUMBER, "app": (str, _NONE), "status": str,
    "generation": int, "workers_wanted": int, "workers_ready": int, "requests_total": _NUMBER,
    "restarts": dict,
    "last_reload": Maybe({"ok": bool, "message": str, "duration": _NUMBER}),
    "supervisor": {"rss": (*_NUMBER, _NONE), "uss": (*_NUMBER, _NONE)},
    "listeners": [{"address": str, "role": str, "source": str, "fd": int,
                   "queue_depth": Maybe(_NUMBER), "queue_max": Maybe(_NUMBER)}],
    "workers": [{"pid": int, "generation": int, "slot": int, "state": str, "reason": (str, _NONE),
                 "requests": _NUMBER, "in_flight": _NUMBER, "connections_open": _NUMBER,
                 "uss": (*_NUMBER, _NONE), "age": _NUMBER}],
}
RELOAD_REPLY: dict[str, Any] = {"message": str, "generation": int, "duration": _NUMBER}
PING_REPLY: dict[str, Any] = {"pid": int}
_REPLIES = {"status": STATUS_REPLY, "reload": RELOAD_REPLY, "ping": PING_REPLY}


def check_reply(path: str, cmd: str, reply: Any) -> dict[str, Any]:
    """``reply`` if it holds what a reply to ``cmd`` needs, else ControlError saying what is
    wrong (rather than a KeyError from the code that reads it)."""
    problem = _mismatch(reply, {"ok": bool}, "")
    if problem is None and not reply["ok"]:
        # A refusal says why in "error" (a bad request) or "message" (a failed reload).
        if not isinstance(reply.get("error"), str) and not isinstance(reply.get("message"), str):
            problem = "a failure without an error or a message"
    elif problem is None and cmd in _REPLIES:
        problem = _mismatch(reply, _REPLIES[cmd], "")
    if problem is not None:
        raise ControlError(f"unexpected reply from the control socket {path}: {problem} (a corral of another "
                           "version, or not corral at all?)")
    assert isinstance(reply, dict)  # _mismatch() checked that it is an object
    return reply


def _mismatch(value: Any, schema: Any, where: str) -> str | None:
    """Why ``value`` does not fit ``schema`` (a type or a tuple of types, a dict of fields, a
    one-element list for a list's items, Maybe), or None when it does."""
    if isinstance(schema, Maybe):
        return None if value is None else _mismatch(value, schema.schema, where)
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where or 'it'} is {_describe(value)}, not an object"
        for key, field in schema.items():
            name = f"{where}.{key}" if where else key
            if key not in value:
                if isinstance(field, Maybe):
                    continue
                return f"{name} is missing"
            problem = _mismatch(value[key], field, name)
            if problem is not None:
                return problem
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} is {_describe(value)}, not a list"
        for index, item in enumerate(value):
            problem = _mismatch(item, schema[0], f"{where}[{index}]")
            if problem is not None:
                return problem
        return None
    types = schema if isinstance(schema, tuple) else (schema,)
    # isinstance(True, int) holds, but true is no pid.
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    return f"{where} is {_describe(value)}"


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
