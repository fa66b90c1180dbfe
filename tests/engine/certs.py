"""Certificates made at test time with the openssl command: a CA, server and client certificates,
an expired one, one about to expire, a key that matches nothing, an encrypted key.

    certs = make_certs(tmp_path)        # a Certs of file paths (all PEM)
    ssl_context = certs.client_context()  # trusts the test CA; certs.client_context(client=True): mTLS
"""

from __future__ import annotations

import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

PASSPHRASE = "correct horse battery staple"
_SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path  # the CA certificate (trust anchor for both sides)
    server_cert: Path  # localhost / 127.0.0.1 / ::1, valid 60 days
    server_key: Path
    client_cert: Path  # subject CN=alice, O=Example Corp, OU=Dev, C=DE
    client_key: Path
    other_key: Path  # a valid key that matches no certificate here
    expired_cert: Path  # server certificate (key: server_key) whose notAfter is yesterday
    soon_cert: Path  # server certificate (key: server_key) valid 3 more days
    renewed_cert: Path  # a second server certificate for server_key (another serial): the "renewal"
    encrypted_key: Path  # server_key encrypted with PASSPHRASE
    password_file: Path  # holds PASSPHRASE and a newline
    wrong_password_file: Path

    def client_context(self, client: bool = False) -> ssl.SSLContext:
        """A client context trusting the test CA; ``client``: presents the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if client:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr}")


def _key(name: str, cwd: Path) -> Path:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd)
    os.chmod(cwd / name, 0o600)
    return cwd / name


def _signed(name: str, key: Path, subject: str, ext: str, days: int, cwd: Path) -> Path:
    """A certificate for ``key`` signed by the CA in ``cwd`` (``days`` may be -1: expired)."""
    (cwd / f"{name}.ext").write_text(ext)
    openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", str(days), "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=cwd)
    return cwd / f"{name}.crt"


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    _key("ca.key", directory)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=corral test CA", "-days", "365",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", "ca.crt", cwd=directory)
    server_key = _key("server.key", directory)
    client_key = _key("client.key", directory)
    other_key = _key("other.key", directory)
    subject = "/CN=localhost"
    server_cert = _signed("server", server_key, subject, _SERVER_EXT, 60, directory)
    renewed_cert = _signed("renewed", server_key, subject, _SERVER_EXT, 90, directory)
    expired_cert = _signed("expired", server_key, subject, _SERVER_EXT, -1, directory)
    soon_cert = _signed("soon", server_key, subject, _SERVER_EXT, 3, directory)
    client_cert = _signed("client", client_key, "/C=DE/O=Example Corp/OU=Dev/CN=alice", _CLIENT_EXT, 30,
                          directory)
    openssl("pkey", "-in", "server.key", "-aes256", "-passout", f"pass:{PASSPHRASE}", "-out", "encrypted.key",
            cwd=directory)
    os.chmod(directory / "encrypted.key", 0o600)
    (directory / "password").write_text(PASSPHRASE + "\n")
    (directory / "wrong-password").write_text("not it\n")
    return Certs(directory, directory / "ca.crt", server_cert, server_key, client_cert, client_key, other_key,
                 expired_cert, soon_cert, renewed_cert, directory / "encrypted.key", directory / "password",
                 directory / "wrong-password")


def rsa_server(certs: Certs) -> tuple[Path, Path]:
    """An RSA-2048 server certificate and key signed by the test CA (the ECDSA ones are the default)."""
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.key", cwd=certs.dir)
    os.chmod(certs.dir / "rsa.key", 0o600)
    return _signed("rsa", certs.dir / "rsa.key", "/CN=localhost", _SERVER_EXT, 60, certs.dir), certs.dir / "rsa.key"


def serial_of(pem: bytes | str) -> int:
    """The serial number of a PEM certificate (tells the original from the renewal)."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    result = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=text, capture_output=True, text=True,
                            timeout=30, check=True)
    return int(result.stdout.strip().partition("=")[2], 16)
