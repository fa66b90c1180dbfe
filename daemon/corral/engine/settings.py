"""Engine limits and options: one frozen dataclass, one field per knob.

The supervisor builds :class:`EngineSettings` from the YAML config by field name
(config key == field name) and checks value types against the annotations, so
every field has a simple type and a safe default. ``__post_init__`` rejects
values that are the right type but make no sense, with the fix in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LIFESPAN_MODES = ("auto", "on", "off")
ACCESS_LOG_FORMATS = ("common", "combined", "json")


def _doc(doc: str, details: str = "") -> dict[str, str]:
    """A field's documentation: ``doc`` is `corral run --help`'s line, ``details`` what the config
    reference (docs/configuration.md) and conf/corral.yaml add (corral.config reads both)."""
    return {"doc": doc, "details": details}


@dataclass(frozen=True, slots=True)
class EngineSettings:
    # --- request size limits ------------------------------------------------
    max_request_line: int = field(default=8192, metadata=_doc(
        "bytes of the request target (URL); longer: 414"))
    max_header_count: int = field(default=100, metadata=_doc(
        "header fields per request (trailers counted separately); more: 431"))
    max_header_size: int = field(default=65536, metadata=_doc(
        "bytes of all header names and values of one request; more: 431"))
    max_body_size: int | None = field(default=104857600, metadata=_doc(
        "request body bytes (100 MiB); more: 413; null: unlimited",
        "Checked from Content-Length before reading, and while a chunked body streams."))

    # --- timeouts (seconds) -------------------------------------------------
    header_timeout: float = field(default=30.0, metadata=_doc(
        "from connect (or the first byte of a request) until its headers are complete",
        "Slowloris clients and silent connections are closed. A TLS handshake must finish within "
        "it too."))
    keepalive_timeout: float = field(default=65.0, metadata=_doc(
        "an idle keep-alive connection is closed after this",
        "Above the usual 60 s of load balancers."))
    body_timeout: float = field(default=60.0, metadata=_doc(
        "idle gap while the app waits for request body bytes"))
    write_timeout: float = field(default=60.0, metadata=_doc(
        "a client that stops reading a response is closed after this",
        "Closing a TLS connection (its close_notify) must finish within it too."))
    request_timeout: float | None = field(default=None, metadata=_doc(
        "per-request deadline; null: off",
        "An ASGI request running longer is cancelled and answered 504 (or its connection closed "
        "if the response had started); a WSGI request cannot be cancelled, so its worker is "
        "recycled (with threads it gets 504). For a WebSocket it applies only to the handshake."))

    # --- capacity and buffers -----------------------------------------------
    max_connections: int = field(default=1024, metadata=_doc(
        "open connections per worker",
        "At the limit, a new connection takes the place of the one idle longest (between "
        "keep-alive requests, or silent since it connected); only while every connection is busy "
        "does the worker stop accepting (the backlog and the other workers take the rest). A "
        "WebSocket counts against it and is never closed to make room."))
    body_buffer_size: int = field(default=65536, metadata=_doc(
        "unread request-body bytes buffered before reading from the client pauses"))
    write_buffer_size: int = field(default=65536, metadata=_doc(
        "unsent response bytes above which send() waits for the client to drain",
        "WebSocket sends wait on it too."))

    # --- application interface ----------------------------------------------
    lifespan: str = field(default="auto", metadata=_doc(
        "ASGI lifespan protocol: auto (used if the app supports it), on (required), off",
        "Under auto an app that rejects lifespan, such as Django, still works."))
    root_path: str = field(default="", metadata=_doc(
        "ASGI root_path / WSGI SCRIPT_NAME: the URL prefix the app is mounted under",
        "It starts with '/' and does not end with one (e.g. /api); \"\": none."))
    threads: int = field(default=0, metadata=_doc(
        "WSGI: 0 runs the app inline on the event loop; N runs a pool of N threads per worker",
        "Inline is the fastest mode, one request at a time per worker; with threads the body "
        "streams to the app, and a worker whose threads are all busy stops accepting. At most "
        "1024."))
    wsgi_spool_threshold: int = field(default=1048576, metadata=_doc(
        "WSGI inline mode: request bodies above this many bytes are spooled to a temporary file"))
    wsgi_spool_max: int | None = field(default=1073741824, metadata=_doc(
        "WSGI inline mode: the bytes one worker holds for all its unfinished request bodies; "
        "null: no cap",
        "Inline mode receives a whole request body before the app runs; this caps what one "
        "worker holds for them together (in memory and in temporary files under TMPDIR). A body "
        "that would go past it gets 503 with Retry-After (413 if it is larger than the cap "
        "itself); a full TMPDIR gets 507. threads: N streams bodies to the app instead and needs "
        "no spool."))

    # --- WebSockets (ASGI apps; corral.engine.websocket) ---------------------
    ws: bool = field(default=True, metadata=_doc(
        "WebSockets for ASGI apps (RFC 6455; docs/websockets.md)",
        "false: an Upgrade: websocket request reaches the app as a plain HTTP request (WSGI apps "
        "always get it that way)."))
    ws_max_message_size: int = field(default=16777216, metadata=_doc(
        "bytes of one incoming WebSocket message (16 MiB); a larger one closes the connection "
        "with 1009"))
    ws_max_queue: int = field(default=32, metadata=_doc(
        "incoming WebSocket messages buffered for the app",
        "At this many, reading from the client pauses until the app has taken half of them. "
        "Worst case held per connection: about ws_max_queue x ws_max_message_size."))
    ws_ping_interval: float | None = field(default=20.0, metadata=_doc(
        "seconds between WebSocket keepalive pings; null: no pings"))
    ws_ping_timeout: float | None = field(default=20.0, metadata=_doc(
        "a pong must come this soon after a ping, else the WebSocket is closed with 1011; null: "
        "no limit"))
    ws_close_timeout: float = field(default=10.0, metadata=_doc(
        "once a close frame is sent, the peer has this long to finish the closing handshake",
        "Then the TCP connection is dropped."))
    ws_per_message_deflate: bool = field(default=True, metadata=_doc(
        "negotiate permessage-deflate compression (RFC 7692) when the client offers it",
        "4 KiB windows: about 64 KiB of zlib state per connection that uses it."))
    ws_drain_timeout: float = field(default=0.0, metadata=_doc(
        "on stop, reload and recycle, open WebSockets may run this long before they are closed",
        "The worker closes each with 1012 (Service Restart: reload, rolling reload, recycle, "
        "scale-down) or 1001 (Going Away: stop), after the messages the app sent. 0: close at "
        "once, so clients reconnect to the new workers at once. Keep it below graceful_timeout."))

    # --- response headers ---------------------------------------------------
    server_header: str | None = field(default="corral", metadata=_doc(
        "value of the Server response header; null: no Server header"))
    date_header: bool = field(default=True, metadata=_doc(
        "send a Date header (cached, refreshed once a second)"))

    # --- proxies ------------------------------------------------------------
    forwarded_allow_ips: tuple[str, ...] = field(default=("127.0.0.1", "::1", "unix"), metadata=_doc(
        "peers whose proxy headers are believed",
        "IPs, CIDR networks, \"unix\" (unix-socket peers), or \"*\" (anyone: spoofable). The "
        "right-most untrusted hop wins, so a client cannot spoof its address."))
    forwarded_headers: tuple[str, ...] = field(default=("x-forwarded-for", "x-forwarded-proto"), metadata=_doc(
        "which proxy headers those peers may set",
        "x-forwarded-for, x-forwarded-proto, x-forwarded-host, forwarded (RFC 7239). Add one "
        "only if your proxy overwrites it on every request: most pass a client's own "
        "X-Forwarded-Host and Forwarded through, and then any client could pick the Host or its "
        "address."))

    # --- access log ---------------------------------------------------------
    access_log: bool = field(default=False, metadata=_doc(
        "one line per finished request on the \"corral.access\" logger (off: faster)",
        "Lines are written when the response ends, with control characters escaped."))
    access_log_format: str = field(default="common", metadata=_doc(
        "the access log's format: common, combined or json"))

    # --- TLS (corral.engine.tls; every worker loads the files at boot: a reload rotates them) ----
    ssl_certfile: str | None = field(default=None, metadata=_doc(
        "the certificate chain in PEM, the server's own certificate first (certbot: "
        "fullchain.pem); null: plain HTTP",
        "TLS (HTTPS; docs/tls.md) is off until it is set. Every worker reads the files when it "
        "starts, so after a renewal `systemctl reload` (or `corral reload`) serves the new "
        "certificate without dropping a connection; examples/certbot/corral-deploy-hook does "
        "both for certbot. A missing or unreadable file, a key that does not match the "
        "certificate, or a wrong passphrase refuses the start (or the reload: the old workers "
        "serve on); an expired certificate, one expiring within 14 days, or a key readable by "
        "group or others is a warning. Paths may start with ${CREDENTIALS_DIRECTORY}/ for keys "
        "passed by systemd's LoadCredential= (docs/tls.md)."))
    ssl_keyfile: str | None = field(default=None, metadata=_doc(
        "its private key in PEM (certbot: privkey.pem); null: the key is in ssl_certfile"))
    ssl_keyfile_password_file: str | None = field(default=None, metadata=_doc(
        "a file holding the key's passphrase (one line), for an encrypted key"))
    ssl_ca_certs: str | None = field(default=None, metadata=_doc(
        "CA certificates (PEM) that client certificates must chain to (mutual TLS)"))
    ssl_cert_reqs: str = field(default="none", metadata=_doc(
        "client certificates: none (not asked for), optional (asked for; one that is sent must "
        "verify) or required (no valid certificate, no connection)",
        "The app finds the certificate in the ASGI \"tls\" extension (scope[\"extensions\"][\"tls\"])."))
    ssl_ciphers: str | None = field(default=None, metadata=_doc(
        "OpenSSL cipher list for TLS 1.2; null: forward-secret AEAD suites only (Mozilla's "
        "\"intermediate\" list)",
        "TLS 1.3 suites are always OpenSSL's three strong ones."))
    ssl_minimum_version: str = field(default="TLSv1.2", metadata=_doc(
        "oldest protocol accepted: TLSv1.2 or TLSv1.3"))
    ssl_listeners: tuple[str, ...] | None = field(default=None, metadata=_doc(
        "the app listeners that speak TLS; null: every app listener",
        "Addresses as `corral status` shows them (\"0.0.0.0:443\", \"unix:/run/app.sock\"), \":PORT\" "
        "(that port on any address), or systemd socket names (FileDescriptorName=). The metrics "
        "listener never speaks TLS."))

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_count", "max_header_size",
                     "max_connections", "body_buffer_size", "write_buffer_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        # Values come from YAML: each is checked as the object it is, whatever its annotation says.
        body_limit: object = self.max_body_size
        if body_limit is not None and (isinstance(body_limit, bool) or not isinstance(body_limit, int)
                                       or body_limit < 0):
            raise ValueError(f"max_body_size must be a number of bytes >= 0 or null (no limit), "
                             f"got {body_limit!r}")
        for name in ("header_timeout", "keepalive_timeout", "body_timeout", "write_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        request_timeout: object = self.request_timeout
        if request_timeout is not None and (isinstance(request_timeout, bool)
                                            or not isinstance(request_timeout, (int, float))
                                            or request_timeout <= 0):
            raise ValueError(f"request_timeout must be a number of seconds > 0 or null (off), "
                             f"got {request_timeout!r}")
        threads: object = self.threads
        if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= 1024:
            raise ValueError(f"threads must be 0 (WSGI app inline on the event loop) or a thread count "
                             f"from 1 to 1024, got {threads!r}")
        spool_threshold: object = self.wsgi_spool_threshold
        if isinstance(spool_threshold, bool) or not isinstance(spool_threshold, int) or spool_threshold < 0:
            raise ValueError(f"wsgi_spool_threshold must be a number of bytes >= 0, got {spool_threshold!r}")
        spool_max: object = self.wsgi_spool_max
        if spool_max is not None and (isinstance(spool_max, bool) or not isinstance(spool_max, int)
                                      or spool_max < 1):
            raise ValueError(f"wsgi_spool_max must be a number of bytes > 0 (what one worker may hold of "
                             f"unfinished request bodies in inline mode) or null (no limit), "
                             f"got {spool_max!r}")
        self._check_ws()
        if self.lifespan not in LIFESPAN_MODES:
            raise ValueError(f"lifespan must be one of {', '.join(LIFESPAN_MODES)}, got {self.lifespan!r}")
        if self.access_log_format not in ACCESS_LOG_FORMATS:
            raise ValueError(f"access_log_format must be one of {', '.join(ACCESS_LOG_FORMATS)}, "
                             f"got {self.access_log_format!r}")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ValueError(f"root_path must start with '/' and not end with one (e.g. '/api'), "
                             f"got {self.root_path!r}")
        if self.server_header is not None and any(c in self.server_header for c in "\r\n\0"):
            raise ValueError("server_header must not contain CR, LF or NUL")
        allow_ips: object = self.forwarded_allow_ips
        if isinstance(allow_ips, str):
            raise ValueError("forwarded_allow_ips must be a list of addresses, not a string; "
                             "write e.g. ['127.0.0.1', '10.0.0.0/8']")
        # Import here: proxy imports nothing from settings, and this keeps the
        # validation of addresses next to the code that uses them.
        from corral.engine.proxy import trusted_peers
        proxy_headers: object = self.forwarded_headers
        if isinstance(proxy_headers, str):
            raise ValueError("forwarded_headers must be a list of header names, not a string; "
                             "write e.g. ['x-forwarded-for', 'x-forwarded-proto']")
        # Raises ValueError naming the bad entry; parsed once, kept for the engine (proxy.trusted_peers).
        trusted_peers(self.forwarded_allow_ips, self.forwarded_headers)
        self._check_tls()

    def _check_tls(self) -> None:
        """Read the TLS files now, so a missing file is a config error (the supervisor's config
        load, corral check), not a boot failure of every worker. Raises TLSError (a ValueError)
        starting with the key at fault."""
        from corral.engine.tlsconfig import check_files
        if check_files(self) is None:
            return
        try:
            from corral.engine.tls import build_context
        except ImportError:
            # No ssl module: the supervisor keeps it out (corral.supervisor.launch). OpenSSL's checks (the key
            # matches, the passphrase opens it) then run in corral check and in every worker.
            return
        build_context(self)

    def _check_ws(self) -> None:
        for name in ("ws", "ws_per_message_deflate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("ws_max_message_size", "ws_max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        drain: object = self.ws_drain_timeout
        if isinstance(drain, bool) or not isinstance(drain, (int, float)) or drain < 0:
            raise ValueError(f"ws_drain_timeout must be a number of seconds >= 0, got {drain!r}")
        for name in ("ws_ping_interval", "ws_ping_timeout", "ws_close_timeout"):
            value = getattr(self, name)
            if value is None and name != "ws_close_timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                off = " or null (off)" if name != "ws_close_timeout" else ""
                raise ValueError(f"{name} must be a number of seconds > 0{off}, got {value!r}")
