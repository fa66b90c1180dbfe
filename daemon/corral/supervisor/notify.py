"""Talking to systemd: sd_notify messages and the watchdog.

Plain messages go through the ``sdnotify`` package in debug mode, so that a send
failure raises and is logged here instead of vanishing. ``BARRIER=1`` needs an fd
passed with the datagram, which sdnotify cannot do; ``barrier()`` speaks the
protocol directly for that one message.
"""

from __future__ import annotations

import array
import logging
import os
import select
import socket
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("corral.notify")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as MONOTONIC_USEC= wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock: and other forms are not for us


class Notifier:
    """sd_notify for the main process; a no-op when NOTIFY_SOCKET is unset.

    It reads the process environment (``os.environ``), as sdnotify does when it sends."""

    def __init__(self) -> None:
        self.socket_path = os.environ.get("NOTIFY_SOCKET") or None
        self._notifier: Any = None  # sdnotify.SystemdNotifier (untyped), imported only when needed
        self.status_text = ""
        if self.socket_path:
            address = _address(self.socket_path)
            if address is None:
                log.warning("NOTIFY_SOCKET=%s: unsupported address form, not notifying systemd", self.socket_path)
                self.socket_path = None
            else:
                import sdnotify

                try:
                    self._notifier = sdnotify.SystemdNotifier(debug=True)
                except OSError as exc:
                    log.error("cannot connect to NOTIFY_SOCKET=%s: %s; systemd will not see READY",
                              self.socket_path, exc)
        self.watchdog_usec = self._watchdog_usec(os.environ)

    @staticmethod
    def _watchdog_usec(environ: Mapping[str, str]) -> int:
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return 0
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return 0  # meant for another process (we inherited it)
        return int(usec)

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines in one datagram; log (never hide) a failure."""
        if self._notifier is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            # sdnotify encodes as latin-1, and systemd wants UTF-8 (it drops a STATUS= that is
            # not): hand it the UTF-8 bytes spelled as latin-1 characters.
            self._notifier.notify(message.encode("utf-8").decode("latin-1"))
        except OSError as exc:
            log.error("sd_notify(%s) failed: %s", message.replace("\n", " "), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        fields: dict[str, object] = {"READY": 1}
        if status is not None:
            fields["STATUS"] = status
            self.status_text = status
        self.send(**fields)

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self, status: str | None = None) -> None:
        fields: dict[str, object] = {"STOPPING": 1}
        if status is not None:
            fields["STATUS"] = status
            self.status_text = status
        self.send(**fields)

    def status(self, text: str) -> None:
        """Update STATUS=, only when the text changed (it is one line)."""
        text = text.replace("\n", " ")
        if text != self.status_text:
            self.status_text = text
            self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> None:
        self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))


def barrier(socket_path: str, timeout: float = 10.0) -> bool:
    """BARRIER=1: wait until PID 1 has processed every message we sent before.

    Sends one pipe fd along; PID 1 closes it after handling the earlier messages,
    which shows as POLLHUP on our read end.
    """
    address = _address(socket_path)
    if address is None:
        return False
    read_end, write_end = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Not socket.send_fds(): before Python 3.13 it ignores its address argument.
            sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", [write_end]))], 0, address)
        os.close(write_end)
        write_end = -1
        poller = select.poll()
        poller.register(read_end, select.POLLHUP)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
