"""Building the PEP 3333 ``environ`` dict from a parsed HTTP/1.1 request.

Everything in a WSGI environ is a "native string": bytes from the wire are
decoded as latin-1 so that the app can recover them exactly with
``.encode("latin-1")`` (PEP 3333, "Unicode issues"). ``PATH_INFO`` and
``SCRIPT_NAME`` are percent-decoded first, as CGI requires; ``QUERY_STRING``
is passed on raw.

``build_environ`` runs once per request: it is a hot path, written for speed
(cached header-name translation, no per-header regexes, one dict literal).
"""

from __future__ import annotations

from typing import Any, BinaryIO, Iterable
from urllib.parse import unquote_to_bytes

WSGI_VERSION = (1, 0)

# Header names that PEP 3333 (via CGI) maps without the HTTP_ prefix.
_UNPREFIXED = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}

# wire name (any case) -> environ key, or None for names we drop. Bounded so a
# client sending random header names cannot grow it without limit.
_KEY_CACHE: dict[bytes, str | None] = {}
_KEY_CACHE_MAX = 2048


def header_key(name: bytes) -> str | None:
    """The environ key for header ``name``, or None if the header must be dropped.

    Names containing ``_`` are dropped: ``X_Forwarded_For`` and
    ``X-Forwarded-For`` would both become ``HTTP_X_FORWARDED_FOR``, letting a
    client smuggle a value past a proxy that only strips the dashed form (the
    same default as gunicorn's ``header_map = drop`` and nginx).
    """
    key = _KEY_CACHE.get(name, False)
    if key is not False:
        return key  # type: ignore[return-value]
    lower = name.lower()
    if b"_" in lower:
        key = None
    else:
        key = _UNPREFIXED.get(lower) or "HTTP_" + lower.decode("latin-1").upper().replace("-", "_")
    if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
        _KEY_CACHE.clear()
    _KEY_CACHE[name] = key
    return key


def decode_path(raw_path: bytes) -> str:
    """Percent-decode a request path and return it as a latin-1 native string."""
    if b"%" in raw_path:
        raw_path = unquote_to_bytes(raw_path)
    return raw_path.decode("latin-1")


def script_name_for(root_path: str) -> str:
    """``root_path`` (the mount point, e.g. ``/app``) as a SCRIPT_NAME native string.

    A trailing slash is dropped: SCRIPT_NAME ``/app`` plus PATH_INFO ``/x``
    must rebuild ``/app/x``.
    """
    return root_path.rstrip("/").encode("utf-8").decode("latin-1")


def split_script_name(path: str, script_name: str) -> str:
    """PATH_INFO for ``path`` under ``script_name``: the prefix is removed on a segment boundary.

    A path outside the mount point (``/other`` under ``/app``) is passed on
    whole, as uvicorn and a2wsgi do, so the app can answer 404 itself.
    """
    if script_name and path.startswith(script_name):
        rest = path[len(script_name):]
        if not rest or rest[0] == "/":
            return rest
    return path


def split_host(host: str, scheme: str) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT from a Host header value (``name``, ``name:port``, ``[v6]:port``)."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            name, rest = host[: end + 1], host[end + 1:]
            if rest.startswith(":") and rest[1:].isdigit():
                return name, rest[1:]
            return name, "443" if scheme == "https" else "80"
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, "443" if scheme == "https" else "80"


class ErrorStream:
    """``wsgi.errors``: text written by the app goes to the ``corral.app`` logger, one record per line.

    Lines are buffered per thread until a newline or ``flush()``, so two
    threads writing at once do not interleave within a line.
    """

    def __init__(self) -> None:
        import logging
        import threading

        self._log = logging.getLogger("corral.app")
        self._local = threading.local()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors.write() takes str, not {type(text).__name__}")
        pending = getattr(self._local, "pending", "") + text
        *lines, pending = pending.split("\n")
        for line in lines:
            self._log.error("%s", line)
        self._local.pending = pending
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            self._log.error("%s", pending)


ERRORS = ErrorStream()


def build_environ(
    method: str,
    raw_path: bytes,
    query: bytes,
    http_version: str,
    headers: Iterable[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    scheme: str,
    script_name: str,
    wsgi_input: BinaryIO,
    multithread: bool,
    multiprocess: bool,
    file_wrapper: Any,
) -> dict[str, Any]:
    """The environ for one request. Hot path.

    ``raw_path`` is the request target's path as sent (still percent-encoded),
    ``headers`` the request's header fields in order (trailers excluded),
    ``client``/``scheme`` already resolved through trusted proxy headers, and
    ``script_name`` the result of :func:`script_name_for`.
    """
    path = raw_path.decode("latin-1") if b"%" not in raw_path else unquote_to_bytes(raw_path).decode("latin-1")
    if script_name:
        path = split_script_name(path, script_name)
    qs = query.decode("latin-1") if query else ""
    raw_uri = raw_path.decode("latin-1")
    if query:
        raw_uri = raw_uri + "?" + qs
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path,
        "QUERY_STRING": qs,
        "RAW_URI": raw_uri,
        "REQUEST_URI": raw_uri,
        "SERVER_PROTOCOL": "HTTP/1.1" if http_version == "1.1" else "HTTP/" + http_version,
        "wsgi.version": WSGI_VERSION,
        "wsgi.url_scheme": scheme,
        "wsgi.input": wsgi_input,
        "wsgi.errors": ERRORS,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": file_wrapper,
    }
    cache = _KEY_CACHE
    for name, value in headers:
        key = cache.get(name, False)
        if key is False:
            key = header_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ:
            if key == "CONTENT_LENGTH":
                continue  # identical duplicates only: the parser rejects differing ones
            # Repeated fields are one comma-separated list (RFC 9110 5.3);
            # Cookie is the exception, whose pairs are joined with "; ".
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
        environ[key] = text
    host = environ.get("HTTP_HOST")
    if host:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = split_host(host, scheme)
    elif server is not None:
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1])
    else:
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = "443" if scheme == "https" else "80"
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    else:
        # A unix-socket peer has no address; gunicorn gives "" as well.
        environ["REMOTE_ADDR"] = ""
    return environ


__all__ = [
    "ERRORS",
    "ErrorStream",
    "build_environ",
    "decode_path",
    "header_key",
    "script_name_for",
    "split_host",
    "split_script_name",
]
