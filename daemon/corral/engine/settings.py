"""Engine limits and options: one frozen dataclass, one field per knob.

The supervisor builds :class:`EngineSettings` from the YAML config by field name
(config key == field name) and checks value types against the annotations, so
every field has a simple type and a safe default. ``__post_init__`` rejects
values that are the right type but make no sense, with the fix in the message.
"""

from __future__ import annotations

from dataclasses import dataclass

LIFESPAN_MODES = ("auto", "on", "off")
ACCESS_LOG_FORMATS = ("common", "combined", "json")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    # --- request size limits ------------------------------------------------
    max_request_line: int = 8192  # bytes of the request target (URL); over it: 414
    max_header_count: int = 100  # header (and, separately, trailer) fields per request; over it: 431
    max_header_size: int = 65536  # bytes of all header names+values of one request; over it: 431
    max_body_size: int | None = 104857600  # request body bytes (100 MiB); over it: 413; None = unlimited

    # --- timeouts (seconds) -------------------------------------------------
    header_timeout: float = 30.0  # from connect / first byte of a request until its headers are complete
    keepalive_timeout: float = 65.0  # idle keep-alive connection; above common 60 s load-balancer idle timeouts
    body_timeout: float = 60.0  # idle gap while the app waits for request body bytes
    write_timeout: float = 60.0  # a client that stops reading a response is closed after this long
    request_timeout: float | None = None  # per-request deadline: cancel the app, 504 (or close); None = off

    # --- capacity and buffers -----------------------------------------------
    max_connections: int = 1024  # open connections per worker; at the limit the worker stops accepting
    body_buffer_size: int = 65536  # unread request-body bytes buffered before reading from the client pauses
    write_buffer_size: int = 65536  # unsent response bytes above which send() waits for the client to drain

    # --- application interface ----------------------------------------------
    lifespan: str = "auto"  # ASGI lifespan protocol: "auto" (use if supported), "on" (required), "off"
    root_path: str = ""  # ASGI root_path: the URL prefix the app is mounted under behind a proxy
    threads: int = 0  # WSGI: 0 = run the app inline on the event loop; N = a pool of N threads per worker
    wsgi_spool_threshold: int = 1048576  # WSGI inline mode: request bodies above this many bytes are spooled to a temp file
    # WSGI inline mode: request-body bytes one worker holds for unfinished uploads
    # (memory and temp files, all connections; 1 GiB); past it: 503. None = unlimited
    wsgi_spool_max: int | None = 1073741824

    # --- WebSockets (ASGI apps; corral.engine.websocket) ---------------------
    ws: bool = True  # false: an Upgrade: websocket request reaches the app as a plain HTTP request
    ws_max_message_size: int = 16777216  # bytes of one incoming message (16 MiB); over it: close 1009
    ws_max_queue: int = 32  # incoming messages buffered for the app; at this many, reading pauses
    ws_ping_interval: float | None = 20.0  # seconds between keepalive pings; None = no pings
    ws_ping_timeout: float | None = 20.0  # a pong must come this soon after a ping, else close 1011; None = no limit
    ws_close_timeout: float = 10.0  # the closing handshake must finish this soon, else the TCP connection is dropped
    ws_per_message_deflate: bool = True  # negotiate permessage-deflate compression when the client offers it
    # On shutdown (stop, reload, recycle) open WebSockets may run this long before they are
    # closed with 1012 (restart) or 1001 (stop); keep it below graceful_timeout.
    ws_drain_timeout: float = 0.0

    # --- response headers ---------------------------------------------------
    server_header: str | None = "corral"  # value of the Server response header; None = no header
    date_header: bool = True  # send a Date header (cached, refreshed once a second)

    # --- proxies ------------------------------------------------------------
    # Peers whose X-Forwarded-For/-Proto/-Host and Forwarded headers are believed:
    # IPs, CIDR networks, "unix" (unix-socket peers) or "*" (anyone; spoofable).
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1", "unix")
    # Which proxy headers those peers may set: x-forwarded-for, x-forwarded-proto,
    # x-forwarded-host, forwarded. Name one only if the proxy overwrites it on every request.
    forwarded_headers: tuple[str, ...] = ("x-forwarded-for", "x-forwarded-proto")

    # --- access log ---------------------------------------------------------
    access_log: bool = False  # one line per finished request on the "corral.access" logger (off: faster)
    access_log_format: str = "common"  # "common", "combined" or "json"

    # --- TLS (corral.engine.tls; every worker loads the files at boot: a reload rotates them) ----
    ssl_certfile: str | None = None  # certificate chain PEM, leaf first (certbot: fullchain.pem); None = plain HTTP
    ssl_keyfile: str | None = None  # its private key PEM (certbot: privkey.pem); None = in ssl_certfile
    ssl_keyfile_password_file: str | None = None  # a file holding the key's passphrase, if it is encrypted
    ssl_ca_certs: str | None = None  # CA bundle PEM that client certificates must chain to
    ssl_cert_reqs: str = "none"  # client certificates: "none", "optional" or "required"
    ssl_ciphers: str | None = None  # OpenSSL cipher list for TLS 1.2; None = forward-secret AEAD suites only
    ssl_minimum_version: str = "TLSv1.2"  # "TLSv1.2" or "TLSv1.3"
    # App listeners that serve TLS: addresses as `corral status` shows them ("0.0.0.0:443"),
    # ":PORT" (any host) or systemd socket names (FileDescriptorName=). None = every app listener.
    ssl_listeners: tuple[str, ...] | None = None

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
        from corral.engine.proxy import TrustedPeers
        proxy_headers: object = self.forwarded_headers
        if isinstance(proxy_headers, str):
            raise ValueError("forwarded_headers must be a list of header names, not a string; "
                             "write e.g. ['x-forwarded-for', 'x-forwarded-proto']")
        TrustedPeers(self.forwarded_allow_ips, self.forwarded_headers)  # raises ValueError naming the bad entry
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
            # No ssl module: the supervisor keeps it out (corral.cli). OpenSSL's checks (the key
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
