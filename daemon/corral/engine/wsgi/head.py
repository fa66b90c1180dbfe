"""Turning a WSGI ``status`` and ``response_headers`` into response-head bytes.

WSGI gives native strings (``"200 OK"``, ``[("Content-Type", "text/html")]``);
they are validated here, because a CR or LF in either would let the app (or
whoever controls a value it echoes) split the response.

Hot path: status strings and header names are validated once and memoised;
values are checked together, on the joined header block, with three C-level
scans instead of one regex per value.
"""

from __future__ import annotations

import re
from typing import Any, cast

from corral.engine.contracts import HEAD_DATE, HEAD_SERVER  # HeadFlag bits: the app sent its own Date/Server
from corral.engine.wire import STATUS_LINES, InvalidResponse

_CACHE_LIMIT = 4096
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than HTAB, CR and LF (those two are counted separately).
_CTL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# status string -> (code, status line bytes); typed by what is looked up (anything an app passes)
_STATUS: dict[object, tuple[int, bytes]] = {}
# header name as given -> lower-cased name (only validated names get in)
_NAMES: dict[str, str] = {}

# Hop-by-hop fields are the server's business (PEP 3333): framing is ours,
# so an app's Transfer-Encoding/Connection/Keep-Alive are not passed on;
# "Connection: close" is still honoured.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                         "proxy-authenticate", "proxy-authorization"})


def encode_status(status: object) -> tuple[int, bytes]:
    """``"404 Not Found"`` -> (404, b"HTTP/1.1 404 Not Found\\r\\n"). Hot path (memoised)."""
    known = _STATUS.get(status)
    if known is not None:
        return known
    if type(status) is not str:
        raise InvalidResponse(f"WSGI status must be a str such as '200 OK', not {type(status).__name__}")
    code_text, sep, reason = status.partition(" ")
    if len(code_text) != 3 or not code_text.isdigit() or not sep or not "200" <= code_text <= "599":
        raise InvalidResponse(f"WSGI status {status!r} must be a 3-digit code from 200 to 599 "
                              "(1xx interim responses are the server's job), a space and a reason "
                              "phrase, e.g. '200 OK'")
    if "\r" in reason or "\n" in reason or _CTL.search(reason):
        raise InvalidResponse(f"WSGI status {status!r} contains a control character")
    code = int(code_text)
    try:
        line = f"HTTP/1.1 {code_text} {reason}\r\n".encode("latin-1")
    except UnicodeEncodeError:
        line = STATUS_LINES[code]
    result = (code, line)
    if len(_STATUS) < _CACHE_LIMIT:
        _STATUS[status] = result
    return result


def _check_name(name: object) -> str:
    if type(name) is not str:
        raise InvalidResponse(f"WSGI response header name {name!r} must be a str, not {type(name).__name__}")
    if not _TOKEN.fullmatch(name):
        raise InvalidResponse(f"invalid WSGI response header name {name!r}: only RFC 9110 token "
                              "characters are allowed (no spaces, colons, CR, LF or NUL)")
    lower = name.lower()
    if len(_NAMES) < _CACHE_LIMIT:
        _NAMES[name] = lower
    return lower


def _explain_bad_value(headers: list[tuple[str, str]]) -> InvalidResponse:
    for name, value in headers:
        if "\r" in value or "\n" in value or _CTL.search(value):
            return InvalidResponse(f"WSGI response header {name!r} value {value!r} contains a control "
                                   "character (CR, LF, NUL, ...); refusing to send it (response splitting)")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return InvalidResponse(f"WSGI response header {name!r} value {value!r} is not latin-1; "
                                   "PEP 3333 headers are native strings of bytes (encode non-ASCII text, "
                                   "e.g. RFC 8187 for Content-Disposition filenames)")
    return InvalidResponse("invalid WSGI response headers")


Head = tuple[bytes, "int | None", bool, int]

# tuple(response_headers) -> encode_headers() result. Many responses repeat a
# header list exactly (same type, same length); those skip all the work below.
_HEADERS: dict[tuple[Any, ...], Head] = {}
_HEADERS_LIMIT = 1024


