"""The control socket: a unix stream socket in the runtime directory.

Protocol: one JSON object per line each way. Requests:
  ``{"cmd": "status"}``  -> the snapshot `corral status` prints
  ``{"cmd": "reload"}``  -> starts a reload, answers when it has succeeded or failed:
                            ``{"ok": true|false, "generation": N, "message": "..."}``
  ``{"cmd": "ping"}``    -> ``{"ok": true, "pid": N}``
Errors: ``{"ok": false, "error": "..."}``.

Only the owner (and root) may connect: the socket is created mode 0600.

An in-place re-exec (``reexec``) hands the listening socket and the connections
of reload requests still waiting to the new image, which answers them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.supervisor.supervisor import Supervisor

log = logging.getLogger("corral.control")

MAX_REQUEST = 65536


class ControlError(Exception):
    """The control socket cannot be reached or answered with an error; the message says why."""


class ControlServer:
    def __init__(self, supervisor: Supervisor, path: str) -> None:
        self.supervisor = supervisor
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        # reload requests waiting for their outcome -> the fd of the client's connection
        # (handed over to the new image by an in-place re-exec, which answers them)
        self.waiting: dict[asyncio.Future[Any], int] = {}

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on the control socket path, or on ``sock`` (already listening: an in-place re-exec)."""
        if sock is not None:
            self.server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST)
            return
        path = Path(self.path)
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlError(f"cannot create the directory of the control socket {self.path}: {exc.strerror}; "
                               "set control_socket: in the config, or RuntimeDirectory= in the unit") from None
        if path.exists() or path.is_symlink():
            if _answers(self.path):
                raise ControlError(f"another corral is running with control socket {self.path}; "
                                   "stop it, or give this instance another name: (or control_socket:)")
            path.unlink()  # left over from a crash
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST)
        except OSError as exc:
            raise ControlError(f"cannot create control socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)

    def listening_fd(self) -> int | None:
        return self.server.sockets[0].fileno() if self.server is not None and self.server.sockets else None

    def waiting_clients(self) -> list[int]:
        """fds of the connections whose reload request has no answer yet."""
        return [fd for waiter, fd in self.waiting.items() if not waiter.done()]

    def adopt_waiting(self, clients: list[socket.socket]) -> list[asyncio.Future[Any]]:
        """Reload requests a previous image of this process accepted: one waiter each, answered
        on the client's connection once the reload is over."""
        waiters = []
        for client in clients:
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            waiter.add_done_callback(lambda done, c=client: _answer(c, done.result()))
            waiters.append(waiter)
        return waiters

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        try:
            os.unlink(self.path)
        except OSError:
            pass

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
        from corral.supervisor.status import snapshot

        cmd = request.get("cmd")
        sup = self.supervisor
        if cmd == "status":
            return {"ok": True, **snapshot(sup)}
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid()}
        if cmd == "reload":
            waiter: asyncio.Future = asyncio.get_running_loop().create_future()
            if client_fd is not None:
                self.waiting[waiter] = client_fd
            try:
                sup.start_reload(waiter, notify=not request.get("notified", False))
                return _outcome_reply(await waiter)
            finally:
                self.waiting.pop(waiter, None)
        return {"ok": False, "error": f"unknown command {cmd!r}; use status, reload or ping"}


def _outcome_reply(outcome: Any) -> dict[str, Any]:
    return {"ok": outcome.ok, "generation": outcome.generation, "message": outcome.message,
            "duration": outcome.duration}


def _answer(client: socket.socket, outcome: Any) -> None:
    """Answer an adopted reload request (small, so a short blocking send is fine), then hang up."""
    try:
        client.settimeout(5.0)
        client.sendall(json.dumps(_outcome_reply(outcome)).encode() + b"\n")
    except OSError as exc:
        log.warning("could not answer a reload request: %s", exc)
    finally:
        client.close()


def _answers(path: str) -> bool:
    try:
        request(path, {"cmd": "ping"}, timeout=2.0)
    except ControlError:
        return False
    return True


def request(path: str, message: dict[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
    """Client side: send one request and return the reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}: is corral running? "
                               "(check `systemctl status`, or pass --config / --control-socket)") from None
        except ConnectionRefusedError:
            raise ControlError(f"nothing listens on {path}: corral is not running (a stale socket file)") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as the service's user or root") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise ControlError(f"no answer from {path} within {timeout}s") from None
            if not chunk:
                raise ControlError(f"{path} closed the connection without an answer")
            data += chunk
    finally:
        sock.close()
    try:
        return json.loads(data)
    except ValueError:
        raise ControlError(f"{path} sent an answer that is not JSON") from None
