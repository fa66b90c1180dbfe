"""Parsing bind addresses: ``HOST:PORT``, ``[V6]:PORT``, ``:PORT``, ``unix:PATH``, ``fd:N``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Address:
    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    @property
    def is_ipv6(self) -> bool:
        return self.kind == "tcp" and ":" in self.host

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd:{self.fd}"
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


_HELP = "use HOST:PORT, [IPV6]:PORT, unix:/path/to.sock or fd:N"


def parse_address(text: str) -> Address:
    """Parse one bind address; ValueError names what is wrong and the accepted forms."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError(f"bind address {text!r} has no path; {_HELP}")
        if not path.startswith(("/", "@")):
            raise ValueError(f"unix socket path in {text!r} must be absolute (or @abstract)")
        return Address("unix", path=path)
    if text.startswith("fd:") or text.startswith("fd://"):
        digits = text.split(":", 1)[1].lstrip("/")
        if not digits.isdigit():
            raise ValueError(f"bind address {text!r}: fd must be a number; {_HELP}")
        return Address("fd", fd=int(digits))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bind address {text!r}: an IPv6 address needs a port, e.g. [::1]:8000")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"bind address {text!r} has no port; {_HELP}")
        if ":" in host:
            raise ValueError(f"bind address {text!r}: put IPv6 addresses in brackets, e.g. [{host}]:{port}")
        host = host or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bind address {text!r}: port {port!r} is not a number from 0 to 65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not all(part.isalnum() or "-" in part for part in host.split(".")) or not host:
                raise ValueError(f"bind address {text!r}: {host!r} is not an IP address or host name") from None
    return Address("tcp", host=host, port=int(port))


def overlap(a: str, b: str) -> bool:
    """Whether two bind addresses name the same socket address, so one process cannot bind both.

    The same port on a wildcard address (``0.0.0.0``, ``[::]``) and on one address of the
    same family overlap; ``0.0.0.0`` and ``[::]`` do not (corral binds ``[::]`` IPv6-only).
    Port 0 (any free port) never overlaps.
    """
    x, y = parse_address(a), parse_address(b)
    if x.kind != y.kind:
        return False
    if x.kind == "unix":
        return x.path == y.path
    if x.kind == "fd":
        return x.fd == y.fd
    if x.port != y.port or x.port == 0:
        return False
    hx, hy = _ip(x.host), _ip(y.host)
    if hx is None or hy is None:  # a host name: only the same name is known to clash
        return x.host == y.host
    return hx == hy or (hx.version == hy.version and (hx.is_unspecified or hy.is_unspecified))


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        return None
