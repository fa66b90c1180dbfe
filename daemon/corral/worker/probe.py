"""The readiness probe: a worker asks its own app for ``health_check.path`` before it says ready.

The request must reach *this* worker, never the shared public socket where an
old-generation worker could answer it. So the worker listens on a private unix
socket of its own (in a fresh 0700 directory), serves it with the same engine
that will serve the public sockets, and sends the probe there: the request goes
through accept, the HTTP parser, the app and the response writer, exactly like
real traffic. Once the probe is over the socket's path is removed, after which
nothing can connect to it again.

The probe is retried (an app may answer 503 while it warms a cache) until it
gets ``expect_status`` or ``health_check.timeout`` has passed; the last failure
is the worker's boot error, which the supervisor puts in STATUS and in the
reload's answer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Mapping

RETRY_INTERVAL = 0.25
MAX_RESPONSE_HEAD = 16384
USER_AGENT = "corral-health-check"


class ProbeFailed(Exception):
    """The app did not answer the health check as expected; the message says what it did."""


class PrivateListener:
    """A listening unix socket only this process can reach (until ``close()``)."""

    def __init__(self) -> None:
        self.directory: str | None = None
        self.address: str | bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.directory = tempfile.mkdtemp(prefix="corral-probe-")  # mode 0700
            self.address = os.path.join(self.directory, "probe.sock")
            self.sock.bind(self.address)
        except OSError:
            # No writable temporary directory (a read-only sandbox): an abstract address with
            # an unguessable name. It cannot be unlinked, so it stays reachable from this
            # network namespace, but only by someone who can read /proc/net/unix.
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None
            self.address = b"\0corral-probe-" + os.urandom(12).hex().encode()
            self.sock.bind(self.address)
        self.sock.listen(16)

    def close(self) -> None:
        """Remove the path: the socket (still held by the engine) is unreachable from now on."""
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def settings_from(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``health_check`` mapping of the worker's config, or None when no probe is configured."""
    check = config.get("health_check")
    return dict(check) if check else None


async def run_probe(server: Any, check: Mapping[str, Any]) -> str:
    """Probe ``server`` (already started) until the app answers as expected.

    Returns a short description of the passing answer; raises ProbeFailed when
    ``check["timeout"]`` passes without one.
    """
    listener = PrivateListener()
    try:
        await server.serve([listener.sock])
        return await _until_passes(listener.address, check)
    finally:
        listener.close()


async def _until_passes(address: str | bytes, check: Mapping[str, Any]) -> str:
    path = str(check.get("path", "/"))
    expect = int(check.get("expect_status", 200))
    timeout = float(check.get("timeout", 10.0))
    host = str(check.get("host") or "localhost")
    deadline = time.monotonic() + timeout
    attempts = 0
    last = "no answer"
    while True:
        attempts += 1
        left = deadline - time.monotonic()
        try:
            status, reason = await asyncio.wait_for(_request(address, path, host), max(left, 0.05))
        except asyncio.TimeoutError:
            last = f"no answer within health_check.timeout={timeout:g}s"
        except (OSError, ValueError) as exc:
            last = f"the request failed: {exc}"
        else:
            if status == expect:
                return f"GET {path} -> {status} {reason}".rstrip()
            last = f"answered {status} {reason}".rstrip() + f", expected {expect}"
        if time.monotonic() + RETRY_INTERVAL >= deadline:
            raise ProbeFailed(f"health check GET {path} failed after {attempts} attempt"
                              f"{'s' if attempts != 1 else ''} in {timeout:g}s: {last}")
        await asyncio.sleep(RETRY_INTERVAL)


async def _request(address: str | bytes, path: str, host: str) -> tuple[int, str]:
    """One GET over a fresh connection; returns (status, reason). Not a hot path."""
    reader, writer = await asyncio.open_unix_connection(address)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise ValueError("the connection closed without a response")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP response: {line[:80]!r}")
        # Read the rest so the app's response completes normally; the body is not needed.
        while await reader.read(65536):
            pass
        return int(parts[1]), parts[2] if len(parts) > 2 else ""
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
