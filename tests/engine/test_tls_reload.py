"""TLS under a real `corral run`: certificate rotation by reload through the certbot deploy hook
(examples/certbot/corral-deploy-hook), TLS on the listeners ssl_listeners picks, and a silent
TLS client that must not hold a graceful stop."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from certs import Certs, make_certs, serial_of
from util import CORRAL, REPO, Corral, free_port

HOOK = REPO / "examples" / "certbot" / "corral-deploy-hook"
APP = '''\
import asyncio
import os

VERSION = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "VERSION")).read().strip()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/sleep":
        await asyncio.sleep(float(scope["query_string"].decode() or "1"))
    body = f"{VERSION} {scope['scheme']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()),
                            (b"x-worker-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def app_dir(tmp_path: Path, version: str = "v1") -> Path:
    directory = tmp_path / "app"
    directory.mkdir(exist_ok=True)
    (directory / "tlsdeploy.py").write_text(APP)
    (directory / "VERSION").write_text(version)
    return directory


def run_hook(lineage: Path, tls_dir: Path, reload_command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RENEWED_LINEAGE": str(lineage), "CORRAL_TLS_DIR": str(tls_dir),
           "CORRAL_TLS_OWNER": f"{os.getuid()}:{os.getgid()}", "CORRAL_RELOAD_COMMAND": reload_command}
    return subprocess.run(["sh", str(HOOK)], env=env, capture_output=True, text=True, timeout=180)


def renew(lineage: Path, cert: Path, key: Path) -> None:
    """What certbot does to its live directory on a renewal (there: symlinks into archive/)."""
    lineage.mkdir(parents=True, exist_ok=True)
    shutil.copy(cert, lineage / "fullchain.pem")
    shutil.copy(key, lineage / "privkey.pem")


def served_serial(port: int, certs: Certs) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        return serial_of(ssl.DER_cert_to_PEM_cert(sock.getpeercert(binary_form=True)))


def https(port: int, certs: Certs) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", port, context=certs.client_context(), timeout=60)


def answer(conn: http.client.HTTPConnection, path: str = "/") -> tuple[int, str, int]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read().decode(), int(response.getheader("x-worker-pid") or 0)


def tls_corral(tmp_path: Path, tls_dir: Path, **config: Any) -> Corral:
    return Corral(tmp_path, "tlsdeploy:app", app_dir(tmp_path), workers=2,
                  ssl_certfile=str(tls_dir / "fullchain.pem"), ssl_keyfile=str(tls_dir / "privkey.pem"), **config)


def test_deploy_hook_and_reload_rotate_the_certificate_without_dropping_a_connection(certs, tmp_path):
    lineage, tls_dir = tmp_path / "live" / "example.com", tmp_path / "tls"
    renew(lineage, certs.server_cert, certs.server_key)
    installed = run_hook(lineage, tls_dir, "true")
    assert installed.returncode == 0, installed.stderr
    assert (tls_dir / "privkey.pem").stat().st_mode & 0o777 == 0o600
    with tls_corral(tmp_path, tls_dir) as corral:
        before = {w["pid"] for w in corral.status()["workers"]}
        assert served_serial(corral.port, certs) == serial_of(certs.server_cert.read_text())
        # A keep-alive connection, opened before the renewal, with a request in flight across the reload.
        kept = https(corral.port, certs)
        status, body, pid = answer(kept)
        assert (status, body) == (200, "v1 https") and pid in before
        kept.request("GET", "/sleep?3")

        renew(lineage, certs.renewed_cert, certs.server_key)
        hooked = run_hook(lineage, tls_dir, f"{CORRAL} reload --control-socket {corral.control}")
        assert hooked.returncode == 0, hooked.stderr + corral.log()
        assert "installed example.com" in hooked.stdout

        response = kept.getresponse()  # answered by the old worker, over the old TLS session
        assert response.status == 200 and response.read() == b"v1 https"
        assert int(response.getheader("x-worker-pid") or 0) == pid
        kept.close()
        after = {w["pid"] for w in corral.wait_ready(exact=True)["workers"]}
        assert not after & before
        assert served_serial(corral.port, certs) == serial_of(certs.renewed_cert.read_text())
        fresh = https(corral.port, certs)
        status, body, pid = answer(fresh)
        assert status == 200 and pid in after
        fresh.close()


def test_a_renewal_with_the_wrong_key_is_refused_and_the_old_certificate_serves_on(certs, tmp_path):
    lineage, tls_dir = tmp_path / "live" / "example.com", tmp_path / "tls"
    renew(lineage, certs.server_cert, certs.server_key)
    assert run_hook(lineage, tls_dir, "true").returncode == 0
    with tls_corral(tmp_path, tls_dir) as corral:
        generation = corral.status()["generation"]
        renew(lineage, certs.renewed_cert, certs.other_key)
        hooked = run_hook(lineage, tls_dir, f"{CORRAL} reload --control-socket {corral.control}")
        assert hooked.returncode == 1
        assert "does not match the certificate" in hooked.stderr, hooked.stderr
        assert "corral still serves the old certificate" in hooked.stderr
        assert corral.status()["generation"] == generation
        assert served_serial(corral.port, certs) == serial_of(certs.server_cert.read_text())


def test_ssl_listeners_puts_tls_on_the_listener_it_names_only(certs, tmp_path):
    plain_port, tls_port = free_port(), free_port()
    corral = Corral(tmp_path, "tlsdeploy:app", app_dir(tmp_path), workers=1,
                    bind=[f"127.0.0.1:{plain_port}", f"127.0.0.1:{tls_port}"], ssl_listeners=[f":{tls_port}"],
                    ssl_certfile=str(certs.server_cert), ssl_keyfile=str(certs.server_key))
    with corral:
        status, body, _ = answer(http.client.HTTPConnection("127.0.0.1", plain_port, timeout=60))
        assert (status, body) == (200, "v1 http")
        status, body, _ = answer(https(tls_port, certs))
        assert (status, body) == (200, "v1 https")


def test_a_silent_tls_client_does_not_hold_a_graceful_stop(certs, tmp_path):
    # It connected but never sent a ClientHello: it has no request to finish. The stop's drain
    # must not wait for it (nor spin the CPU waiting) until header_timeout ends its handshake.
    corral = Corral(tmp_path, "tlsdeploy:app", app_dir(tmp_path), workers=1, header_timeout=120,
                    graceful_timeout=60, ssl_certfile=str(certs.server_cert), ssl_keyfile=str(certs.server_key))
    with corral, socket.create_connection(("127.0.0.1", corral.port), timeout=30):
        assert answer(https(corral.port, certs))[0] == 200  # the worker has accepted the silent one too
        start = time.monotonic()
        assert corral.stop() == 0
        assert time.monotonic() - start < 20, corral.log()
