"""The `corral status`/`corral reload` client trusts only a control socket served by the
expected user (SO_PEERCRED), and validates every reply (issue 13, item 3).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from control_util import as_user, clean_env, corral, remove

# Another uid needs root, as `make test` runs.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs processes as other uids")

FAKE_RELOAD = {"ok": True, "generation": 99, "message": "gen 99 serves (FAKE)", "duration": 0.0}

# A control socket impostor: answers every request with one canned reply.
FAKE_SERVER = r"""
import os, socket, sys
path, reply = sys.argv[1], sys.argv[2].encode() + b"\n"
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o666)
server.listen()
print("ready", flush=True)
while True:
    client, _ = server.accept()
    try:
        client.recv(65536)
        client.sendall(reply)
    except OSError:
        pass  # a client that hung up on us
    client.close()
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user may write (as /tmp is), owned by root; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="corral-peer-", dir="/tmp"))
    os.chmod(path, 0o777)
    yield path
    remove(path)


def _impostor(path: Path, uid: int, reply: dict[str, Any]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", FAKE_SERVER, str(path), json.dumps(reply)],
                            stdout=subprocess.PIPE, text=True, env=clean_env(), cwd="/", **as_user(uid))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@needs_root
@pytest.mark.parametrize("victim", ["user", "root"])
def test_a_control_socket_served_by_another_user_is_refused(shared_dir, victim):
    attacker = random.randrange(600000, 700000)
    uid = None if victim == "root" else attacker + 1
    path = shared_dir / "control.sock"
    impostor = _impostor(path, attacker, FAKE_RELOAD)
    try:
        out = corral("reload", "--control-socket", str(path), uid=uid, cwd="/")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "FAKE" not in out.stdout + out.stderr and "reload ok" not in out.stdout
        assert f"uid {attacker}" in out.stderr and str(path) in out.stderr
        status = corral("status", "--control-socket", str(path), uid=uid, cwd="/")
        assert status.returncode == 1 and f"uid {attacker}" in status.stderr
    finally:
        impostor.kill()
        impostor.wait()


@needs_root
def test_root_does_not_trust_the_owner_of_a_directory_in_tmp(shared_dir):
    """Anyone may make a directory in /tmp: owning one there proves nothing."""
    attacker = random.randrange(600000, 700000)
    own = shared_dir / "corral-0"
    own.mkdir()
    os.chown(own, attacker, attacker)
    path = own / "control.sock"
    impostor = _impostor(path, attacker, FAKE_RELOAD)
    try:
        out = corral("reload", "--control-socket", str(path))
        assert out.returncode == 1 and f"uid {attacker}" in out.stderr, out.stdout + out.stderr
    finally:
        impostor.kill()
        impostor.wait()


@needs_root
def test_root_trusts_the_owner_of_the_socket_directory(shared_dir):
    """`corral reload` as root reaches a service that runs as its own user, in a directory root
    gave that user (RuntimeDirectory= with User=: /run/corral/NAME owned by the service)."""
    service = random.randrange(600000, 700000)
    os.chmod(shared_dir, 0o755)  # only root may write here, as in /run/corral
    given = shared_dir / "app"
    given.mkdir()
    os.chown(given, service, service)
    path = given / "control.sock"
    impostor = _impostor(path, service, FAKE_RELOAD)  # here: the real service
    try:
        out = corral("reload", "--control-socket", str(path))
        assert out.returncode == 0 and "gen 99 serves" in out.stdout, out.stderr
    finally:
        impostor.kill()
        impostor.wait()


# --------------------------------------------------------------------------- replies


class FakeServer:
    """A control socket of our own uid that answers every request with ``reply`` (raw bytes)."""

    def __init__(self, path: Path, reply: bytes) -> None:
        self.path, self.reply = path, reply
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with client:
                try:
                    client.recv(65536)
                    client.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def fake(tmp_path):
    servers: list[FakeServer] = []

    def make(reply: Any) -> str:
        raw = reply if isinstance(reply, bytes) else json.dumps(reply).encode() + b"\n"
        server = FakeServer(tmp_path / f"c{len(servers)}.sock", raw)
        servers.append(server)
        return str(server.path)

    yield make
    for server in servers:
        server.close()


@pytest.mark.parametrize("reply", [
    {"ok": True, "name": "app", "pid": 1},  # a partial status
    {"ok": True, "name": "app", "phase": "running", "pid": 1, "uptime": 3, "app": "a:b", "status": "x",
     "supervisor": {"rss": 1, "uss": 1}, "requests_total": 0, "restarts": {}, "listeners": [],
     "workers": [{"pid": 2}]},  # a worker row without its fields
    [1, 2, 3],  # not an object
    {"ok": True, "name": "app", "phase": "running", "pid": "one"},  # wrong types
], ids=["partial", "partial-worker", "list", "wrong-type"])
@pytest.mark.parametrize("json_flag", [False, True], ids=["table", "json"])
def test_status_rejects_a_malformed_reply_with_a_clear_error(fake, reply, json_flag):
    path = fake(reply)
    out = corral("status", "--control-socket", path, *(["--json"] if json_flag else []))
    assert out.returncode == 1, out.stdout
    assert "Traceback" not in out.stderr
    assert f"unexpected reply from the control socket {path}" in out.stderr, out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("reply", [
    {"ok": True},
    {"ok": "yes", "message": "m", "generation": 1, "duration": 0},
    {"ok": True, "message": "gen 2 serves", "generation": 2, "duration": "fast"},
], ids=["partial", "ok-not-bool", "duration-not-number"])
def test_reload_rejects_a_malformed_reply_with_a_clear_error(fake, reply):
    path = fake(reply)
    out = corral("reload", "--control-socket", path)
    assert out.returncode == 1, out.stdout
    assert "Traceback" not in out.stderr and "reload ok" not in out.stdout
    assert f"unexpected reply from the control socket {path}" in out.stderr, out.stderr


def test_an_error_reply_is_reported_as_the_servers_error(fake):
    path = fake({"ok": False, "error": "unknown command 'status'"})
    out = corral("status", "--control-socket", path)
    assert out.returncode == 1 and "unknown command 'status'" in out.stderr, out.stderr


def test_a_reply_that_is_not_json_is_reported(fake):
    path = fake(b"<html>\n")
    out = corral("status", "--control-socket", path)
    assert out.returncode == 1 and "not JSON" in out.stderr and "Traceback" not in out.stderr


def test_a_well_formed_reply_is_still_accepted(fake):
    reply = {"ok": True, "name": "app", "phase": "running", "pid": 1, "uptime": 3.5, "app": "a:b",
             "generation": 1, "workers_wanted": 1, "workers_ready": 1, "status": "1/1 workers ready",
             "supervisor": {"rss": 1 << 20, "uss": 1 << 20},
             "requests_total": 7, "restarts": {}, "last_reload": None,
             "listeners": [{"address": "127.0.0.1:8000", "role": "http", "source": "bound", "fd": 3}],
             "workers": [{"pid": 2, "generation": 1, "slot": 0, "state": "ready", "reason": None, "requests": 7,
                          "in_flight": 0, "connections_open": 0, "uss": None, "age": 3.0}]}
    path = fake(reply)
    out = corral("status", "--control-socket", path)
    assert out.returncode == 0, out.stderr
    assert "1/1 workers ready" in out.stdout
