"""Listener acquisition (``corral.supervisor.listeners.acquire``) without a whole corral.

Each case runs ``acquire()`` in a child process that gets sockets at fds 3.. with
LISTEN_PID set to its own pid, as systemd passes them, and a NOTIFY_SOCKET this
test listens on: the test then sees exactly what went to systemd's fd store
(FDSTORE=1 with the fd, FDSTOREREMOVE=1) and which sockets came out.
"""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import sys

import pytest

from util import free_port

# Moves the given fds to 3.. (through high numbers first, so that none is overwritten
# before it is moved), sets LISTEN_* for its own pid, runs acquire() and prints the result.
CHILD = r"""
import fcntl, json, os, sys
fds = [int(x) for x in sys.argv[1].split(",") if x]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
if fds:
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=sys.argv[2])
os.environ["NOTIFY_SOCKET"] = sys.argv[3]
from corral.config import load
from corral.supervisor.listeners import acquire
listeners = acquire(load(None, json.loads(sys.argv[4]), environ={}))
print(json.dumps({"from_systemd": listeners.from_systemd,
                  "items": [{"address": i.address, "role": i.role, "source": i.source, "name": i.name}
                            for i in listeners.items],
                  "env": sorted(k for k in os.environ if k.startswith("LISTEN_"))}))
"""


class FdStore:
    """The notify socket the child reports to: what it stored and removed, by name."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def messages(self) -> list[tuple[dict[str, str], list[str]]]:
        """Every datagram so far: its fields, and the address of each fd it carried."""
        out = []
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except BlockingIOError:
                return out
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
            addresses = []
            for fd in fds:
                with socket.socket(fileno=fd) as stored:
                    addresses.append(_address(stored))
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            out.append((fields, addresses))

    def close(self) -> None:
        self.sock.close()


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    return f"unix:{name}" if sock.family == socket.AF_UNIX else f"{name[0]}:{name[1]}"


@pytest.fixture
def store(tmp_path):
    fdstore = FdStore(str(tmp_path / "notify"))
    yield fdstore
    fdstore.close()


def _listening(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(16)
    return sock


def _acquire(store: FdStore, passed: list[socket.socket], names: list[str], **config) -> dict:
    config.setdefault("app", "app:app")
    fds = [s.fileno() for s in passed]
    done = subprocess.run([sys.executable, "-c", CHILD, ",".join(map(str, fds)), ":".join(names), store.path,
                           json.dumps(config)], pass_fds=fds, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _by_role(result: dict) -> dict[str, list[tuple[str, str]]]:
    roles: dict[str, list[tuple[str, str]]] = {}
    for item in result["items"]:
        roles.setdefault(item["role"], []).append((item["address"], item["source"]))
    return roles


def test_without_systemd_binds_and_stores_each_socket(store):
    app, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    result = _acquire(store, [], [], bind=[app], metrics_bind=[metrics])
    assert _by_role(result) == {"http": [(app, "bound")], "metrics": [(metrics, "bound")]}
    assert not result["from_systemd"]
    assert store.messages() == [({"FDSTORE": "1", "FDNAME": "corral-http"}, [app]),
                                ({"FDSTORE": "1", "FDNAME": "corral-metrics"}, [metrics])]


def test_a_socket_units_sockets_are_used_as_they_are_and_never_stored(store):
    app = f"127.0.0.1:{free_port()}"
    unit = _listening(app)
    try:
        result = _acquire(store, [unit], ["web"], bind=[f"127.0.0.1:{free_port()}"])
    finally:
        unit.close()
    assert result["from_systemd"]
    assert result["items"] == [{"address": app, "role": "http", "source": "systemd", "name": "web"}]
    assert result["env"] == []  # LISTEN_* are gone: neither the workers nor the app see them
    assert store.messages() == []


def test_stored_sockets_that_match_the_config_are_kept_and_not_stored_again(store):
    app, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    passed = [_listening(app), _listening(metrics)]
    try:
        result = _acquire(store, passed, ["corral-http", "corral-metrics"], bind=[app], metrics_bind=[metrics])
    finally:
        for sock in passed:
            sock.close()
    assert not result["from_systemd"]  # ours: bind: applies
    assert _by_role(result) == {"http": [(app, "fdstore")], "metrics": [(metrics, "fdstore")]}
    assert store.messages() == []


def test_a_changed_bind_replaces_the_stored_http_socket(store):
    old, new, metrics = (f"127.0.0.1:{free_port()}" for _ in range(3))
    passed = [_listening(old), _listening(metrics)]
    try:
        result = _acquire(store, passed, ["corral-http", "corral-metrics"], bind=[new], metrics_bind=[metrics])
    finally:
        for sock in passed:
            sock.close()
    assert _by_role(result) == {"http": [(new, "bound")], "metrics": [(metrics, "fdstore")]}
    assert store.messages() == [({"FDSTOREREMOVE": "1", "FDNAME": "corral-http"}, []),
                                ({"FDSTORE": "1", "FDNAME": "corral-http"}, [new])]


def test_a_changed_metrics_bind_replaces_the_stored_metrics_socket(store):
    """Regression: the stored metrics socket was kept at its old address whatever
    metrics_bind: said after a `systemctl restart`, and the new address never bound."""
    app, old, new = (f"127.0.0.1:{free_port()}" for _ in range(3))
    passed = [_listening(app), _listening(old)]
    try:
        result = _acquire(store, passed, ["corral-http", "corral-metrics"], bind=[app], metrics_bind=[new])
    finally:
        for sock in passed:
            sock.close()
    assert _by_role(result) == {"http": [(app, "fdstore")], "metrics": [(new, "bound")]}
    assert store.messages() == [({"FDSTOREREMOVE": "1", "FDNAME": "corral-metrics"}, []),
                                ({"FDSTORE": "1", "FDNAME": "corral-metrics"}, [new])]


def test_metrics_bind_emptied_drops_the_stored_metrics_socket(store):
    """Regression: with metrics_bind: removed, the stored metrics socket still served /metrics."""
    app, old = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    passed = [_listening(app), _listening(old)]
    try:
        result = _acquire(store, passed, ["corral-http", "corral-metrics"], bind=[app], metrics_bind=[])
    finally:
        for sock in passed:
            sock.close()
    assert _by_role(result) == {"http": [(app, "fdstore")]}
    assert store.messages() == [({"FDSTOREREMOVE": "1", "FDNAME": "corral-metrics"}, [])]


def test_handover_round_trips_every_field():
    """An in-place re-exec passes the sockets on as JSON; the new image gets them back whole."""
    from corral.supervisor.listeners import Listener, Listeners, Role, Source

    sock = _listening(f"127.0.0.1:{free_port()}")
    before = Listeners(items=[Listener(sock, Role.HTTP, Source.FDSTORE, name="corral-http", group=2)])
    data = json.loads(json.dumps(before.handover()))
    after = Listeners.from_handover(data)
    try:
        (item,) = after.items
        assert (item.fd, item.role, item.source, item.name, item.group, item.unlink_path) == \
               (sock.fileno(), Role.HTTP, Source.FDSTORE, "corral-http", 2, None)
        assert after.from_systemd is False
    finally:
        after.items[0].sock.detach()  # one fd, two socket objects: close it once
        sock.close()
