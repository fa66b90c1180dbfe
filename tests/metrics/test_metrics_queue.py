"""Accept-queue depth of real listening sockets, read back from the kernel."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from corral.metrics.queue import QueueDepth, accept_queue, tcp_accept_queue, unix_accept_queue
from util import wait_until

BACKLOG = 16
PENDING = 5


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def _fill(listener: socket.socket, connect) -> list[socket.socket]:
    """Open PENDING connections nobody accepts, and wait until the kernel queued them all."""
    clients = [connect() for _ in range(PENDING)]
    wait_until(lambda: accept_queue(listener) == QueueDepth(PENDING, BACKLOG), timeout=20,
               what=f"{PENDING} queued connections on {listener.getsockname()!r}")
    return clients


def _check_accept_drains(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.close()
    assert accept_queue(listener) == QueueDepth(PENDING - 1, BACKLOG)


@pytest.fixture
def sockets():
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


@pytest.mark.parametrize("family,host", [
    (socket.AF_INET, "127.0.0.1"),
    pytest.param(socket.AF_INET6, "::1", marks=pytest.mark.skipif(
        not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")),
])
def test_tcp_queue_depth_counts_unaccepted_connections(sockets, family, host):
    listener = socket.socket(family, socket.SOCK_STREAM)
    sockets.append(listener)
    listener.bind((host, 0))
    listener.listen(BACKLOG)
    port = listener.getsockname()[1]
    assert accept_queue(listener) == QueueDepth(0, BACKLOG)
    sockets += _fill(listener, lambda: socket.create_connection((host, port), timeout=10))
    # By fd number too, as the supervisor holds systemd's fds.
    assert tcp_accept_queue(listener.fileno()) == QueueDepth(PENDING, BACKLOG)
    _check_accept_drains(listener)


def test_unix_queue_depth_counts_unaccepted_connections(sockets, tmp_path):
    path = str(tmp_path / "app.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.append(listener)
    listener.bind(path)
    listener.listen(BACKLOG)
    assert accept_queue(listener) == QueueDepth(0, BACKLOG)

    def connect() -> socket.socket:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        return c

    sockets += _fill(listener, connect)
    assert unix_accept_queue(listener.fileno()) == QueueDepth(PENDING, BACKLOG)
    _check_accept_drains(listener)


def test_unix_abstract_socket(sockets):
    name = f"\0corral-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.append(listener)
    listener.bind(name)
    listener.listen(BACKLOG)

    def connect() -> socket.socket:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(name)
        return c

    sockets += _fill(listener, connect)


def test_unix_queue_reads_only_its_own_socket(sockets, tmp_path):
    # Two listeners: the inode match must pick the right one.
    a = socket.socket(socket.AF_UNIX)
    b = socket.socket(socket.AF_UNIX)
    sockets += [a, b]
    a.bind(str(tmp_path / "a.sock"))
    b.bind(str(tmp_path / "b.sock"))
    a.listen(3)
    b.listen(BACKLOG)
    c = socket.socket(socket.AF_UNIX)
    sockets.append(c)
    c.connect(str(tmp_path / "a.sock"))
    wait_until(lambda: accept_queue(a) == QueueDepth(1, 3), what="one queued connection on a")
    assert accept_queue(b) == QueueDepth(0, BACKLOG)


def test_backlog_is_capped_by_somaxconn(sockets):
    listener = socket.socket()
    sockets.append(listener)
    listener.bind(("127.0.0.1", 0))
    listener.listen(_somaxconn() + 1000)
    assert accept_queue(listener) == QueueDepth(0, _somaxconn())


def test_sockets_without_accept_queue(sockets, tmp_path):
    tcp = socket.socket()                     # never listened
    unix = socket.socket(socket.AF_UNIX)      # never listened
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unix_dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sockets += [tcp, unix, udp, unix_dgram]
    unix.bind(str(tmp_path / "x.sock"))
    for s in (tcp, unix, udp, unix_dgram):
        assert accept_queue(s) is None, s
    # A connected TCP socket is not a listener either.
    listener = socket.socket()
    sockets.append(listener)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    sockets.append(client)
    assert accept_queue(client) is None


def test_accept_queue_rejects_non_sockets(tmp_path):
    with open(tmp_path / "f", "w") as f:
        with pytest.raises(OSError):
            accept_queue(f.fileno())
