"""Proxy headers: who the client really is when a trusted proxy forwards the request.

The headers named in ``forwarded_headers`` are believed only when the direct
peer is trusted (``forwarded_allow_ips``). Within the forwarded chain the
right-most *untrusted* hop is the client: every hop to its right was added by a
proxy we trust, every hop to its left was written by the client and may be a lie.

Only ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed by default, as
by gunicorn and uvicorn. A proxy appends to or overwrites those two, but most
pass a client's own ``X-Forwarded-Host`` and ``Forwarded`` through untouched
(nginx does, unless told otherwise): believing them by default would let any
client choose the Host the app builds absolute URLs with, and its address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The proxy headers corral understands, and those it believes unless told otherwise.
PROXY_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")
DEFAULT_FORWARDED_HEADERS = ("x-forwarded-for", "x-forwarded-proto")


class TrustedPeers:
    """The peers allowed to set proxy headers (with a memoised lookup), and which headers they may set."""

    def __init__(self, entries: Iterable[str], headers: Iterable[object] = DEFAULT_FORWARDED_HEADERS) -> None:
        # headers: checked one by one (they come from YAML), so any object is taken.
        names = []
        for name in headers:
            if not isinstance(name, str) or name.strip().lower() not in PROXY_HEADERS:
                raise ValueError(f"forwarded_headers: {name!r} is not one of {', '.join(PROXY_HEADERS)}")
            names.append(name.strip().lower().encode("latin-1"))
        self.headers: frozenset[bytes] = frozenset(names)
        self.any = False
        self.unix = False
        self._networks: list[_Network] = []
        # The memo of trusts(): each entry that names one host is in it from the start, so a peer
        # at a trusted address (what a peer's address is: the kernel's canonical form) is
        # answered without ipaddress's code, which a forked worker would otherwise run, and copy.
        self._cache: dict[str, bool] = {}
        for entry in entries:
            if not isinstance(entry, str):
                raise ValueError(f"forwarded_allow_ips: {entry!r} is not a string")
            item = entry.strip()
            if item == "*":
                self.any = True
            elif item == "unix":
                self.unix = True
            else:
                try:
                    network = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(
                        f"forwarded_allow_ips: {entry!r} is not an IP address, a CIDR network, "
                        "'unix' or '*'") from None
                self._networks.append(network)
                if network.prefixlen == network.max_prefixlen:
                    self._cache[str(network.network_address)] = True

    def __bool__(self) -> bool:
        return self.any or self.unix or bool(self._networks)

    def trusts(self, host: str | None) -> bool:
        """Whether ``host`` (an IP string, or None for a unix-socket peer) is trusted."""
        if self.any:
            return True
        if host is None:
            return self.unix
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            result = False
        else:
            mapped = getattr(addr, "ipv4_mapped", None)
            result = any(addr in net or (mapped is not None and mapped in net) for net in self._networks)
        if len(self._cache) < 4096:
            self._cache[host] = result
        return result


# TrustedPeers by (forwarded_allow_ips, forwarded_headers): see trusted_peers(). A process has one
# config, or a few (tests): past the bound, the oldest parse is dropped.
_PARSED: dict[tuple[tuple[Any, ...], tuple[Any, ...]], TrustedPeers] = {}
_PARSED_MAX = 16


def trusted_peers(entries: Iterable[str], headers: Iterable[object] = DEFAULT_FORWARDED_HEADERS) -> TrustedPeers:
    """``TrustedPeers(entries, headers)``, parsed once per process and shared (it raises as the class does).

    EngineSettings parses its ``forwarded_allow_ips`` when it is validated, and the engine's context
    finds the result here. For a worker forked from a zygote, that parse ran in the zygote, which
    built the workers' settings before the fork: the worker runs none of ipaddress's code, which
    would copy the pages it and its objects sit on (about 1 MiB of the hello world tree with 4
    workers). The lookups a worker adds to the memo of ``trusts()`` stay its own (copied on write).
    """
    entries, headers = tuple(entries), tuple(headers)
    key = (entries, headers)
    try:
        peers = _PARSED.get(key)
    except TypeError:  # an unhashable entry: the class names it in its ValueError
        return TrustedPeers(entries, headers)
    if peers is None:
        peers = _PARSED[key] = TrustedPeers(entries, headers)
        if len(_PARSED) > _PARSED_MAX:
            del _PARSED[next(iter(_PARSED))]
    return peers


def _split_list(values: list[bytes]) -> list[str]:
    """Join repeated header lines and split the comma list (RFC 9110 list semantics)."""
    items: list[str] = []
    for value in values:
        for part in value.decode("latin-1").split(","):
            part = part.strip()
            if part:
                items.append(part)
    return items


def _parse_node(node: str) -> tuple[str, int] | None:
    """``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80`` or ``::1`` → (host, port); None if not an address."""
    node = node.strip().strip('"')
    port = 0
    if node.startswith("["):
        host, _, rest = node[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif node.count(":") == 1:
        host, _, p = node.partition(":")
        if p.isdigit():
            port = int(p)
    else:
        host = node
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


def _parse_forwarded(values: list[bytes]) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` → one dict of lower-cased parameters per hop."""
    hops: list[dict[str, str]] = []
    for value in values:
        for element in value.decode("latin-1").split(","):
            params: dict[str, str] = {}
            for pair in element.split(";"):
                key, sep, val = pair.partition("=")
                if sep:
                    params[key.strip().lower()] = val.strip().strip('"')
            hops.append(params)
    return hops


