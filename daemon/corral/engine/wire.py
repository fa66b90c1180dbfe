"""Bytes on the wire: pre-encoded status lines, header validation, canned error responses.

Everything here is computed once (tables) or memoised (header names and common
values), so the per-response work is dictionary lookups and one ``join``.
"""

from __future__ import annotations

import http
import re
import time

# Hot path: status lines for every code 100-599, pre-encoded. Responses always
# say HTTP/1.1, the highest version we speak (RFC 9110 section 2.5), also to 1.0 clients.
STATUS_LINES: dict[int, bytes] = {}
for _code in range(100, 600):
    try:
        _phrase = http.HTTPStatus(_code).phrase
    except ValueError:
        _phrase = ""
    STATUS_LINES[_code] = f"HTTP/1.1 {_code} {_phrase}\r\n".encode("ascii")

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible ASCII, obs-text (0x80-0xff), space and HTAB; any other
# control character (CR, LF and NUL above all) could split the response.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_CACHE_LIMIT = 4096
# Header names seen before, mapped to their lower-cased form (validated once).
_NAMES: dict[bytes, bytes] = {}
# Header values seen before that passed validation (short ones only).
_VALUES: set[bytes] = set()


class InvalidResponse(RuntimeError):
    """The application produced a response we refuse to put on the wire."""

    logged = False  # True once the engine logged it (the interface's error path then does not again)


class ClientDisconnected(OSError):
    """The client closed the connection; raised by ``send()`` (ASGI spec 2.4: an OSError)."""


def check_name(name: object) -> bytes:
    """Validate a response header name; return it lower-cased. Memoised by the caller's lookup."""
    if type(name) is not bytes:
        raise InvalidResponse(f"response header name {name!r} must be bytes, not {type(name).__name__}")
    if not _TOKEN.fullmatch(name):
        raise InvalidResponse(f"invalid response header name {name!r}: only RFC 9110 token "
                              "characters are allowed (no spaces, colons, CR, LF or NUL)")
    lower = name.lower()
    if len(_NAMES) < _CACHE_LIMIT:
        _NAMES[name] = lower
    return lower


def check_value(name: bytes, value: object) -> None:
    """Validate a response header value; memoise short valid ones."""
    if type(value) is not bytes:
        raise InvalidResponse(f"response header {name!r} value {value!r} must be bytes, "
                              f"not {type(value).__name__}")
    if _BAD_VALUE.search(value):
        raise InvalidResponse(f"response header {name!r} value {value!r} contains a control "
                              "character (CR, LF, NUL, ...); refusing to send it (response splitting)")
    if len(value) <= 128 and len(_VALUES) < _CACHE_LIMIT:
        _VALUES.add(value)


def names_cache() -> dict[bytes, bytes]:
    return _NAMES


def values_cache() -> set[bytes]:
    return _VALUES


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(timestamp: float | None = None) -> bytes:
    """``timestamp`` (default: now) as an IMF-fixdate (RFC 9110 section 5.6.7), for the Date header.

    Written out here rather than with email.utils.formatdate, which gives the same bytes: a
    worker refreshes the Date line every second, and running the email package's code in every
    worker forked from a zygote would copy the pages it sits on."""
    t = time.gmtime(timestamp)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT").encode("ascii")


def default_headers(server_header: str | None, date: bool, timestamp: float | None = None) -> bytes:
    """The ``date``/``server`` lines appended to every response (rebuilt once a second)."""
    out = b""
    if date:
        out += b"date: " + http_date(timestamp) + b"\r\n"
    if server_header:
        out += b"server: " + server_header.encode("latin-1") + b"\r\n"
    return out


def error_response(status: int, message: str, extra_headers: bytes = b"", *, close: bool = True) -> bytes:
    """A complete plain-text response the engine writes itself (400, 413, 500, 504, ...)."""
    body = (message.rstrip("\n") + "\n").encode("utf-8", "replace")
    head = (STATUS_LINES[status]
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            + (b"connection: close\r\n" if close else b"")
            + extra_headers + b"\r\n")
    return head + body
