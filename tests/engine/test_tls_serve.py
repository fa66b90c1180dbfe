"""HTTPS served by the engine, checked with real clients: curl --cacert, the ssl module
(client certificates), http.client keep-alive, a WebSocket client; ASGI and WSGI."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from certs import Certs, make_certs
from engine_util import EngineProc
from tls_apps import FILE_BYTES
from util import wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_settings(certs: Certs, **extra: Any) -> dict[str, Any]:
    return {"ssl_certfile": str(certs.server_cert), "ssl_keyfile": str(certs.server_key), **extra}


def get(port: int, context: ssl.SSLContext, path: str = "/",
        conn: http.client.HTTPSConnection | None = None) -> tuple[int, bytes, http.client.HTTPSConnection]:
    conn = conn or http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read(), conn


def pem_der(path: Path) -> bytes:
    """The DER bytes of the first certificate in a PEM file (to compare PEM texts exactly)."""
    text = path.read_text()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(text[:text.index(end) + len(end)])


def test_curl_with_cacert_sees_https_and_the_tls_extension(make_server, certs):
    server = make_server(app="tls_apps:app", settings=tls_settings(certs))
    out = subprocess.run(["curl", "-sS", "--cacert", str(certs.ca), f"https://localhost:{server.port}/"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["scheme"] == "https"
    tls = info["extensions"]["tls"]
    assert ssl.PEM_cert_to_DER_cert(tls["server_cert"]) == pem_der(certs.server_cert)
    assert tls["tls_version"] == 0x0304  # curl and OpenSSL 3 agree on TLS 1.3
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)  # the TLS 1.3 AEAD suites
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None


def test_alpn_is_http11_and_keep_alive_reuses_one_tls_connection(make_server, certs):
    server = make_server(app="tls_apps:app", settings=tls_settings(certs), stats=True)
    context = certs.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    status, body, conn = get(server.port, context)
    assert status == 200 and json.loads(body)["scheme"] == "https"
    assert conn.sock.selected_alpn_protocol() == "http/1.1"
    first = conn.sock
    for _ in range(3):
        status, body, conn = get(server.port, context, conn=conn)
        assert status == 200
    assert conn.sock is first  # the same TLS connection answered all four
    stats = wait_until(lambda: (s := server.stats())["requests_total"] == 4 and s, 30, what="4 requests counted")
    assert stats["connections_accepted"] == 1
    conn.close()


def test_tls12_client_gets_an_aead_suite_and_tls12_in_the_extension(make_server, certs):
    server = make_server(app="tls_apps:app", settings=tls_settings(certs))
    context = certs.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    status, body, conn = get(server.port, context)
    tls = json.loads(body)["extensions"]["tls"]
    assert status == 200 and tls["tls_version"] == 0x0303
    name = conn.sock.cipher()[0]
    assert "GCM" in name or "CHACHA20" in name, name
    assert tls["cipher_suite"] in (0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8), hex(tls["cipher_suite"])
    conn.close()


def test_minimum_version_tls13_refuses_a_tls12_client(make_server, certs):
    server = make_server(app="tls_apps:app", settings=tls_settings(certs, ssl_minimum_version="TLSv1.3"))
    old = certs.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    # uvloop closes without flushing the protocol_version alert: the client may see only the EOF.
    with pytest.raises(ssl.SSLError, match="(?i)protocol version|unsupported protocol|EOF"):
        get(server.port, old)
    status, _, conn = get(server.port, certs.client_context())
    assert status == 200
    conn.close()


def test_required_client_certificate(make_server, certs):
    server = make_server(app="tls_apps:app", settings=tls_settings(
        certs, ssl_ca_certs=str(certs.ca), ssl_cert_reqs="required"))
    # Without a certificate: TLS 1.3 reports the server's alert on the first read.
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        get(server.port, certs.client_context())
    status, body, conn = get(server.port, certs.client_context(client=True))
    assert status == 200
    tls = json.loads(body)["extensions"]["tls"]
    assert [ssl.PEM_cert_to_DER_cert(pem) for pem in tls["client_cert_chain"]] == [pem_der(certs.client_cert)]
    assert tls["client_cert_name"] == "CN=alice,OU=Dev,O=Example Corp,C=DE"
    assert tls["client_cert_error"] is None
    conn.close()


def test_optional_client_certificate(make_server, certs):
    server = make_server(app="tls_apps:app", settings=tls_settings(
        certs, ssl_ca_certs=str(certs.ca), ssl_cert_reqs="optional"))
    status, body, conn = get(server.port, certs.client_context())
    assert status == 200 and json.loads(body)["extensions"]["tls"]["client_cert_chain"] == []
    conn.close()
    status, body, conn = get(server.port, certs.client_context(client=True))
    assert status == 200 and json.loads(body)["extensions"]["tls"]["client_cert_name"].startswith("CN=alice,")
    conn.close()


def test_a_client_certificate_from_another_ca_is_refused(make_server, certs, tmp_path):
    server = make_server(app="tls_apps:app", settings=tls_settings(
        certs, ssl_ca_certs=str(certs.ca), ssl_cert_reqs="optional"))
    stranger = make_certs(tmp_path / "other")  # same names, another CA
    context = certs.client_context()
    context.load_cert_chain(str(stranger.client_cert), str(stranger.client_key))
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        get(server.port, context)


@pytest.mark.parametrize("threads", [0, 2])
def test_wsgi_url_scheme_is_https(make_server, certs, threads):
    server = make_server(app="tls_apps:wsgi", interface="wsgi", settings=tls_settings(certs, threads=threads))
    context = certs.client_context()
    status, body, conn = get(server.port, context)
    assert status == 200 and json.loads(body) == {"url_scheme": "https", "port": str(server.port)}
    status, body, conn = get(server.port, context, conn=conn)  # the per-connection environ, reused
    assert status == 200 and json.loads(body)["url_scheme"] == "https"
    conn.close()


@pytest.mark.parametrize("threads", [0, 2])
def test_wsgi_file_wrapper_over_tls_sends_the_file_encrypted(make_server, certs, threads):
    # os.sendfile() would write the file's plaintext under the TLS layer: the client would
    # see garbage (a bad record MAC) instead of the file.
    server = make_server(app="tls_apps:wsgi", interface="wsgi", settings=tls_settings(certs, threads=threads))
    status, body, conn = get(server.port, certs.client_context(), "/file")
    assert status == 200 and len(body) == len(FILE_BYTES) and body == FILE_BYTES
    status, body, conn = get(server.port, certs.client_context(), "/", conn=conn)
    assert status == 200  # the connection is still in step
    conn.close()


def test_websocket_over_tls_has_wss_scheme_and_tls_extension(make_server, certs):
    websockets = pytest.importorskip("websockets")
    server = make_server(app="tls_apps:app", settings=tls_settings(certs))

    async def talk() -> dict[str, Any]:
        async with websockets.connect(f"wss://localhost:{server.port}/", ssl=certs.client_context()) as ws:
            return json.loads(await ws.recv())  # type: ignore[no-any-return]

    info = asyncio.run(talk())
    assert info["scheme"] == "wss"
    assert set(info["extensions"]) == {"websocket.http.response", "tls"}
    assert info["extensions"]["tls"]["tls_version"] == 0x0304


def test_plain_http_on_a_tls_port_is_dropped_and_the_server_serves_on(make_server, certs):
    server = make_server(app="tls_apps:app", settings=tls_settings(certs))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # closed at once: no HTTP answer on a TLS port
            data += chunk
        assert b"HTTP/1.1" not in data
    status, _, conn = get(server.port, certs.client_context())
    assert status == 200
    conn.close()


def test_a_stalled_handshake_does_not_hold_a_graceful_shutdown(certs):
    # A client that connects and never sends its ClientHello has sent no request: shutdown
    # must not wait for it (up to header_timeout, the handshake's own limit) as for a request.
    server = EngineProc(app="tls_apps:app", settings=tls_settings(certs, header_timeout=120),
                        shutdown_timeout=60)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30):
            status, _, conn = get(server.port, certs.client_context())  # the server is past accept()
            assert status == 200
            conn.close()
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(60)
            assert time.monotonic() - start < 20, "shutdown waited for the silent TLS client"
    finally:
        server.cleanup()