def apply_proxy_headers(scope: dict[str, Any], trusted: TrustedPeers) -> None:
    """Rewrite ``client``, ``scheme`` and the ``host`` header from trusted proxy headers.

    Called only when the direct peer is trusted and the request carries at least
    one proxy header (not on the hot path otherwise).
    """
    forwarded: list[bytes] = []
    xff: list[bytes] = []
    xfp: list[bytes] = []
    xfh: list[bytes] = []
    believed = trusted.headers
    for name, value in scope["headers"]:
        if name not in believed:
            continue
        if name == b"forwarded":
            forwarded.append(value)
        elif name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"x-forwarded-proto":
            xfp.append(value)
        elif name == b"x-forwarded-host":
            xfh.append(value)

    client: tuple[str, int] | None = None
    proto: str | None = None
    host: str | None = None
    if forwarded:
        hops = _parse_forwarded(forwarded)
        chosen: dict[str, str] | None = None
        for hop in reversed(hops):
            node = _parse_node(hop.get("for", ""))
            chosen = hop
            if node is None or not trusted.trusts(node[0]):
                break
        if chosen is not None:
            client = _parse_node(chosen.get("for", ""))
            proto = chosen.get("proto")
            host = chosen.get("host")
    else:
        hosts = _split_list(xff)
        index = -1
        for index in range(len(hosts) - 1, -1, -1):
            node = _parse_node(hosts[index])
            if node is None or not trusted.trusts(node[0]):
                break
        if hosts:
            client = _parse_node(hosts[index])
        protos = _split_list(xfp)
        if protos:
            # A proxy chain appends one proto per hop, aligned with X-Forwarded-For;
            # otherwise the last value is the one our trusted proxy set.
            proto = protos[index] if len(protos) == len(hosts) and hosts else protos[-1]
        hosts_h = _split_list(xfh)
        if hosts_h:
            host = hosts_h[index] if len(hosts_h) == len(hosts) and hosts else hosts_h[-1]

    if client is not None:
        scope["client"] = client
    if proto:
        proto = proto.lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto
    if host and all(33 <= ord(c) < 127 for c in host):
        encoded = host.encode("latin-1")
        scope["headers"] = [(n, encoded if n == b"host" else v) for n, v in scope["headers"]]