def encode_headers(headers: object) -> Head:
    """Validate the app's headers; return (block, Content-Length or None, app asked to close, flags).

    The block is the ``name: value`` lines as the app spelled them, joined by
    CRLF (no trailing CRLF), minus hop-by-hop fields; ``flags`` tells the base
    cycle whether the app sent its own Date/Server. Hot path: memoised on the
    whole header list.
    """
    if type(headers) is not list:
        raise InvalidResponse(f"WSGI response_headers must be a list of (name, value) tuples, "
                              f"not {type(headers).__name__}")
    key: tuple[Any, ...] | None
    try:
        key = tuple(headers)
        known = _HEADERS.get(key)
    except TypeError:  # unhashable items (lists): validate without memoising
        key = known = None
    if known is not None:
        return known
    result = _encode_headers(headers)
    if key is not None:
        if len(_HEADERS) >= _HEADERS_LIMIT:
            _HEADERS.clear()
        _HEADERS[key] = result
    return result


def _encode_headers(headers: list[Any]) -> Head:
    names = _NAMES
    parts = []
    content_length: int | None = None
    close = False
    flags = 0
    for item in headers:
        # PEP 3333 says tuples; a two-item list is accepted as gunicorn does.
        if (type(item) is not tuple or len(item) != 2) and (type(item) is not list or len(item) != 2):
            raise InvalidResponse(f"WSGI response header {item!r} must be a (name, value) tuple")
        name, value = item
        lower = names.get(name)
        if lower is None:
            lower = _check_name(name)
        if type(value) is not str:
            raise InvalidResponse(f"WSGI response header {name!r} value {value!r} must be a str, "
                                  f"not {type(value).__name__}")
        if lower in _HOP_BY_HOP:
            if lower == "connection" and "close" in value.lower():
                close = True
            continue
        if lower == "content-length":
            length = value.strip()
            if not length.isdigit() or not length.isascii():
                raise InvalidResponse(f"WSGI response Content-Length {value!r} is not a number of bytes")
            if content_length is not None:
                if int(length) != content_length:
                    raise InvalidResponse("WSGI response has two different Content-Length headers")
                continue
            content_length = int(length)
        elif lower == "date":
            flags |= HEAD_DATE
        elif lower == "server":
            flags |= HEAD_SERVER
        parts.append(f"{name}: {value}")
    block = "\r\n".join(parts)
    separators = max(0, len(parts) - 1)
    if block.count("\n") != separators or block.count("\r") != separators or _CTL.search(block):
        raise _explain_bad_value(headers)
    try:
        return block.encode("latin-1"), content_length, close, flags
    except UnicodeEncodeError:
        raise _explain_bad_value(headers) from None


# What encode_head() gives: (code, head, Content-Length or None, close, flags, plain).
WSGIHead = tuple[int, bytes, "int | None", bool, int, bool]

# (status, tuple(response_headers)) -> encode_head() result.
_HEADS: dict[tuple[Any, ...], WSGIHead] = {}


def encode_head(status: object, headers: object) -> WSGIHead:
    """``start_response``'s arguments as (code, head, Content-Length or None, close, flags, plain). Hot path.

    ``head`` is the status line (with the app's reason phrase) and the header
    lines, each ending in CRLF: the response head but for the framing and
    default headers the engine adds. ``close``: the app asked to close the
    connection; ``flags``: the base cycle's bits for a Date/Server of the app's
    own; ``plain``: none of those and a status that has a body, so the engine's
    simple-request shortcut may send it. Memoised on the pair, so a response
    head seen before costs one lookup.
    """
    try:
        key: tuple[Any, ...] | None = (status, tuple(headers)) if type(headers) is list else None
        known = _HEADS.get(key) if key is not None else None
    except TypeError:  # unhashable items (lists): validate without memoising
        key = known = None
    if known is not None:
        return known
    code, line = encode_status(status)
    block, length, close, flags = encode_headers(headers)
    if code == 204 and length is not None:
        # RFC 9110 8.6: never a Content-Length on a 204.
        block, length, close, flags = encode_headers(
            [h for h in cast("list[Any]", headers) if str(h[0]).lower() != "content-length"])  # checked a list above
    plain = not close and not flags and code != 204 and code != 304
    result = (code, line + block + b"\r\n" if block else line, length, close, flags, plain)
    if key is not None:
        if len(_HEADS) >= _HEADERS_LIMIT:
            _HEADS.clear()
        _HEADS[key] = result
    return result
