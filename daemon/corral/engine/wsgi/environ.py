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

from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from corral import __version__

WSGI_VERSION = (1, 0)
# Apps and middleware read it to tell servers apart (httpbin, for one, looks for
# "gunicorn/" before it accepts chunked uploads); "name/version" as gunicorn's.
SERVER_SOFTWARE = f"corral/{__version__}"

# Header names that PEP 3333 (via CGI) maps without the HTTP_ prefix.
_UNPREFIXED = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}

# wire name (any case) -> environ key, or "" for names we drop. Bounded so a
# client sending random header names cannot grow it without limit.
_KEY_CACHE: dict[bytes, str] = {}
_KEY_CACHE_MAX = 2048


def header_key(name: bytes) -> str:
    """The environ key for header ``name``, or "" if the header must be dropped.

    Names containing ``_`` are dropped: ``X_Forwarded_For`` and
    ``X-Forwarded-For`` would both become ``HTTP_X_FORWARDED_FOR``, letting a
    client smuggle a value past a proxy that only strips the dashed form (the
    same default as gunicorn's ``header_map = drop`` and nginx).
    """
    key = _KEY_CACHE.get(name)
    if key is not None:
        return key
    lower = name.lower()
    if b"_" in lower:
        key = ""
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


def environ_base(
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    scheme: str,
    script_name: str,
    multithread: bool,
    multiprocess: bool,
    file_wrapper: Any,
) -> dict[str, Any]:
    """The part of the environ that is the same for every request on one connection.

    ``client``/``scheme`` are the connection's own peer and scheme; a request
    whose trusted proxy headers say otherwise overrides them after
    :func:`build_environ`. ``script_name`` comes from :func:`script_name_for`.
    """
    if server is not None:
        server_name, server_port = server[0], str(server[1])
    else:  # unix socket: only a Host header can tell
        server_name, server_port = "localhost", "443" if scheme == "https" else "80"
    # The CGI keys beyond PEP 3333's are those gunicorn sets (SERVER_SOFTWARE
    # here; RAW_URI and REMOTE_PORT per request) plus GATEWAY_INTERFACE, which
    # the wsgiref reference sets; tests/wsgi/test_wsgi_hardening_environ.py
    # compares the key sets with both servers.
    base: dict[str, Any] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "SCRIPT_NAME": script_name,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "wsgi.version": WSGI_VERSION,
        "wsgi.url_scheme": scheme,
        "wsgi.errors": ERRORS,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": file_wrapper,
    }
    set_client(base, client)
    return base


def set_client(environ: dict[str, Any], client: tuple[str, int] | None) -> None:
    """REMOTE_ADDR / REMOTE_PORT for a peer address (None for a unix-socket peer)."""
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    else:
        # A unix-socket peer has no address; gunicorn gives "" as well.
        environ["REMOTE_ADDR"] = ""
        environ.pop("REMOTE_PORT", None)


# Host header value -> (SERVER_NAME, SERVER_PORT or "" when the header names no port).
_HOST_CACHE: dict[str, tuple[str, str]] = {}


def _host_parts(host: str) -> tuple[str, str]:
    name, port = split_host(host, "")
    if port in ("80", "443") and not host.endswith((":80", ":443")):
        port = ""  # no port in the header: the scheme's default, filled in per request
    if len(_HOST_CACHE) >= _KEY_CACHE_MAX:
        _HOST_CACHE.clear()
    _HOST_CACHE[host] = (name, port)
    return name, port


def build_environ(
    base: dict[str, Any],
    method: str,
    raw_path: bytes,
    query: bytes,
    http_version: str,
    headers: Iterable[tuple[bytes, bytes]],
    wsgi_input: Any,
) -> dict[str, Any]:
    """The environ for one request: ``base`` (from :func:`environ_base`) plus the request.

    ``raw_path`` is the request target's path as sent (still percent-encoded)
    and ``headers`` the request's header fields in order, trailers excluded.
    The base already holds the common values (HTTP/1.1, an empty query), so
    the usual request costs only the keys that differ.
    """
    environ = request_environ(base, method, raw_path, query, wsgi_input)
    script_name = environ["SCRIPT_NAME"]
    if script_name:
        environ["PATH_INFO"] = split_script_name(environ["PATH_INFO"], script_name)
    if http_version != "1.1":
        environ["SERVER_PROTOCOL"] = "HTTP/" + http_version
    add_headers(environ, headers)
    return environ


def request_environ(base: dict[str, Any], method: str, raw_path: bytes, query: bytes,
                    wsgi_input: Any) -> dict[str, Any]:
    """A copy of ``base`` with the request line's keys and ``wsgi.input`` set (hot path)."""
    environ = base.copy()
    raw_uri = raw_path.decode("latin-1")
    environ["REQUEST_METHOD"] = method
    environ["PATH_INFO"] = unquote_to_bytes(raw_path).decode("latin-1") if 37 in raw_path else raw_uri  # "%"
    if query:
        qs = query.decode("latin-1")
        environ["QUERY_STRING"] = qs
        raw_uri = raw_uri + "?" + qs
    environ["RAW_URI"] = raw_uri
    environ["wsgi.input"] = wsgi_input
    return environ


def add_headers(environ: dict[str, Any], headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Add the request's header fields to ``environ`` (hot path).

    Also sets SERVER_NAME/SERVER_PORT from the Host header, as PEP 3333 asks.
    """
    cache = _KEY_CACHE
    for name, value in headers:
        key = cache.get(name)
        if key is None:
            key = header_key(name)
        if not key:
            continue
        if key in environ:
            if key == "CONTENT_LENGTH":
                continue  # identical duplicates only: the parser rejects differing ones
            # Repeated fields are one comma-separated list (RFC 9110 5.3);
            # Cookie is the exception, whose pairs are joined with "; ".
            environ[key] = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value.decode("latin-1")
            continue
        text = value.decode("latin-1")
        environ[key] = text
        if key == "HTTP_HOST" and text:
            name_port = _HOST_CACHE.get(text) or _host_parts(text)
            environ["SERVER_NAME"] = name_port[0]
            environ["SERVER_PORT"] = name_port[1] or ("443" if environ["wsgi.url_scheme"] == "https" else "80")


class ConnectionEnviron:
    """The environ keys shared by the requests of one connection, for its simple requests.

    Clients send the same header fields on every request of a keep-alive
    connection, as a rule. ``template`` is ``base`` plus the keys of the last
    header list seen; a request with the same list only copies it.
    """

    __slots__ = ("base", "headers", "template")

    def __init__(self, base: dict[str, Any]) -> None:
        if base["SCRIPT_NAME"]:
            raise ValueError("ConnectionEnviron serves apps mounted at / only (no root_path)")
        self.base = base
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.template = base

    def environ(self, method: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]],
                wsgi_input: Any) -> dict[str, Any]:
        """The environ of an HTTP/1.1 request on this connection, with no SCRIPT_NAME (hot path)."""
        if headers != self.headers:
            template = self.base.copy()
            add_headers(template, headers)
            self.template = template
            self.headers = list(headers)  # a copy: the protocol's list is not ours to keep
        return request_environ(self.template, method, raw_path, query, wsgi_input)


__all__ = [
    "ERRORS",
    "SERVER_SOFTWARE",
    "ConnectionEnviron",
    "ErrorStream",
    "add_headers",
    "build_environ",
    "decode_path",
    "environ_base",
    "header_key",
    "request_environ",
    "script_name_for",
    "set_client",
    "split_host",
    "split_script_name",
]
