"""The ``ssl_*`` settings, checked without OpenSSL: values, files, listeners, warnings.

Every problem is a :class:`TLSError` (a ValueError) whose message starts with the
config key at fault and ends with the fix, because the checks run three times:
when the supervisor loads the config, in ``corral check``, and in each worker.

This module never imports ``ssl``: the supervisor keeps it out of its process
(``corral.supervisor.launch``: libssl and libcrypto would take a quarter of its memory), yet
its config check should still catch a missing or unreadable file or a key with
no passphrase. What needs OpenSSL (the key matches the certificate, the
passphrase opens the key, the cipher list) is checked by
``corral.engine.tls.build_context`` where ``ssl`` exists: ``corral check`` and
every worker. Problems that still let corral serve (an expiring certificate, a
key file others can read) are :func:`warnings`, for the caller to log once.
"""

from __future__ import annotations

import base64
import enum
import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

EXPIRY_WARNING_DAYS = 14  # certbot renews at 30 days left: 14 means its renewals are failing
_CREDENTIALS = ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY")
SYSTEMD_HINT = "under systemd, pass it with LoadCredential= (see docs/tls.md)"


class CertReqs(enum.Enum):
    """``ssl_cert_reqs``: whether clients must present a certificate signed by ``ssl_ca_certs``."""

    NONE = "none"  # no client certificate is asked for
    OPTIONAL = "optional"  # asked for; a client may send none, but one it sends must verify
    REQUIRED = "required"  # a client without a valid certificate fails the handshake


class MinimumVersion(enum.Enum):
    """``ssl_minimum_version``: older protocols are refused (TLS 1.0/1.1 are deprecated, RFC 8996)."""

    TLS1_2 = "TLSv1.2"
    TLS1_3 = "TLSv1.3"


class TLSSettings(Protocol):
    """The ``ssl_*`` fields of ``corral.engine.settings.EngineSettings``."""

    @property
    def ssl_certfile(self) -> str | None: ...
    @property
    def ssl_keyfile(self) -> str | None: ...
    @property
    def ssl_keyfile_password_file(self) -> str | None: ...
    @property
    def ssl_ca_certs(self) -> str | None: ...
    @property
    def ssl_cert_reqs(self) -> str: ...
    @property
    def ssl_ciphers(self) -> str | None: ...
    @property
    def ssl_minimum_version(self) -> str: ...
    @property
    def ssl_listeners(self) -> tuple[str, ...] | None: ...


class TLSError(ValueError):
    """A TLS setting that cannot work; the message names the key, the file, the problem and the fix."""


# --------------------------------------------------------------------------- checking values


