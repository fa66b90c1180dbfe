"""The HAProxy agent-check server: one line per connection, then close.

HAProxy's ``agent-check`` connects to ``agent-port``, optionally sends its ``agent-send``
string, reads one line, and closes. This server, on the supervisor's event loop:

- accepts on sockets that are already listening (systemd's ``agent`` socket or
  ``agent_bind:``) and never calls listen() again, as ``server.MetricsServer`` does, so a
  socket unit's ``Backlog=`` holds;
- writes ``agent_line(state())`` and a newline at once: HAProxy may have no ``agent-send``,
  so waiting for input first would delay every answer by the read timeout;
- then half-closes and reads whatever HAProxy sent (its ``agent-send`` string, ignored: the
  answer is the same for every backend) until EOF or ``read_timeout``. Closing with unread
  input would make the kernel send RST, which can destroy the line before HAProxy reads it;
- bounds concurrent connections (``max_connections``); the rest wait in the kernel's queue.
  Each connection lasts at most ``read_timeout`` plus the time to send one short line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from corral.metrics.probes import HostState, agent_line

__all__ = ["AgentServer"]

log = logging.getLogger("corral.agent")

# accept() errors that say "out of resources": back off instead of spinning.
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# What an agent-send string may be: HAProxy sends a short identity such as "be_web/srv1\n".
_MAX_INPUT = 4096


class AgentServer:
    """Answers HAProxy's agent-check on any number of listening sockets.

    Usage, on the supervisor's running loop::

        agent = AgentServer(supervisor.host_state)
        agent.serve(sock)           # as many sockets as needed
        ...
        await agent.close()         # the listening sockets stay open: their owner closes them
    """

    def __init__(self, state: Callable[[], HostState], *, read_timeout: float = 1.0,
                 max_connections: int = 64) -> None:
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be > 0 seconds, got {read_timeout!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        self._state = state
        self._read_timeout = read_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._acceptors: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()

    def serve(self, sock: socket.socket) -> None:
        """Start accepting on a listening stream socket."""
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"agent socket {sock.getsockname()!r} is not listening; "
                             f"call listen() first or pass a socket unit's fd")
        sock.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._accept_loop(sock),
                                                      name=f"agent-accept-{sock.fileno()}")
        self._acceptors.append(task)

    async def close(self) -> None:
        """Stop accepting and end open connections."""
        tasks = self._acceptors + list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._acceptors.clear()

    def answer(self) -> bytes:
        """The line one connection gets now: ``agent_line`` of a fresh snapshot, newline-ended."""
        return agent_line(self._state()).encode("ascii") + b"\n"

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                self._slots.release()
                if exc.errno in _ACCEPT_BACKOFF:
                    log.warning("agent socket: accept failed (%s); retrying in 1s", exc)
                    await asyncio.sleep(1.0)
                continue
            except BaseException:
                self._slots.release()
                raise
            task = loop.create_task(self._serve_connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._slots.release()

    async def _serve_connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            try:
                line = self.answer()
            except Exception:  # a bug in the snapshot must not stop the agent (logged; HAProxy keeps the last state)
                log.exception("agent: computing the answer failed; closing without one")
                return
            await asyncio.wait_for(loop.sock_sendall(conn, line), self._read_timeout)
            await asyncio.wait_for(self._linger(conn), self._read_timeout)
        except (OSError, TimeoutError):
            pass  # HAProxy closed first or stalled: it has its line or will ask again
        finally:
            conn.close()

    async def _linger(self, conn: socket.socket) -> None:
        """Half-close, then read the optional agent-send string (ignored) until EOF."""
        loop = asyncio.get_running_loop()
        conn.shutdown(socket.SHUT_WR)
        received = 0
        while received < _MAX_INPUT:
            chunk = await loop.sock_recv(conn, 1024)
            if not chunk:
                return
            received += len(chunk)
