"""TLS for the engine's listeners: the server's ``ssl.SSLContext`` and the ASGI ``tls`` extension.

Each worker builds its context when it boots (:func:`build_context`), so a reload
(a new generation of workers) loads renewed certificate files: that is corral's
zero-downtime certificate rotation. The old generation keeps the context it
booted with until its last keep-alive connection is done.

The checks that need no OpenSSL (values, files, listeners, warnings) live in
``corral.engine.tlsconfig``, which the supervisor can run without loading ``ssl``;
this module adds OpenSSL's: the key matches the certificate, the passphrase
opens the key, the cipher list selects something, the CA bundle loads.
"""

from __future__ import annotations

import ssl
from typing import Any

from corral.engine.tlsconfig import (
    CertReqs,
    MinimumVersion,
    TLSError,
    TLSSettings,
    check_files,
    resolve_path,
    rfc4514_name,
)

# Mozilla's "intermediate" list (ssl-config.mozilla.org, v5.7): forward-secret AEAD suites
# only, so no CBC (Lucky13), RC4, 3DES or export suite is ever offered over TLS 1.2.
# TLS 1.3 suites are not set by cipher lists (OpenSSL's three defaults are all strong).
DEFAULT_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
))
ALPN_PROTOCOLS = ("http/1.1",)  # the only protocol the engine speaks
_VERIFY_MODES = {CertReqs.NONE: ssl.CERT_NONE, CertReqs.OPTIONAL: ssl.CERT_OPTIONAL,
                 CertReqs.REQUIRED: ssl.CERT_REQUIRED}
_VERSIONS = {MinimumVersion.TLS1_2: ssl.TLSVersion.TLSv1_2, MinimumVersion.TLS1_3: ssl.TLSVersion.TLSv1_3}


class ServerContext(ssl.SSLContext):
    """The server's SSLContext, plus what the ASGI ``tls`` extension reports on each connection."""

    server_cert_pem: str | None = None  # the leaf certificate this server presents
    cipher_ids: dict[str, int]  # OpenSSL cipher name -> IANA cipher suite number


def build_context(settings: TLSSettings) -> ServerContext | None:
    """The server context for the TLS listeners, or None when ``ssl_certfile`` is unset.

    Reads every file now; raises TLSError naming the file, the problem and the fix.
    """
    files = check_files(settings)
    if files is None:
        return None
    try:
        ssl.create_default_context(cadata=files.leaf_pem)  # does the leaf parse at all?
    except ssl.SSLError as exc:
        raise TLSError(f"ssl_certfile {files.certfile}: its first certificate cannot be parsed ({exc}): "
                       "replace the file with the certificate as issued") from None
    context = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[MinimumVersion(settings.ssl_minimum_version)]
    # Server order: every suite offered is strong, and scanners (testssl.sh) flag its absence.
    # No renegotiation: client-initiated renegotiation is a cheap CPU-exhaustion attack.
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    _set_ciphers(context, settings.ssl_ciphers)
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    _load_chain(context, files.certfile, files.key_key, files.keyfile, files.encrypted, files.password)
    if settings.ssl_ca_certs is not None:
        _load_ca(context, resolve_path(settings.ssl_ca_certs, "ssl_ca_certs"))
    context.verify_mode = _VERIFY_MODES[CertReqs(settings.ssl_cert_reqs)]
    context.server_cert_pem = files.leaf_pem
    context.cipher_ids = {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}
    return context


def _set_ciphers(context: ssl.SSLContext, ciphers: str | None) -> None:
    try:
        context.set_ciphers(ciphers or DEFAULT_CIPHERS)
    except ssl.SSLError:
        raise TLSError(f"ssl_ciphers {ciphers!r} selects no cipher this OpenSSL ({ssl.OPENSSL_VERSION}) "
                       "offers: write an OpenSSL cipher list (man 1 ciphers), or leave it unset for "
                       "corral's default (forward-secret AEAD suites only)") from None


def _load_chain(context: ssl.SSLContext, certfile: str, key_key: str, keyfile: str, encrypted: bool,
                password: bytes | None) -> None:
    def give_password() -> bytes:
        # Always a callable: without one OpenSSL would prompt on the terminal for an encrypted key.
        return password or b""

    try:
        context.load_cert_chain(certfile, keyfile if key_key == "ssl_keyfile" else None, give_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSError(f"{key_key} {keyfile} does not match the certificate in ssl_certfile {certfile} "
                           "(their public keys differ): use the key the certificate was issued for "
                           "(certbot: privkey.pem next to fullchain.pem)") from None
        if encrypted:
            raise TLSError(f"ssl_keyfile_password_file: the passphrase does not open ssl_keyfile {keyfile}: "
                           "put the key's passphrase in the file (trailing newline allowed)") from None
        raise TLSError(f"{key_key} {keyfile}: OpenSSL cannot load the private key or certificate chain "
                       f"({exc}): check that it is the PEM key issued with ssl_certfile {certfile}") from None
    except OSError as exc:  # the file changed between our read and OpenSSL's
        raise TLSError(f"{key_key} {keyfile} cannot be read: {exc.strerror}") from None


def _load_ca(context: ssl.SSLContext, path: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSError(f"ssl_ca_certs {path}: OpenSSL cannot load it as a CA bundle ({exc}): it must hold "
                       "PEM certificates (-----BEGIN CERTIFICATE-----)") from None


# --------------------------------------------------------------------------- per connection

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI ``tls`` extension of a connection whose handshake is done (once per connection)."""
    context = ssl_object.context
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name = None
    if der:
        # Python 3.13+ gives the verified chain (DER, the client's first); before, the client's alone.
        verified = getattr(ssl_object, "get_verified_chain", None)
        certs: list[bytes] = list(verified()) if verified is not None else [der]
        chain = [ssl.DER_cert_to_PEM_cert(c) for c in certs]
        name = rfc4514_name(ssl_object.getpeercert() or {})
    cipher = ssl_object.cipher()
    ids = getattr(context, "cipher_ids", {})
    return {
        "server_cert": getattr(context, "server_cert_pem", None),
        "client_cert_chain": chain,
        "client_cert_name": name,
        # A certificate that does not verify fails the handshake: an app never sees one.
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": ids.get(cipher[0]) if cipher else None,
    }
