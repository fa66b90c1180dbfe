"""The opening handshake (RFC 6455 section 4.2), checked by the engine before the app is called.

A request whose ``Upgrade`` header names ``websocket`` is a handshake attempt.
:func:`check` either accepts it (a :class:`Handshake`, with permessage-deflate
already negotiated) or refuses it (a :class:`Refusal`): 426 with
``Sec-WebSocket-Version: 13`` for a version other than 13, 400 for anything
else that is malformed. A refused handshake never reaches the app.

:func:`accept_head` builds the ``101 Switching Protocols`` head once the app
sends ``websocket.accept``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import parse_subprotocol
from websockets.protocol import State
from websockets.server import ServerProtocol

from corral.engine.wire import InvalidResponse, check_name, check_value

# websockets logs every closed server connection at INFO ("connection closed"):
# one line per WebSocket is noise in a journal. Its errors still get through.
frames_log = logging.getLogger("corral.websocket.frames")
frames_log.setLevel(logging.WARNING)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

# Header names the engine writes in a 101 itself: an app's accept headers must not repeat them.
_OWN_HEADERS = frozenset((b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-extensions",
                          b"sec-websocket-protocol", b"content-length", b"transfer-encoding"))


def _deflate() -> ServerPerMessageDeflateFactory:
    """permessage-deflate (RFC 7692) with bounded memory per connection.

    4 KiB windows (12 bits) both ways and zlib memLevel 5, as websockets itself
    defaults to: about 64 KiB of zlib state per connection that negotiated it,
    instead of the ~300 KiB of zlib's own defaults.
    """
    return ServerPerMessageDeflateFactory(server_max_window_bits=12, client_max_window_bits=12,
                                          compress_settings={"memLevel": 5})


@dataclass(frozen=True, slots=True)
class Refusal:
    """A handshake the engine answers itself, without calling the app."""

    status: int
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class Handshake:
    """A valid handshake: what the 101 needs, and the frame protocol ready to run."""

    accept: bytes  # Sec-WebSocket-Accept value
    subprotocols: list[str]  # offered by the client, in its order of preference
    extensions: bytes | None  # Sec-WebSocket-Extensions value of the 101 (None: none negotiated)
    protocol: ServerProtocol  # websockets' sans-IO state machine, parsing frames


def wants_websocket(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's ``Upgrade`` header offers ``websocket`` (a handshake attempt)."""
    for name, value in headers:
        if name == b"upgrade" and any(token.strip().lower() == b"websocket" for token in value.split(b",")):
            return True
    return False


def _tokens(headers: Sequence[tuple[bytes, bytes]], wanted: bytes) -> list[bytes]:
    """The comma-separated tokens of every ``wanted`` header, lower-cased."""
    out = []
    for name, value in headers:
        if name == wanted:
            out += [t.strip().lower() for t in value.split(b",") if t.strip()]
    return out


def _values(headers: Sequence[tuple[bytes, bytes]], wanted: bytes) -> list[bytes]:
    return [value for name, value in headers if name == wanted]


def accept_value(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a client's key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def check(method: str, http_version: str, headers: Sequence[tuple[bytes, bytes]],
          settings: Any) -> Handshake | Refusal:
    """Check a handshake request (scope-style lower-cased headers); accept it or refuse it.

    The Host header was checked by the HTTP protocol already (present, exactly once).
    """
    if method != "GET":
        return Refusal(400, f"Bad Request: a WebSocket handshake must be a GET request, not {method}")
    if http_version != "1.1":
        return Refusal(400, f"Bad Request: a WebSocket handshake needs HTTP/1.1, not HTTP/{http_version}")
    if b"upgrade" not in _tokens(headers, b"connection"):
        return Refusal(400, "Bad Request: a WebSocket handshake needs 'Connection: Upgrade'")
    keys = _values(headers, b"sec-websocket-key")
    if len(keys) != 1:
        return Refusal(400, "Bad Request: a WebSocket handshake needs exactly one Sec-WebSocket-Key header")
    key = keys[0]
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        return Refusal(400, "Bad Request: Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
    versions = _values(headers, b"sec-websocket-version")
    if versions != [b"13"]:
        return Refusal(426, "Upgrade Required: this server speaks WebSocket version 13 (RFC 6455); "
                            "send 'Sec-WebSocket-Version: 13'", ((b"sec-websocket-version", b"13"),))
    subprotocols: list[str] = []
    try:
        for value in _values(headers, b"sec-websocket-protocol"):
            subprotocols += parse_subprotocol(value.decode("latin-1"))
    except InvalidHandshake as exc:
        return Refusal(400, f"Bad Request: invalid Sec-WebSocket-Protocol header: {exc}")
    # Created OPEN: its parser starts on frames (the HTTP head was the engine's job).
    protocol = ServerProtocol(extensions=[_deflate()] if settings.ws_per_message_deflate else None,
                              max_size=settings.ws_max_message_size, logger=frames_log, state=State.OPEN)
    extensions = None
    offers = _values(headers, b"sec-websocket-extensions")
    if offers:
        request = Headers()
        for value in offers:
            request["Sec-WebSocket-Extensions"] = value.decode("latin-1")
        try:
            header, protocol.extensions = protocol.process_extensions(request)
        except InvalidHandshake as exc:
            return Refusal(400, f"Bad Request: invalid Sec-WebSocket-Extensions header: {exc}")
        if header is not None:
            extensions = header.encode("latin-1")
    return Handshake(accept_value(key), subprotocols, extensions, protocol)


def accept_head(handshake: Handshake, subprotocol: Any, headers: Any, default_headers: bytes) -> bytes:
    """The whole ``101 Switching Protocols`` head for an app's ``websocket.accept``.

    Raises InvalidResponse (nothing is written) for a subprotocol the client did
    not offer or for headers that are invalid or that the engine writes itself.
    """
    lines = [b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
             b"sec-websocket-accept: ", handshake.accept, b"\r\n"]
    if handshake.extensions is not None:
        lines += (b"sec-websocket-extensions: ", handshake.extensions, b"\r\n")
    if subprotocol is not None:
        if not isinstance(subprotocol, str) or subprotocol not in handshake.subprotocols:
            offered = ", ".join(handshake.subprotocols) or "none"
            raise InvalidResponse(f"websocket.accept chose subprotocol {subprotocol!r}, which the client did "
                                  f"not offer (offered: {offered}); pick one of scope['subprotocols'] or None")
        lines += (b"sec-websocket-protocol: ", subprotocol.encode("ascii"), b"\r\n")
    try:
        pairs = [(name, value) for name, value in (headers or ())]
    except (TypeError, ValueError) as exc:
        raise InvalidResponse(f"websocket.accept headers must be an iterable of (name, value) byte-string "
                              f"pairs: {exc}") from None
    for name, value in pairs:
        lname = check_name(name)
        check_value(name, value)
        if lname in _OWN_HEADERS:
            hint = " (use the 'subprotocol' key of websocket.accept)" if lname == b"sec-websocket-protocol" else ""
            raise InvalidResponse(f"websocket.accept headers must not include {name.decode('latin-1')!r}: the "
                                  f"server writes it{hint}")
        lines += (name, b": ", value, b"\r\n")
    lines += (default_headers, b"\r\n")
    return b"".join(lines)


def opened(handshake: Handshake, subprotocol: str | None) -> ServerProtocol:
    """The frame protocol of an accepted handshake."""
    protocol = handshake.protocol
    protocol.subprotocol = subprotocol  # type: ignore[assignment]
    return protocol
