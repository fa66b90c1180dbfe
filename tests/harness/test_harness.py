"""Self-test of the systemd namespace harness: boots, activates a socket, cleans up, and never
touches the host's /tmp (the failure a careless systemd boot causes)."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from harness.fixtures import require_systemd_namespace
from harness.systemd import SystemdNamespace
from util import free_port, port_open, wait_until

# A Type=notify service in the style corral uses: takes its listener from LISTEN_FDS, says
# READY=1 with a STATUS line, then answers every connection with a fixed HTTP response.
NOTIFY_SERVER = """\
import os, socket
assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID is not ours"
assert os.environ["LISTEN_FDS"] == "1"
listener = socket.socket(fileno=3)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\\0" + addr[1:]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
    notify.connect(addr)
    notify.sendall(b"READY=1\\nSTATUS=serving")
while True:
    conn, _ = listener.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\nhello")
    conn.close()
"""


def units(port: int, script: Path) -> dict[str, str]:
    return {
        "echo.socket": f"[Unit]\nDescription=test socket\n\n[Socket]\n"
                       f"ListenStream=127.0.0.1:{port}\n",
        "echo.service": f"[Unit]\nDescription=test notify service\nRequires=echo.socket\n"
                        f"After=echo.socket\n\n[Service]\nType=notify\n"
                        f"ExecStart=/usr/bin/python3 {script}\n",
    }


def http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def cgroup_pids(cgroup: Path) -> set[int]:
    pids: set[int] = set()
    for procs in cgroup.rglob("cgroup.procs"):
        pids.update(int(p) for p in procs.read_text().split())
    return pids


@pytest.fixture
def host_tmp_marker():
    """A month-old file in the host's /tmp: exactly what systemd-tmpfiles would delete."""
    fd, name = tempfile.mkstemp(prefix="corral-harness-marker-", dir="/tmp")
    os.close(fd)
    month_ago = time.time() - 30 * 86400
    os.utime(name, (month_ago, month_ago))
    yield Path(name)
    Path(name).unlink(missing_ok=True)


def test_basic_mode_socket_activation_and_clean_teardown(host_tmp_marker: Path) -> None:
    require_systemd_namespace()
    port = free_port()
    ns = SystemdNamespace({})
    script = ns.workdir / "notify_server.py"
    script.write_text(NOTIFY_SERVER)
    for name, text in units(port, script).items():
        ns.write_unit(name, text)
    try:
        ns.start()
        assert ns.run(["findmnt", "-n", "-o", "FSTYPE", "/tmp"]).stdout.strip() == "tmpfs"
        assert not ns.run(["test", "-e", str(host_tmp_marker)], check=False).returncode == 0

        ns.systemctl("start", "echo.socket")
        assert ns.show("echo.socket", "ActiveState") == "active"
        assert ns.show("echo.service", "ActiveState") == "inactive"

        # The first connection, from the host, activates the service.
        assert http_get(port).endswith(b"hello")
        wait_until(lambda: ns.show("echo.service", "ActiveState") == "active",
                   what="echo.service active")
        assert ns.show("echo.service", "StatusText") == "serving"
        assert int(ns.show("echo.service", "MainPID")) > 0

        cgroup = ns._cgroup
        assert cgroup is not None
        inside = cgroup_pids(cgroup)
        assert ns.pid in inside and len(inside) >= 2  # PID 1 and the service at least
        workdir = ns.workdir
    finally:
        ns.close()

    assert not cgroup.exists(), "the boot's cgroup was not removed"
    assert not workdir.exists(), "the work directory was not removed"
    still_alive = [pid for pid in inside if Path(f"/proc/{pid}").exists()]
    assert still_alive == [], f"processes survived teardown: {still_alive}"
    assert not port_open(port), "the socket is still listening after teardown"
    assert host_tmp_marker.exists(), "the host's /tmp was touched"


def test_journald_mode_collects_service_output_and_drop_ins_apply(systemd_ns) -> None:
    token = uuid.uuid4().hex
    ns = systemd_ns({
        "say.service": "[Service]\nType=oneshot\nExecStart=/bin/false\n",
        "say.service.d/test.conf": f"[Service]\nExecStart=\nExecStart=/bin/echo {token}\n",
    }, journald=True)
    ns.systemctl("start", "say.service")
    wait_until(lambda: token in ns.journal("say.service"), what="the service's line in journal")
    # Storage is volatile: nothing was written to the host's /var/log/journal.
    assert ns.run(["test", "-d", "/run/log/journal"], check=False).returncode == 0


def test_overlay_mode_keeps_host_filesystem_and_network_private(systemd_ns) -> None:
    port = free_port()
    marker = f"/etc/corral-harness-{uuid.uuid4().hex}"
    ns = systemd_ns({}, overlay=True)
    script = ns.workdir / "notify_server.py"
    script.write_text(NOTIFY_SERVER)
    for name, text in units(port, script).items():
        ns.write_unit(name, text)
    ns.daemon_reload()

    ns.systemctl("start", "echo.socket")
    out = ns.run(["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{port}/"]).stdout
    assert out == "hello"
    assert not port_open(port), "the overlay namespace's socket is reachable from the host"

    ns.run(["sh", "-c", f"echo written-inside > {marker}"])
    assert ns.run(["cat", marker]).stdout == "written-inside\n"
    assert not Path(marker).exists(), "a write inside the overlay reached the host"