def check_values(settings: TLSSettings) -> None:
    """Check the ``ssl_*`` values alone (no file is read); raises TLSError."""
    for key in ("ssl_certfile", "ssl_keyfile", "ssl_keyfile_password_file", "ssl_ca_certs", "ssl_ciphers"):
        value = getattr(settings, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise TLSError(f"{key} must be a file path (a non-empty string) or null, got {value!r}")
    _choice("ssl_cert_reqs", settings.ssl_cert_reqs, CertReqs)
    _choice("ssl_minimum_version", settings.ssl_minimum_version, MinimumVersion)
    if settings.ssl_certfile is None:
        others = [k for k in ("ssl_keyfile", "ssl_keyfile_password_file", "ssl_ca_certs", "ssl_listeners")
                  if getattr(settings, k) is not None]
        if others or settings.ssl_cert_reqs != CertReqs.NONE.value:
            key = others[0] if others else "ssl_cert_reqs"
            raise TLSError(f"{key} is set but ssl_certfile is not: TLS is on only with a certificate; set "
                           "ssl_certfile to the certificate (chain) PEM file, or unset the ssl_* keys")
        return
    if settings.ssl_keyfile_password_file is not None and settings.ssl_keyfile is None:
        raise TLSError("ssl_keyfile_password_file is set but ssl_keyfile is not: set ssl_keyfile to the "
                       "encrypted private key the password opens")
    if settings.ssl_cert_reqs != CertReqs.NONE.value and settings.ssl_ca_certs is None:
        raise TLSError(f"ssl_cert_reqs {settings.ssl_cert_reqs!r} needs ssl_ca_certs: set it to the CA "
                       "bundle (PEM) that signs the client certificates to accept")
    _check_listeners(settings.ssl_listeners)


def _choice(key: str, value: object, choices: type[enum.Enum]) -> None:
    allowed = [member.value for member in choices]
    if value not in allowed:
        raise TLSError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def _check_listeners(entries: object) -> None:
    if entries is None:
        return
    if isinstance(entries, str) or not isinstance(entries, (tuple, list)):
        raise TLSError("ssl_listeners must be a list (addresses such as '0.0.0.0:443' or ':443', or "
                       f"systemd socket names), not {entries!r}; write e.g. [':8443']")
    if not entries:
        raise TLSError("ssl_listeners is empty, which would put TLS on no listener: leave it unset (TLS "
                       "on every app listener), name the listeners, or unset ssl_certfile for plain HTTP")
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise TLSError(f"ssl_listeners entries must be addresses or socket names, got {entry!r}")


# --------------------------------------------------------------------------- listeners


def wants_tls(settings: TLSSettings, address: str, name: str = "") -> bool:
    """Whether the app listener at ``address`` (as ``corral status`` shows it; ``name``: its
    systemd FileDescriptorName) serves TLS. The metrics listener is never asked."""
    if settings.ssl_certfile is None:
        return False
    entries = settings.ssl_listeners
    return entries is None or any(_matches(entry, address, name) for entry in entries)


def unmatched_listeners(settings: TLSSettings, listeners: Sequence[tuple[str, str]]) -> list[str]:
    """The ``ssl_listeners`` entries that match none of ``listeners`` ((address, name) pairs)."""
    return [entry for entry in settings.ssl_listeners or ()
            if not any(_matches(entry, address, name) for address, name in listeners)]


def _matches(entry: str, address: str, name: str) -> bool:
    entry = entry.strip()
    if entry == address or (name and entry == name):
        return True
    # ":443" matches the port on any host, as bind's ":PORT" binds any host.
    return entry.startswith(":") and not address.startswith("unix:") and address.rpartition(":")[2] == entry[1:]


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class TLSFiles:
    """The files ``ssl_*`` name, read and checked for shape (not yet by OpenSSL)."""

    certfile: str
    leaf_pem: str  # the first certificate in certfile: the one this server presents
    key_key: str  # the config key naming the file that holds the key ("ssl_certfile" if it is in there)
    keyfile: str
    encrypted: bool
    password: bytes | None


def check_files(settings: TLSSettings) -> TLSFiles | None:
    """Check the values, then read the certificate and key files; None when TLS is off."""
    check_values(settings)
    if settings.ssl_certfile is None:
        return None
    certfile = resolve_path(settings.ssl_certfile, "ssl_certfile")
    cert_text = read_pem("ssl_certfile", certfile)
    leaf = first_certificate("ssl_certfile", certfile, cert_text)
    keyfile = resolve_path(settings.ssl_keyfile, "ssl_keyfile") if settings.ssl_keyfile else None
    key_key, key_path = ("ssl_keyfile", keyfile) if keyfile else ("ssl_certfile", certfile)
    key_text = read_pem(key_key, key_path) if keyfile else cert_text
    if "PRIVATE KEY-----" not in key_text:
        where = "" if keyfile else " (without ssl_keyfile the key must be in the same file)"
        raise TLSError(f"{key_key} {key_path} holds no PEM private key{where}: point ssl_keyfile at the "
                       "key file (-----BEGIN PRIVATE KEY-----)")
    encrypted = "ENCRYPTED" in key_text
    password = _password(settings, key_path, encrypted)
    if settings.ssl_ca_certs is not None:
        ca_certs = resolve_path(settings.ssl_ca_certs, "ssl_ca_certs")
        if "-----BEGIN CERTIFICATE-----" not in read_pem("ssl_ca_certs", ca_certs):
            raise TLSError(f"ssl_ca_certs {ca_certs} holds no certificate (-----BEGIN CERTIFICATE-----): name "
                           "the PEM bundle of the CA(s) that sign client certificates")
    return TLSFiles(certfile, leaf, key_key, key_path, encrypted, password)


def resolve_path(path: str | None, key: str) -> str:
    """``path`` with ``$CREDENTIALS_DIRECTORY`` (systemd's LoadCredential= directory) filled in."""
    assert path is not None
    for token in _CREDENTIALS:
        if token in path:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise TLSError(f"{key} {path} names $CREDENTIALS_DIRECTORY, which is not set: it is set by "
                               "systemd for a unit with LoadCredential=; outside systemd give the real path")
            path = path.replace(token, directory)
    return path


def read_pem(key: str, path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TLSError(f"{key} {path} does not exist: fix the path (absolute, or relative to app_dir's "
                       "working directory)") from None
    except PermissionError:
        raise TLSError(f"{key} {path} is not readable by user {_user()}: give that user read access, or "
                       f"{SYSTEMD_HINT}") from None
    except IsADirectoryError:
        raise TLSError(f"{key} {path} is a directory: name the PEM file in it") from None
    except OSError as exc:
        raise TLSError(f"{key} {path} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TLSError(f"{key} {path} is not a PEM file (no -----BEGIN line): convert a DER file with "
                       f"openssl x509 -inform der -in {path} -out {path}.pem (a key: openssl pkey -inform der)")
    return data.decode("ascii", "replace")


def first_certificate(key: str, path: str, text: str) -> str:
    """The first PEM certificate in ``text`` (the leaf: it must come first in a chain file)."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise TLSError(f"{key} {path} holds no certificate (-----BEGIN CERTIFICATE-----): name the "
                       "certificate or full-chain file (certbot: fullchain.pem)")
    return text[start:stop + len(end)] + "\n"


def pem_to_der(pem: str) -> bytes:
    """The DER bytes of one PEM block (what ssl.PEM_cert_to_DER_cert does, without ssl)."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


def _password(settings: TLSSettings, keyfile: str, encrypted: bool) -> bytes | None:
    path = settings.ssl_keyfile_password_file
    if path is None:
        if encrypted:
            raise TLSError(f"ssl_keyfile {keyfile} is encrypted: set ssl_keyfile_password_file to a file "
                           f"holding its passphrase, or store it decrypted (openssl pkey -in {keyfile} -out "
                           "NEW.key) and protect it with file permissions")
        return None
    path = resolve_path(path, "ssl_keyfile_password_file")
    try:
        with open(path, "rb") as f:
            return f.read().rstrip(b"\r\n")
    except FileNotFoundError:
        raise TLSError(f"ssl_keyfile_password_file {path} does not exist: fix the path") from None
    except PermissionError:
        raise TLSError(f"ssl_keyfile_password_file {path} is not readable by user {_user()}: give that user "
                       f"read access, or {SYSTEMD_HINT}") from None
    except OSError as exc:
        raise TLSError(f"ssl_keyfile_password_file {path} cannot be read: {exc.strerror}") from None


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


# --------------------------------------------------------------------------- warnings


def warnings(settings: TLSSettings, now: datetime | None = None) -> list[str]:
    """What does not stop corral from serving but needs a fix: the certificate expired or expires
    within EXPIRY_WARNING_DAYS, the key file is readable by its group or others, ssl_ca_certs
    set with no client certificate asked for. Call after :func:`check_files` succeeded."""
    if settings.ssl_certfile is None:
        return []
    found: list[str] = []
    certfile = resolve_path(settings.ssl_certfile, "ssl_certfile")
    leaf = first_certificate("ssl_certfile", certfile, read_pem("ssl_certfile", certfile))
    found.extend(_expiry_warning(certfile, not_after(pem_to_der(leaf)), now))
    keyfile = resolve_path(settings.ssl_keyfile or settings.ssl_certfile, "ssl_keyfile")
    mode = os.stat(keyfile).st_mode & 0o777
    if mode & 0o044:
        found.append(f"ssl_keyfile {keyfile} is readable by its group or others (mode {mode:04o}): "
                     f"chmod 600 {keyfile}, or {SYSTEMD_HINT}, so only the service can read the key")
    if settings.ssl_ca_certs is not None and settings.ssl_cert_reqs == CertReqs.NONE.value:
        found.append("ssl_ca_certs is set but ssl_cert_reqs is 'none', so clients are never asked for a "
                     "certificate: set ssl_cert_reqs to 'optional' or 'required', or unset ssl_ca_certs")
    return found


def _expiry_warning(certfile: str, expires: datetime, now: datetime | None) -> list[str]:
    now = now or datetime.now(UTC)
    left = expires - now
    when = expires.strftime("%Y-%m-%d %H:%M UTC")
    if left.total_seconds() <= 0:
        return [f"ssl_certfile {certfile}: the certificate expired on {when} "
                f"({-left.total_seconds() / 86400:.1f} days ago); "
                "clients refuse it: renew it (certbot renew) and run systemctl reload"]
    if left.days < EXPIRY_WARNING_DAYS:
        return [f"ssl_certfile {certfile}: the certificate expires on {when}, in "
                f"{left.total_seconds() / 86400:.1f} days: renew it "
                "(certbot renew; is its timer running?) and run systemctl reload"]
    return []


def not_after(der: bytes) -> datetime:
    """The end of a DER certificate's validity (RFC 5280 4.1: tbsCertificate.validity.notAfter).

    The stdlib decodes only a peer's certificate; the server's own is read here with a
    minimal DER walk: Certificate -> tbsCertificate -> [version], serial, signature,
    issuer -> validity -> notBefore, notAfter.
    """
    try:
        _tag, start, _end = _tlv(der, 0)  # Certificate
        _tag, pos, _end = _tlv(der, start)  # tbsCertificate
        tag, _start, end = _tlv(der, pos)
        if tag == 0xA0:  # explicit [0] version
            pos = end
        for _ in range(3):  # serialNumber, signature, issuer
            _tag, _start, pos = _tlv(der, pos)
        _tag, validity, _end = _tlv(der, pos)
        _tag, _start, pos = _tlv(der, validity)  # notBefore
        tag, start, end = _tlv(der, pos)
        text = der[start:end].decode("ascii")
        if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ (RFC 5280: years 1950-2049)
            stamp = datetime.strptime(text, "%y%m%d%H%M%SZ")
        elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
            stamp = datetime.strptime(text, "%Y%m%d%H%M%SZ")
        else:
            raise ValueError(f"tag {tag:#x}")
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise TLSError(f"ssl_certfile: cannot read the certificate's expiry date ({exc})") from None
    return stamp.replace(tzinfo=UTC)


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


# --------------------------------------------------------------------------- names

# RFC 4514 short names for the attribute names ssl's getpeercert() gives.
_RDN_NAMES = {"commonName": "CN", "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
              "organizationName": "O", "organizationalUnitName": "OU", "streetAddress": "STREET",
              "domainComponent": "DC", "userId": "UID"}



def rfc4514_name(cert: dict[str, Any]) -> str | None:
    """The subject of a decoded certificate as an RFC 4514 string (most specific RDN first)."""
    subject = cert.get("subject")
    if not subject:
        return None
    rdns = ["+".join(f"{_RDN_NAMES.get(attr, attr)}={_escape(value)}" for attr, value in rdn)
            for rdn in reversed(subject)]
    return ",".join(rdns)


def _escape(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out

