"""Debian's testssl.sh scans a running corral engine: no protocol below TLS 1.2, no weak cipher,
no finding above LOW.

The scan runs testssl's checks of what corral configures: -p (protocols, ALPN), -s (cipher
categories), -f (forward secrecy), -P (server preference) and -U (the vulnerabilities:
Heartbleed, CCS, ROBOT, renegotiation, CRIME, BREACH, POODLE, SWEET32, FREAK, DROWN, LOGJAM,
BEAST, LUCKY13, RC4). It leaves out -S (server defaults), whose findings are about the
certificate (a test CA has no OCSP/CRL, a short life), and -h (HTTP headers: the app's own),
which keeps the scan near a minute. Against an RSA certificate: the wider cipher surface.
"""

from __future__ import annotations

import json
from collections import Counter
import shutil
import subprocess
from pathlib import Path

import pytest

from certs import make_certs, rsa_server

pytestmark = pytest.mark.skipif(not shutil.which("testssl"),
                                reason="testssl.sh is not installed: apt-get install testssl.sh (make sysdeps)")

CHECKS = ["-p", "-s", "-f", "-P", "-U"]
ALLOWED = {"OK", "INFO", "LOW", "DEBUG"}


def scan(port: int, ca: Path, out: Path) -> list[dict[str, str]]:
    result = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "--ip", "127.0.0.1",
                             "--add-ca", str(ca), "--connect-timeout", "20", "--openssl-timeout", "20",
                             "--jsonfile", str(out), *CHECKS, f"localhost:{port}"],
                            capture_output=True, text=True, timeout=900)
    assert out.exists(), f"testssl wrote no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_testssl_finds_nothing_above_low(make_server, tmp_path):
    certs = make_certs(tmp_path / "certs")
    cert, key = rsa_server(certs)
    server = make_server(app="tls_apps:app", settings={"ssl_certfile": str(cert), "ssl_keyfile": str(key)})
    findings = scan(server.port, certs.ca, tmp_path / "testssl.json")
    by_id = {f["id"]: f for f in findings}
    summary = "\n".join(f"{f['id']} {f['severity']} {f['finding']}" for f in findings)
    counts = Counter(f["severity"] for f in findings)
    low = "; ".join(f"{f['id']}: {f['finding']}" for f in findings if f["severity"] == "LOW")
    print(f"testssl.sh: {len(findings)} findings, {dict(sorted(counts.items()))}" + (f"; LOW: {low}" if low else ""))

    assert [f for f in findings if f["severity"] not in ALLOWED] == [], summary
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert by_id[old]["finding"] == "not offered", summary
    assert by_id["TLS1_2"]["finding"] == "offered" and by_id["TLS1_3"]["finding"].startswith("offered")
    for weak in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                 "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"):
        assert by_id[weak]["finding"] == "not offered", summary
    assert by_id["ALPN"]["finding"] == "http/1.1"
    assert by_id["cipher_order"]["finding"] == "server"
    assert by_id["PFS"]["finding"] == "offered"
    for attack in ("heartbleed", "CCS", "ROBOT", "secure_client_renego", "CRIME_TLS", "POODLE_SSL", "SWEET32",
                   "FREAK", "LOGJAM", "BEAST", "LUCKY13", "RC4"):
        assert by_id[attack]["finding"].startswith("not vulnerable"), summary
