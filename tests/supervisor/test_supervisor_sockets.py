"""Listening sockets: adopted from systemd's LISTEN_FDS, or bound with errors that name the fix."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest

from supervisor_util import APPS
from util import CORRAL, free_port, stop_process, wait_until

from corral.addresses import parse_address
from corral.config import BindSpec
from corral.supervisor.listeners import SocketError, bind_all, bind_error_message

# Execs corral with the given listening sockets at fds 3.. and LISTEN_PID set to its own pid,
# exactly as systemd's socket activation does (execve keeps the pid).
LAUNCHER = r"""
import os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
for i, fd in enumerate(fds):
    os.dup2(fd, 3 + i)
    os.set_inheritable(3 + i, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=sys.argv[2],
                  NOTIFY_SOCKET="@corral-test-none", WATCHDOG_USEC="60000000", WATCHDOG_PID=str(os.getpid()))
os.execv(sys.argv[3], sys.argv[3:])
"""


def _socket_activated(tmp_path, socks, names, *args):
    fds = [s.fileno() for s in socks]
    # Target fds 3.. must not collide with the sources: move the sources up first.
    high = [os.dup2(fd, 100 + i) for i, fd in enumerate(fds)]
    try:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, ",".join(map(str, high)), names, CORRAL, "run",
             "-w", "2", *args, "probe:app"],
            pass_fds=high, cwd=APPS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "CORRAL_CONTROL_SOCKET": str(tmp_path / "c.sock")}, start_new_session=True)
    finally:
        for fd in high:
            os.close(fd)


def _status(tmp_path):
    import json

    out = subprocess.run([CORRAL, "status", "--json", "--control-socket", str(tmp_path / "c.sock")],
                         capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_systemd_sockets_are_adopted_as_they_are_and_hidden_from_workers(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(7)  # the socket unit's Backlog=: corral must not call listen() again
    port = sock.getsockname()[1]
    proc = _socket_activated(tmp_path, [sock], "http", "-b", f"127.0.0.1:{free_port()}")
    sock.close()
    try:
        data = wait_until(lambda: (d := _status(tmp_path)) and d["workers_ready"] == 2 and d, 60, 0.1, "ready")
        assert [(item["source"], item["fd"], item["name"]) for item in data["listeners"]] == [("systemd", 3, "http")]
        assert data["listeners"][0]["address"] == f"127.0.0.1:{port}"
        # The backlog as the kernel reports it (TCP_INFO on the listener), through corral status.
        assert data["listeners"][0]["queue_max"] == 7
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        for worker in data["workers"]:
            env = open(f"/proc/{worker['pid']}/environ", "rb").read().split(b"\0")
            names = {item.partition(b"=")[0] for item in env}
            assert not {n for n in names if n.startswith((b"LISTEN_", b"WATCHDOG_")) or n == b"NOTIFY_SOCKET"}
    finally:
        assert stop_process(proc, signal.SIGTERM) == 0
    output = proc.stdout.read().decode()
    assert "bind: is ignored" in output


def test_reuse_port_sockets_from_systemd_go_one_per_slot(tmp_path):
    socks = []
    port = free_port()
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
        socks.append(s)
    proc = _socket_activated(tmp_path, socks, "http:http")
    for s in socks:
        s.close()
    try:
        data = wait_until(lambda: (d := _status(tmp_path)) and d["workers_ready"] == 2 and d, 60, 0.1, "ready")
        assert sorted(item["group"] for item in data["listeners"]) == [1, 2]
        listeners = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (3, 4)}
        assert len(listeners) == 2
        held = [sorted(_sockets_of(worker["pid"]) & listeners) for worker in data["workers"]]
        # Each worker holds exactly one of the two sockets, and they hold different ones.
        assert [len(h) for h in held] == [1, 1] and held[0] != held[1]
    finally:
        assert stop_process(proc, signal.SIGTERM) == 0


def _sockets_of(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_address_in_use_names_the_other_process(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        out = subprocess.run([CORRAL, "run", "-b", f"127.0.0.1:{port}", "probe:app"], cwd=APPS, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "CORRAL_CONTROL_SOCKET": str(tmp_path / "c")})
    finally:
        holder.close()
    assert out.returncode == 1
    assert f"bind 127.0.0.1:{port}: address already in use by pid {os.getpid()}" in out.stderr
    assert "choose another address with --bind" in out.stderr


def test_permission_denied_below_1024_suggests_a_socket_unit():
    message = bind_error_message(parse_address("0.0.0.0:80"), PermissionError(errno.EACCES, "Permission denied"))
    assert "CAP_NET_BIND_SERVICE" in message and "socket unit" in message and "ListenStream=0.0.0.0:80" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_permission_denied_for_real_as_an_unprivileged_user(tmp_path):
    # Import first (the interpreter may live under /root), then drop privileges and bind.
    code = ("import os\n"
            "from corral.supervisor.listeners import bind_all, SocketError\n"
            "from corral.config import BindSpec\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n    bind_all([BindSpec('127.0.0.1:81')], 16)\n"
            "except SocketError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "permission denied" in out.stdout and "socket unit" in out.stdout, out.stdout + out.stderr


def test_unix_socket_with_mode_stale_file_removed_and_unlinked_on_close(tmp_path):
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a leftover node nobody listens on
    listeners = bind_all([BindSpec(f"unix:{path}", mode=0o660)], 16)
    try:
        assert oct(path.stat().st_mode & 0o777) == oct(0o660)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        client.close()
        with pytest.raises(SocketError, match="another process is listening"):
            bind_all([BindSpec(f"unix:{path}")], 16)
    finally:
        listeners.close()
    assert not path.exists()


def test_ipv6_and_ipv4_on_the_same_port(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port()
    try:
        listeners = bind_all([BindSpec(f"127.0.0.1:{port}"), BindSpec(f"[::1]:{port}")], 16)
    except SocketError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert [item.address for item in listeners.items] == [f"127.0.0.1:{port}", f"[::1]:{port}"]
    finally:
        listeners.close()
