"""Bind addresses as text: ``HOST:PORT``, ``[V6]:PORT``, ``:PORT``, ``unix:PATH``, ``fd:N``.

A leaf with no corral imports: the config validates ``bind:`` with it, and the
supervisor's listener setup (``corral.supervisor.listeners``) binds what it parses.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from typing import NamedTuple


class AddressKind(enum.StrEnum):
    TCP = "tcp"
    UNIX = "unix"
    FD = "fd"  # a socket already open in this process (``fd:3``)


@dataclass(frozen=True)
class Address:
    kind: AddressKind
    host: str = ""
    port: int = 0
    path: str = ""  # unix: an absolute path, or ``@name`` for the abstract namespace
    fd: int = -1

    @property
    def is_ipv6(self) -> bool:
        return self.kind == AddressKind.TCP and ":" in self.host

    @property
    def bind_host(self) -> str:
        """The host to hand to bind(): ``localhost`` means the IPv4 loopback, as it always has."""
        return "127.0.0.1" if self.host == "localhost" else self.host

    def __str__(self) -> str:
        if self.kind == AddressKind.UNIX:
            return f"unix:{self.path}"
        if self.kind == AddressKind.FD:
            return f"fd:{self.fd}"
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


_HELP = "use HOST:PORT, [IPV6]:PORT, unix:/path/to.sock or fd:N"


def parse_address(text: str) -> Address:
    """Parse one bind address; ValueError names what is wrong and the accepted forms."""
    text = text.strip()
    if text.startswith("unix:"):
        return _parse_unix(text)
    if text.startswith("fd:"):  # also fd://N
        digits = text.split(":", 1)[1].lstrip("/")
        if not digits.isdigit():
            raise ValueError(f"bind address {text!r}: fd must be a number; {_HELP}")
        return Address(AddressKind.FD, fd=int(digits))
    return _parse_tcp(text)


def _parse_unix(text: str) -> Address:
    path = text[5:]
    if not path:
        raise ValueError(f"bind address {text!r} has no path; {_HELP}")
    if not path.startswith(("/", "@")):
        raise ValueError(f"unix socket path in {text!r} must be absolute (or @abstract)")
    return Address(AddressKind.UNIX, path=path)


def _parse_tcp(text: str) -> Address:
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
    if host != "localhost" and ip_of(host) is None and not _is_host_name(host):
        raise ValueError(f"bind address {text!r}: {host!r} is not an IP address or host name")
    return Address(AddressKind.TCP, host=host, port=int(port))


def _is_host_name(host: str) -> bool:
    return bool(host) and all(part.isalnum() or "-" in part for part in host.split("."))


class IP(NamedTuple):
    """An IP address in binary form: equal however it was written (``::1``, ``0:0::1``).

    ``socket.inet_pton`` parses it: the supervisor imports this module, and the ``ipaddress``
    module would add about 0.2 MiB to its memory for these few checks."""

    family: int  # socket.AF_INET or socket.AF_INET6
    packed: bytes
    scope: str = ""  # an IPv6 zone: fe80::1%eth0

    @property
    def is_unspecified(self) -> bool:
        """0.0.0.0 or ::, the wildcard address."""
        return not any(self.packed)


def ip_of(host: str) -> IP | None:
    """``host`` as an IP address (``localhost`` as 127.0.0.1); None for a host name."""
    address, percent, scope = ("127.0.0.1" if host == "localhost" else host).partition("%")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, address)
        except (OSError, ValueError):  # OSError: not of this family; ValueError: a NUL in it
            continue
        if percent and (family == socket.AF_INET or not scope):  # only IPv6 has zones, and they have names
            return None
        return IP(family, packed, scope)
    return None


def overlap(a: str, b: str) -> bool:
    """Whether two bind addresses name the same socket address, so one process cannot bind both.

    The same port on a wildcard address (``0.0.0.0``, ``[::]``) and on one address of the
    same family overlap; ``0.0.0.0`` and ``[::]`` do not (corral binds ``[::]`` IPv6-only).
    Port 0 (any free port) never overlaps.
    """
    x, y = parse_address(a), parse_address(b)
    if x.kind != y.kind:
        return False
    if x.kind == AddressKind.UNIX:
        return x.path == y.path
    if x.kind == AddressKind.FD:
        return x.fd == y.fd
    if x.port != y.port or x.port == 0:
        return False
    hx, hy = ip_of(x.host), ip_of(y.host)
    if hx is None or hy is None:  # a host name: only the same name is known to clash
        return x.host == y.host
    return hx == hy or (hx.family == hy.family and (hx.is_unspecified or hy.is_unspecified))
