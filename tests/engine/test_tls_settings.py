"""The ssl_* settings: every error names the key, the file, the problem and the fix; warnings for
what still serves (an expiring certificate, a key others can read); `corral check` says both.
In-process, with certificates made by openssl (tests/engine/certs.py)."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from certs import Certs, make_certs, openssl
from corral.engine import tls, tlsconfig
from corral.engine.settings import EngineSettings
from util import CORRAL


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def settings(certs: Certs, **changes: Any) -> EngineSettings:
    values: dict[str, Any] = {"ssl_certfile": str(certs.server_cert), "ssl_keyfile": str(certs.server_key)}
    values.update(changes)
    return EngineSettings(**values)


def refused(match: str, certs: Certs, **changes: Any) -> str:
    with pytest.raises(ValueError, match=match) as info:
        settings(certs, **changes)
    return str(info.value)


# --------------------------------------------------------------------------- errors


def test_no_certificate_means_no_tls():
    assert tls.build_context(EngineSettings()) is None
    assert not tlsconfig.wants_tls(EngineSettings(), "127.0.0.1:8000")


def test_a_good_pair_builds_a_tls12_plus_context_with_alpn(certs):
    context = tls.build_context(settings(certs))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.options & ssl.OP_NO_RENEGOTIATION and context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(("GCM" in n or "CHACHA20" in n) and ("ECDHE" in n or "DHE" in n) for n in tls12), tls12


def test_missing_certificate_file(certs):
    message = refused("^ssl_certfile ", certs, ssl_certfile=str(certs.dir / "nope.pem"))
    assert "nope.pem does not exist" in message and "fix the path" in message


def test_missing_key_file(certs):
    message = refused("^ssl_keyfile ", certs, ssl_keyfile=str(certs.dir / "nope.key"))
    assert "nope.key does not exist" in message


def test_key_that_does_not_match_the_certificate(certs):
    message = refused("^ssl_keyfile ", certs, ssl_keyfile=str(certs.other_key))
    assert str(certs.other_key) in message and str(certs.server_cert) in message
    assert "does not match the certificate" in message and "use the key the certificate was issued for" in message


def test_certificate_and_key_swapped(certs):
    message = refused("^ssl_certfile ", certs, ssl_certfile=str(certs.server_key), ssl_keyfile=str(certs.server_cert))
    assert "holds no certificate" in message


def test_not_a_pem_file(certs, tmp_path):
    der = tmp_path / "server.der"
    openssl("x509", "-in", str(certs.server_cert), "-outform", "der", "-out", str(der), cwd=tmp_path)
    message = refused("^ssl_certfile ", certs, ssl_certfile=str(der))
    assert "is not a PEM file" in message and "openssl x509 -inform der" in message


def test_encrypted_key_without_a_password_file(certs):
    message = refused("^ssl_keyfile ", certs, ssl_keyfile=str(certs.encrypted_key))
    assert "is encrypted" in message and "set ssl_keyfile_password_file" in message


def test_encrypted_key_with_the_wrong_password(certs):
    message = refused("^ssl_keyfile_password_file", certs, ssl_keyfile=str(certs.encrypted_key),
                      ssl_keyfile_password_file=str(certs.wrong_password_file))
    assert "the passphrase does not open" in message and str(certs.encrypted_key) in message


def test_encrypted_key_with_its_password_file(certs):
    context = tls.build_context(settings(certs, ssl_keyfile=str(certs.encrypted_key),
                                         ssl_keyfile_password_file=str(certs.password_file)))
    assert context is not None


def test_key_in_the_certificate_file(certs, tmp_path):
    both = tmp_path / "both.pem"
    both.write_text(certs.server_cert.read_text() + certs.server_key.read_text())
    both.chmod(0o600)
    assert tls.build_context(EngineSettings(ssl_certfile=str(both))) is not None
    message = refused("^ssl_certfile ", certs, ssl_keyfile=None)
    assert "holds no PEM private key" in message and "without ssl_keyfile the key must be in the same file" in message


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs util-linux setpriv to drop root")
def test_unreadable_key_file(certs):
    # Root reads any file: run the check as nobody, as a service user would be (in a directory
    # nobody can enter: pytest's own are private to root).
    with tempfile.TemporaryDirectory(prefix="corral-tls-") as top:
        _check_unreadable(certs, Path(top))


def _check_unreadable(certs: Certs, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir()
    key = private / "server.key"
    shutil.copy(certs.server_key, key)
    key.chmod(0o600)
    cert = private / "server.crt"
    shutil.copy(certs.server_cert, cert)
    cert.chmod(0o644)
    for directory in (tmp_path, private):
        directory.chmod(0o755)
    code = ("import sys; from corral.engine.settings import EngineSettings as E\n"
            f"try: E(ssl_certfile={str(cert)!r}, ssl_keyfile={str(key)!r})\n"
            "except ValueError as e: print(e); sys.exit(0)\n"
            "sys.exit('no error')")
    prefix = [] if os.geteuid() else ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if os.geteuid():
        key.chmod(0o000)
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(tls.__file__).parents[2])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"ssl_keyfile {key} is not readable by user "), out.stdout
    assert "LoadCredential=" in out.stdout


def test_client_certificates_need_a_ca_bundle(certs):
    message = refused("^ssl_cert_reqs ", certs, ssl_cert_reqs="required")
    assert "needs ssl_ca_certs" in message


def test_bad_choices_and_lists(certs):
    assert "must be one of none, optional, required" in refused("^ssl_cert_reqs", certs, ssl_cert_reqs="yes")
    assert "TLSv1.2, TLSv1.3" in refused("^ssl_minimum_version", certs, ssl_minimum_version="TLSv1.1")
    assert "selects no cipher" in refused("^ssl_ciphers", certs, ssl_ciphers="NOT-A-CIPHER")
    assert "not '443'" in refused("^ssl_listeners", certs, ssl_listeners="443")
    assert "would put TLS on no listener" in refused("^ssl_listeners", certs, ssl_listeners=())


def test_tls_keys_without_a_certificate():
    with pytest.raises(ValueError, match="^ssl_keyfile is set but ssl_certfile is not"):
        EngineSettings(ssl_keyfile="/etc/ssl/private/x.key")


def test_credentials_directory_is_filled_in(certs, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(certs.dir))
    s = EngineSettings(ssl_certfile="${CREDENTIALS_DIRECTORY}/server.crt",
                       ssl_keyfile="$CREDENTIALS_DIRECTORY/server.key")
    assert tls.build_context(s) is not None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ValueError, match=r"^ssl_certfile .* names \$CREDENTIALS_DIRECTORY, which is not set"):
        tls.build_context(s)


# --------------------------------------------------------------------------- warnings


def test_expired_certificate_is_a_warning_not_an_error(certs):
    s = settings(certs, ssl_certfile=str(certs.expired_cert))
    [warning] = tlsconfig.warnings(s)
    assert warning.startswith(f"ssl_certfile {certs.expired_cert}: the certificate expired on ")
    assert "renew it" in warning and "systemctl reload" in warning


def test_certificate_expiring_within_14_days_is_a_warning(certs):
    [warning] = tlsconfig.warnings(settings(certs, ssl_certfile=str(certs.soon_cert)))
    assert re.search(r"the certificate expires on .*, in [23]\.\d days: renew it", warning), warning
    assert tlsconfig.warnings(settings(certs)) == []  # 60 days left: nothing to say


def test_not_after_agrees_with_openssl(certs):
    for cert in (certs.server_cert, certs.expired_cert, certs.client_cert, certs.ca):
        out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-enddate"], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        expected = datetime.strptime(out.strip().partition("=")[2], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
        assert tlsconfig.not_after(ssl.PEM_cert_to_DER_cert(cert.read_text())) == expected


def test_key_readable_by_group_or_others_is_a_warning(certs, tmp_path):
    key = tmp_path / "server.key"
    shutil.copy(certs.server_key, key)
    for mode, warned in ((0o600, False), (0o640, True), (0o604, True), (0o400, False)):
        key.chmod(mode)
        found = [w for w in tlsconfig.warnings(settings(certs, ssl_keyfile=str(key))) if "readable by its group" in w]
        assert bool(found) == warned, (oct(mode), found)
        if warned:
            assert f"mode {mode:04o}" in found[0] and "chmod 600" in found[0] and "LoadCredential=" in found[0]


def test_ca_bundle_without_client_certificates_is_a_warning(certs):
    [warning] = tlsconfig.warnings(settings(certs, ssl_ca_certs=str(certs.ca)))
    assert "ssl_cert_reqs is 'none'" in warning


# --------------------------------------------------------------------------- listeners and names


def test_ssl_listeners_pick_by_address_port_or_systemd_name(certs):
    s = settings(certs, ssl_listeners=("127.0.0.1:8443", ":9443", "https"))
    assert tlsconfig.wants_tls(s, "127.0.0.1:8443")
    assert tlsconfig.wants_tls(s, "[::]:9443") and tlsconfig.wants_tls(s, "0.0.0.0:9443")
    assert tlsconfig.wants_tls(s, "127.0.0.1:443", "https")
    assert not tlsconfig.wants_tls(s, "127.0.0.1:8000", "http")
    assert not tlsconfig.wants_tls(s, "unix:/run/9443")
    assert tlsconfig.unmatched_listeners(s, [("127.0.0.1:8443", ""), ("0.0.0.0:80", "http")]) == [":9443", "https"]
    every = settings(certs)
    assert tlsconfig.wants_tls(every, "127.0.0.1:8000") and tlsconfig.wants_tls(every, "unix:/run/app.sock")


def test_rfc4514_subject_names():
    cert = {"subject": ((("countryName", "DE"),), (("organizationName", "Example, Inc."),),
                        (("commonName", "alice"), ("userId", "a1")))}
    assert tlsconfig.rfc4514_name(cert) == "CN=alice+UID=a1,O=Example\\, Inc.,C=DE"
    assert tlsconfig.rfc4514_name({"subject": ((("commonName", " #x "),),)}) == "CN=\\ #x\\ "
    assert tlsconfig.rfc4514_name({}) is None


# --------------------------------------------------------------------------- corral check


def _check(tmp_path: Path, **keys: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tlsapp.py").write_text("async def app(scope, receive, send):\n    pass\n")
    config = tmp_path / "corral.yaml"
    config.write_text("app: tlsapp:app\n" + "".join(f"{k}: {v}\n" for k, v in keys.items()))
    return subprocess.run([CORRAL, "check", "--config", str(config)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_corral_check_names_the_bad_key_file(certs, tmp_path):
    out = _check(tmp_path, ssl_certfile=str(certs.server_cert), ssl_keyfile=str(certs.other_key))
    assert out.returncode != 0
    assert "config key 'ssl_keyfile' (in " in out.stderr
    assert f"corral.yaml): ssl_keyfile {certs.other_key} does not match the certificate" in out.stderr


def test_corral_check_warns_of_an_expired_certificate(certs, tmp_path):
    out = _check(tmp_path, ssl_certfile=str(certs.expired_cert), ssl_keyfile=str(certs.server_key))
    assert out.returncode == 0, out.stderr
    assert f"corral: warning: ssl_certfile {certs.expired_cert}: the certificate expired on" in out.stderr


def test_without_the_ssl_module_the_file_checks_still_run(certs):
    # The supervisor keeps ssl out of its process (corral.supervisor.launch); its config check still reads the
    # files, and leaves OpenSSL's own checks (the key matches) to corral check and the workers.
    code = ("import sys; sys.modules['ssl'] = None\n"
            "from corral.engine.settings import EngineSettings as E\n"
            f"E(ssl_certfile={str(certs.server_cert)!r}, ssl_keyfile={str(certs.other_key)!r})\n"
            "try: E(ssl_certfile={!r}, ssl_keyfile={!r})\n"
            "except ValueError as e: print(e)\n"
            "assert 'ssl' not in sys.modules or sys.modules['ssl'] is None\n").replace(
        "{!r}, ssl_keyfile={!r}", f"{str(certs.server_cert)!r}, ssl_keyfile={str(certs.dir / 'gone.key')!r}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(tls.__file__).parents[2])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"ssl_keyfile {certs.dir / 'gone.key'} does not exist"), out.stdout
