"""systemd's file descriptor store: listening sockets that survive ``systemctl restart``.

With a socket unit, PID 1 owns the listeners and a restart never refuses a
connection. Without one, corral binds its sockets itself; it then parks a copy
of each in PID 1's fd store (``FDSTORE=1`` + ``FDNAME=corral-<role>``, the fd
passed with SCM_RIGHTS). During a restart PID 1 keeps those copies open, so
the kernel keeps queueing connections, and hands them back to the next start
in ``LISTEN_FDS`` (after any socket unit's fds) under the names we gave.

The unit needs ``FileDescriptorStoreMax=`` (one per listening socket, e.g. 16);
without it systemd 252 drops the fds silently (254+ exports ``$FDSTORE`` with
the limit, which is checked when present). ``systemctl stop`` empties the store
(``FileDescriptorStorePreserve=yes``, systemd 254+, keeps it).

A restart whose config lists other addresses than the stored sockets binds the
new ones and removes the others from the store (``FDSTOREREMOVE=1``).
"""

from __future__ import annotations

import array
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Mapping

from corral.config import BindSpec
from corral.supervisor.addresses import Address, parse_address
from corral.supervisor.sockets import Listener, Listeners, bind_all

log = logging.getLogger("corral.fdstore")

NAME_PREFIX = "corral-"  # FDNAME=corral-http, corral-metrics: ours (a socket unit's names never start so)
SOURCE = "fdstore"


def _notify_address(environ: Mapping[str, str]) -> str | None:
    value = environ.get("NOTIFY_SOCKET") or ""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def send_with_fds(message: str, fds: Iterable[int], environ: Mapping[str, str] | None = None) -> bool:
    """One sd_notify datagram carrying ``fds`` (SCM_RIGHTS); False when there is no notify socket."""
    address = _notify_address(os.environ if environ is None else environ)
    if address is None:
        return False
    fds = list(fds)
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # sendmsg to the address: socket.send_fds() ignores its address before Python 3.13.
        sock.sendmsg([message.encode()], ancillary, 0, address)
    return True


def store_limit(environ: Mapping[str, str] | None = None) -> int | None:
    """``$FDSTORE`` (systemd >= 254): how many fds the store takes; None when unknown (252)."""
    value = (os.environ if environ is None else environ).get("FDSTORE", "")
    return int(value) if value.isdigit() else None


def store(listeners: Listeners, environ: Mapping[str, str] | None = None) -> int:
    """Park every socket corral bound itself in systemd's fd store; returns how many were sent.

    A stored unix socket must outlive this process with its path, so it is no
    longer unlinked on exit.
    """
    environ = os.environ if environ is None else environ
    if _notify_address(environ) is None:
        return 0
    mine = [item for item in listeners.items if item.source == "bound"]
    if not mine:
        return 0
    limit = store_limit(environ)
    if limit == 0:
        log.info("not storing listening sockets: FileDescriptorStoreMax= is 0 (set it, e.g. to 16, so that "
                 "`systemctl restart` refuses no connection)")
        return 0
    sent = 0
    for item in mine:
        name = NAME_PREFIX + item.role
        try:
            send_with_fds(f"FDSTORE=1\nFDNAME={name}", [item.fd], environ)
        except OSError as exc:
            log.error("FDSTORE of %s failed: %s; `systemctl restart` will refuse connections briefly",
                      item.address, exc)
            continue
        item.name = name  # its source stays "bound"; the next start gets it back as "fdstore"
        item.unlink_path = None
        sent += 1
    log.info("stored %d listening socket%s in systemd's fd store (they survive `systemctl restart` if the "
             "unit sets FileDescriptorStoreMax=)", sent, "" if sent == 1 else "s")
    return sent


def remove(name: str, environ: Mapping[str, str] | None = None) -> None:
    """Drop every fd stored under ``name`` (FDSTOREREMOVE=1)."""
    try:
        send_with_fds(f"FDSTOREREMOVE=1\nFDNAME={name}", [], environ)
    except OSError as exc:
        log.error("FDSTOREREMOVE of %s failed: %s", name, exc)


def adopt(listeners: Listeners) -> list[Listener]:
    """Mark the sockets systemd handed back from our fd store (by name); returns them.

    Their role comes from the name (``corral-http``), whatever LISTEN_FDNAMES
    parsing guessed.
    """
    stored = []
    for item in listeners.items:
        if item.name.startswith(NAME_PREFIX):
            item.source = SOURCE
            role = item.name[len(NAME_PREFIX):]
            item.role = role if role in ("http", "metrics") else "http"
            stored.append(item)
    return stored


def reconcile(listeners: Listeners, specs: Iterable[BindSpec], backlog: int, *, reuse_port: bool = False,
              slots: int = 1, environ: Mapping[str, str] | None = None) -> None:
    """Make the stored http sockets match ``bind:``: keep what matches, bind the rest, drop the others.

    Only when every http socket came from our fd store: sockets of a socket unit
    are the unit's business (``bind:`` is ignored then).
    """
    http = listeners.http()
    if not http or any(item.source != SOURCE for item in http):
        return
    specs = list(specs)
    wanted: list[BindSpec] = []
    kept: set[int] = set()
    for spec in specs:
        matches = [item for item in http if _matches(item, parse_address(spec.address))]
        if matches:
            kept.update(id(item) for item in matches)
        else:
            wanted.append(spec)
    stale = [item for item in http if id(item) not in kept]
    if not wanted and not stale:
        return
    if stale:
        # Closed before binding: the new address may overlap the old one (127.0.0.1:8000 -> 0.0.0.0:8000).
        # FDSTOREREMOVE goes by name and every http socket shares one: drop them all, re-store the kept.
        remove(NAME_PREFIX + "http", environ)
        for item in stale:
            log.info("no longer listening on %s (not in bind: any more)", item.address)
            listeners.items.remove(item)
            item.close()
        for item in listeners.http():
            item.source = "bound"
    fresh = bind_all(wanted, backlog, reuse_port=reuse_port, slots=slots) if wanted else Listeners()
    listeners.items.extend(fresh.items)
    for item in fresh.items:
        log.info("listening on %s (new in bind:)", item.address)
    store(listeners, environ)


def _matches(item: Listener, address: Address) -> bool:
    sock = item.sock
    try:
        name = sock.getsockname()
    except OSError:
        return False
    if address.kind == "unix":
        if sock.family != socket.AF_UNIX:
            return False
        if isinstance(name, bytes):
            name = "@" + name[1:].decode("utf-8", "replace") if name[:1] == b"\0" else name.decode()
        return name == address.path
    if address.kind != "tcp" or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    if address.port != name[1]:
        return False
    host = "127.0.0.1" if address.host == "localhost" else address.host
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(name[0])
    except ValueError:
        try:
            resolved = {info[4][0] for info in socket.getaddrinfo(host, address.port, sock.family,
                                                                  socket.SOCK_STREAM)}
        except OSError:
            return False
        return name[0] in resolved
