"""The listening sockets: where corral gets them, in the order it looks.

:func:`acquire` is the one entry point (``corral run``); this module reads top-down
in the order it works:

1. **systemd passed sockets** (``LISTEN_FDS``, :func:`from_systemd`). They are
   either a socket unit's, kept exactly as systemd made them (no listen() call,
   which would override the unit's Backlog=; no option changes; never closed
   early or unlinked: PID 1 owns them and keeps their queue across restarts), and
   ``bind:`` is ignored; or, when all are named ``corral-*``, our own sockets
   handed back from systemd's fd store after a restart (:func:`_adopt_stored`),
   made to match ``bind:`` and ``metrics_bind:`` (:func:`_reconcile`).
2. **Nothing passed**: bind ``bind:`` and ``metrics_bind:`` ourselves
   (:func:`bind_all`), with errors that name the fix.
3. **Park what we bound in systemd's fd store** (:func:`store`): without a socket
   unit, PID 1 then keeps a copy open through ``systemctl restart`` (``FDSTORE=1``
   + ``FDNAME=corral-<role>``, the fd passed with SCM_RIGHTS), so the kernel keeps
   queueing connections, and hands it back to the next start in ``LISTEN_FDS``
   (after any socket unit's fds) under the name we gave. The unit needs
   ``FileDescriptorStoreMax=`` (one per listening socket, e.g. 16); without it
   systemd 252 drops the fds silently (254+ exports ``$FDSTORE`` with the limit,
   which is checked when present). ``systemctl stop`` empties the store
   (``FileDescriptorStorePreserve=yes``, systemd 254+, keeps it).

After start-up the supervisor calls :func:`bind_reuse_port_group` (TTIN with
``reuse_port``), an in-place re-exec passes the sockets on with
:meth:`Listeners.handover` / :meth:`Listeners.from_handover`, and the workers get
an environment without systemd's variables (:func:`env_without_systemd`).
"""

from __future__ import annotations

import array
import enum
import errno
import fcntl
import grp
import logging
import os
import pwd
import socket
import stat
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from corral.addresses import Address, AddressKind, ip_of, overlap, parse_address
from corral.config import BindSpec, Config, metrics_overlap_message

log = logging.getLogger("corral.listeners")

SD_LISTEN_FDS_START = 3
STORE_PREFIX = "corral-"  # FDNAME=corral-http, corral-metrics: ours (a socket unit's names never start so)


class SocketError(Exception):
    """A listening socket could not be set up; the message names the fix."""


class Role(enum.StrEnum):
    HTTP = "http"  # the app's traffic
    METRICS = "metrics"  # the supervisor's /metrics responder (systemd name ``metrics``)
    HEALTH = "health"  # the supervisor's /livez and /readyz only (systemd name ``health``)
    AGENT = "agent"  # the supervisor's HAProxy agent-check answers (systemd name ``agent``)


# The roles the supervisor serves itself (never passed to a worker), by their systemd name.
SUPERVISOR_ROLES = (Role.METRICS, Role.HEALTH, Role.AGENT)


def supervisor_binds(config: Config) -> dict[Role, tuple[BindSpec, ...]]:
    """The addresses each supervisor-served role binds when systemd passes no socket of that name."""
    return {Role.METRICS: config.metrics_bind, Role.HEALTH: config.health_bind, Role.AGENT: config.agent_bind}


def _role_of(label: str) -> Role:
    return Role(label) if label in SUPERVISOR_ROLES else Role.HTTP


class Source(enum.StrEnum):
    SYSTEMD = "systemd"  # a socket unit's, passed in LISTEN_FDS
    FDSTORE = "fdstore"  # ours, handed back from systemd's fd store after a restart
    BOUND = "bound"  # bound by this process from bind:/metrics_bind:
    INHERITED = "inherited"  # ``fd:N`` in bind:, open when corral started


@dataclass
class Listener:
    sock: socket.socket
    role: Role
    source: Source
    name: str = ""  # systemd's FileDescriptorName, or ours once stored (corral-http)
    unlink_path: str | None = None  # unix socket node we created and must remove on exit
    group: int = 0  # reuse_port group: the worker slot it belongs to (0: shared by all)

    def __post_init__(self) -> None:
        # Never on fds 0-2: a worker starts with /dev/null on its stdin and our stdout and
        # stderr, which would replace the listener it inherits there (``fd:0``, or a socket
        # opened while the standard fds were closed).
        self.sock = _above_stdio(self.sock)

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def address(self) -> str:
        return describe(self.sock)

    def close(self) -> None:
        if self.unlink_path:
            try:
                os.unlink(self.unlink_path)
            except FileNotFoundError:
                pass  # already gone: what close() wants
            except OSError as exc:
                log.warning("cannot remove %s: %s", self.unlink_path, exc)
        self.sock.close()


@dataclass
class Listeners:
    items: list[Listener] = field(default_factory=list)
    from_systemd: bool = False  # a socket unit's: bind: is ignored and nothing is stored

    def http(self) -> list[Listener]:
        return self.role(Role.HTTP)

    def role(self, role: str) -> list[Listener]:
        return [item for item in self.items if item.role == role]

    def for_slot(self, slot: int, slots: int) -> list[Listener]:
        """The http listeners a worker in ``slot`` gets.

        Shared sockets (group 0) go to every worker. With several reuse-port
        groups (one socket per slot, from N ListenStream= lines with ReusePort=yes or
        from ``reuse_port: true``), slot i gets group i modulo the number of groups.
        """
        http = self.http()
        groups = sorted({item.group for item in http if item.group})
        if not groups:
            return http
        wanted = groups[slot % len(groups)]
        return [item for item in http if item.group in (0, wanted)]

    def close(self) -> None:
        for item in self.items:
            item.close()
        self.items.clear()

    def handover(self) -> dict[str, Any]:
        """What an in-place re-exec passes to the new image (JSON; the fds stay open across exec)."""
        return {"from_systemd": self.from_systemd,
                "items": [{"fd": item.fd, "role": item.role, "source": item.source, "name": item.name,
                           "unlink_path": item.unlink_path, "group": item.group} for item in self.items]}

    @classmethod
    def from_handover(cls, data: Mapping[str, Any]) -> Listeners:
        """The listeners of the previous image, from :meth:`handover`'s JSON."""
        listeners = cls(from_systemd=bool(data["from_systemd"]))
        for item in data["items"]:
            sock = socket.socket(fileno=item["fd"])
            os.set_inheritable(item["fd"], False)
            listeners.items.append(Listener(sock, Role(item["role"]), Source(item["source"]),
                                            name=item["name"] or "", unlink_path=item["unlink_path"],
                                            group=int(item["group"] or 0)))
        return listeners


# --------------------------------------------------------------------------- the entry point


def acquire(config: Config, environ: MutableMapping[str, str] | None = None) -> Listeners:
    """The listening sockets: a socket unit's, our own handed back by systemd's fd store, or bound now.

    Raises SocketError (its message names the fix). ``environ`` (os.environ by default)
    loses its LISTEN_* variables, so that neither the workers nor the app see them.
    """
    environ = os.environ if environ is None else environ
    passed = from_systemd(environ)
    if passed is None:
        binds = supervisor_binds(config)
        listeners = bind_all(config.bind, config.backlog, reuse_port=config.reuse_port, slots=config.workers,
                             metrics=binds.pop(Role.METRICS), others=binds)
    elif _adopt_stored(passed):
        # Only sockets we bound ourselves before a restart: they are ours, and bind: applies.
        listeners = passed
        listeners.from_systemd = False
        log.info("took %d listening socket(s) back from systemd's fd store", len(listeners.items))
        _reconcile(listeners, config, environ)
    else:
        listeners = passed
        if "bind" in config.explicit:
            log.info("using the %d socket(s) passed by systemd; bind: is ignored", len(listeners.items))
        for role, specs in supervisor_binds(config).items():
            # A supervisor listener the socket unit does not name is bound from its key.
            if specs and not listeners.role(role):
                listeners.items.extend(bind_all([], config.backlog, others={role: specs}).items)
    if not listeners.from_systemd:
        store(listeners, environ)
    return listeners


# --------------------------------------------------------------------------- 1. from systemd


def from_systemd(environ: MutableMapping[str, str] | None = None) -> Listeners | None:
    """Adopt the sockets systemd passed (sd_listen_fds), or None if there are none for us.

    The LISTEN_* variables are removed from the environment in any case, so that
    neither the workers nor the app see them.
    """
    environ = os.environ if environ is None else environ
    pid, count, names = (environ.pop(k, None) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    environ.pop("LISTEN_PIDFDID", None)
    if pid is None or count is None:
        return None
    if not pid.isdigit() or int(pid) != os.getpid():
        log.warning("ignoring LISTEN_FDS: LISTEN_PID=%s is not our pid %d", pid, os.getpid())
        return None
    if not count.isdigit():
        raise SocketError(f"LISTEN_FDS={count!r} is not a number; check the socket unit")
    labels = names.split(":") if names else []
    listeners = Listeners(from_systemd=True)
    for i in range(int(count)):
        label = labels[i] if i < len(labels) else "unknown"
        sock = _listening_socket(SD_LISTEN_FDS_START + i, label)
        listeners.items.append(Listener(sock, _role_of(label), Source.SYSTEMD, name=label))
    _group_reuse_port(listeners.http())
    return listeners


def _listening_socket(fd: int, label: str) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SocketError(f"LISTEN_FDS: fd {fd} ({label}) is not a socket: {exc.strerror}") from None
    os.set_inheritable(fd, False)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SocketError(f"LISTEN_FDS: fd {fd} ({label}) is not a listening stream socket; "
                          "use ListenStream= in the socket unit")
    return sock


def _group_reuse_port(http: list[Listener]) -> None:
    """N identical ListenStream= lines with ReusePort=yes: one queue per worker slot, numbered 1..N.

    A lone reuse-port socket is just a shared socket (group 0)."""
    counts: dict[str, int] = {}
    for item in http:
        if item.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            counts[item.address] = counts.get(item.address, 0) + 1
            item.group = counts[item.address]
    if max(counts.values(), default=0) < 2:
        for item in http:
            item.group = 0


def _adopt_stored(listeners: Listeners) -> bool:
    """Mark the sockets systemd handed back from our fd store (by name); whether all are ours.

    Their role comes from the name (``corral-http``), whatever the LISTEN_FDNAMES
    parsing guessed.
    """
    stored = [item for item in listeners.items if item.name.startswith(STORE_PREFIX)]
    for item in stored:
        item.source = Source.FDSTORE
        item.role = _role_of(item.name[len(STORE_PREFIX):])
    return bool(stored) and len(stored) == len(listeners.items)


def _reconcile(listeners: Listeners, config: Config, environ: Mapping[str, str]) -> None:
    """Make the stored sockets match ``bind:`` and ``metrics_bind:``: keep what matches,
    bind the rest, drop the others (FDSTOREREMOVE goes by name: every socket of the role)."""
    for role, specs in ((Role.HTTP, config.bind), *supervisor_binds(config).items()):
        current = listeners.role(role)
        kept = [item for item in current if any(_matches(item, parse_address(spec.address)) for spec in specs)]
        wanted = [spec for spec in specs if not any(_matches(item, parse_address(spec.address)) for item in current)]
        stale = [item for item in current if item not in kept]
        if stale:
            # Closed before binding: the new address may overlap the old one (127.0.0.1:8000 -> 0.0.0.0:8000).
            # Every socket of a role shares one name: drop them all from the store, re-store the kept.
            remove(STORE_PREFIX + role, environ)
            for item in stale:
                log.info("no longer listening on %s (not in %s any more)", item.address, _key(role))
                listeners.items.remove(item)
                item.close()
            for item in kept:
                item.source = Source.BOUND
        if wanted:
            fresh = (bind_all(wanted, config.backlog, reuse_port=config.reuse_port, slots=config.workers)
                     if role == Role.HTTP else bind_all([], config.backlog, others={role: wanted}))
            listeners.items.extend(fresh.items)
            for item in fresh.items:
                log.info("listening on %s (new in %s)", item.address, _key(role))


def _key(role: Role) -> str:
    return "bind:" if role == Role.HTTP else f"{role.value}_bind:"


def _matches(item: Listener, address: Address) -> bool:
    """Whether a socket is bound to ``address`` (a host name: to one of its addresses)."""
    sock = item.sock
    try:
        name = sock.getsockname()
    except OSError:
        return False
    if address.kind == AddressKind.UNIX:
        return sock.family == socket.AF_UNIX and _unix_name(name) == address.path
    if address.kind != AddressKind.TCP or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    if address.port != name[1]:
        return False
    ip = ip_of(address.host)
    if ip is not None:
        return ip == ip_of(name[0])
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(address.host, address.port, sock.family,
                                                              socket.SOCK_STREAM)}
    except OSError:
        return False
    return name[0] in resolved


# --------------------------------------------------------------------------- 2. binding ourselves


def bind_all(specs: Iterable[BindSpec], backlog: int, *, reuse_port: bool = False, slots: int = 1,
             metrics: Iterable[BindSpec] = (), others: Mapping[Role, Iterable[BindSpec]] | None = None
             ) -> Listeners:
    """Bind every configured address; on any failure close what was bound and raise SocketError.

    ``metrics`` and ``others`` (health, agent) are the supervisor's own listeners."""
    specs, metrics = list(specs), list(metrics)
    served = [(role, spec) for role, role_specs in (others or {}).items() for spec in role_specs]
    for role, spec in served:
        clash = next((app for app in specs if overlap(spec.address, app.address)), None)
        if clash is not None:
            raise SocketError(f"{role.value}_bind: {spec.address!r} overlaps {clash.address!r} in bind: the "
                              f"{role.value} listener needs an address of its own; use another port")
    for spec in metrics:
        # Config validation checks an explicit bind list; this catches the default one, which
        # would otherwise fail with "address in use" naming corral's own pid.
        clash = next((app for app in specs if overlap(spec.address, app.address)), None)
        if clash is not None:
            raise SocketError(f"metrics_bind: {metrics_overlap_message(spec.address, clash.address)}")
    listeners = Listeners()
    try:
        for spec in specs:
            address = parse_address(spec.address)
            if reuse_port and address.kind == AddressKind.TCP:
                for slot in range(slots):
                    listeners.items.append(_bind(spec, address, backlog, Role.HTTP, reuse_port=True, group=slot + 1))
            else:
                listeners.items.append(_bind(spec, address, backlog, Role.HTTP))
        for spec in metrics:
            listeners.items.append(_bind(spec, parse_address(spec.address), backlog, Role.METRICS))
        for role, spec in served:
            listeners.items.append(_bind(spec, parse_address(spec.address), backlog, role))
    except BaseException:
        listeners.close()
        raise
    return listeners


def bind_reuse_port_group(listeners: Listeners, specs: Iterable[BindSpec], backlog: int, group: int) -> None:
    """Add one more SO_REUSEPORT socket per TCP address, for a new worker slot (TTIN)."""
    for spec in specs:
        address = parse_address(spec.address)
        if address.kind == AddressKind.TCP:
            listeners.items.append(_bind(spec, address, backlog, Role.HTTP, reuse_port=True, group=group))


def _bind(spec: BindSpec, address: Address, backlog: int, role: Role, *, reuse_port: bool = False,
          group: int = 0) -> Listener:
    if address.kind == AddressKind.FD:
        return _inherited(address.fd, role)
    if address.kind == AddressKind.UNIX:
        return _bind_unix(spec, address, backlog, role)
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # [::]:8000 means IPv6 only, as in nginx; list 0.0.0.0:8000 too for IPv4.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((address.bind_host, address.port))
        except OSError as exc:
            raise SocketError(bind_error_message(address, exc)) from None
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return Listener(sock, role, Source.BOUND, group=group)


def _bind_unix(spec: BindSpec, address: Address, backlog: int, role: Role) -> Listener:
    path = address.path
    abstract = path.startswith("@")
    target: str | bytes = ("\0" + path[1:]).encode() if abstract else path
    if not abstract:
        _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(target)
        except OSError as exc:
            raise SocketError(bind_error_message(address, exc)) from None
        if not abstract:
            if spec.mode is not None:
                os.chmod(path, spec.mode)
            if spec.owner is not None or spec.group is not None:
                os.chown(path, _uid(spec.owner), _gid(spec.group))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        if not abstract:
            try:
                os.unlink(path)
            except OSError:
                pass  # bind() failed before creating it: nothing of ours to remove
        raise
    return Listener(sock, role, Source.BOUND, unlink_path=None if abstract else path)


def _remove_stale_unix_socket(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError(f"bind unix:{path}: the path exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover from a crash
        return
    finally:
        probe.close()
    raise SocketError(f"bind unix:{path}: another process is listening on it"
                      f"{_owner_hint_unix(path)}; stop it, or choose another path")


def _inherited(fd: int, role: Role) -> Listener:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SocketError(f"bind fd:{fd}: not an open socket ({exc.strerror})") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SocketError(f"bind fd:{fd}: not a listening stream socket")
    os.set_inheritable(fd, False)
    return Listener(sock, role, Source.INHERITED)


def _uid(owner: str | None) -> int:
    if owner is None:
        return -1
    if owner.isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise SocketError(f"unix socket owner {owner!r} is not a user on this system") from None


def _gid(group: str | None) -> int:
    if group is None:
        return -1
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SocketError(f"unix socket group {group!r} is not a group on this system") from None


def bind_error_message(address: Address, exc: OSError) -> str:
    """Turn a bind() failure into a message that says what to do about it."""
    if exc.errno == errno.EADDRINUSE:
        who = _owner_hint_tcp(address.port) if address.kind == AddressKind.TCP else _owner_hint_unix(address.path)
        return (f"bind {address}: address already in use{who}; stop that process, or choose another "
                "address with --bind (is another corral running? see `systemctl status`)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        if address.kind == AddressKind.TCP and 0 < address.port < 1024:
            return (f"bind {address}: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
                    "let systemd bind it with a socket unit (see units/app.socket: ListenStream="
                    f"{address}), or use a port >= 1024 behind a proxy")
        return f"bind {address}: permission denied; check the directory's permissions or run as another user"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"bind {address}: {address.host} is not an address of this machine; "
                "use 0.0.0.0 / [::] for all interfaces, or FreeBind=yes in a socket unit")
    if exc.errno == errno.ENOENT and address.kind == AddressKind.UNIX:
        return f"bind {address}: directory {os.path.dirname(address.path)} does not exist; create it first"
    return f"bind {address}: {exc.strerror or exc}"


def _owner_hint_tcp(port: int) -> str:
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f" by pid {conn.pid} ({_cmdline(conn.pid)})"
    except Exception as exc:  # noqa: BLE001  psutil needs /proc access (AccessDenied, ...); the hint is best effort
        log.debug("cannot find the owner of port %d: %s", port, exc)
    return ""


def _owner_hint_unix(path: str) -> str:
    try:
        import psutil

        for conn in psutil.net_connections(kind="unix"):
            laddr: object = conn.laddr  # a path for unix sockets (psutil's stubs know only inet)
            if laddr == path and conn.pid:
                return f" (pid {conn.pid}: {_cmdline(conn.pid)})"
    except Exception as exc:  # noqa: BLE001  psutil needs /proc access (AccessDenied, ...); the hint is best effort
        log.debug("cannot find the owner of %s: %s", path, exc)
    return ""


def _cmdline(pid: int) -> str:
    try:
        import psutil

        cmd = " ".join(psutil.Process(pid).cmdline())
        return cmd[:120] or psutil.Process(pid).name()
    except Exception:  # noqa: BLE001  the process may be gone or hidden; the hint is best effort
        return "unknown command"


# --------------------------------------------------------------------------- 3. systemd's fd store


def store(listeners: Listeners, environ: Mapping[str, str] | None = None) -> int:
    """Park every socket corral bound itself in systemd's fd store; returns how many were sent.

    A stored unix socket must outlive this process with its path, so it is no
    longer unlinked on exit.
    """
    environ = os.environ if environ is None else environ
    if _notify_address(environ) is None:
        return 0
    mine = [item for item in listeners.items if item.source == Source.BOUND]
    if not mine:
        return 0
    if store_limit(environ) == 0:
        log.info("not storing listening sockets: FileDescriptorStoreMax= is 0 (set it, e.g. to 16, so that "
                 "`systemctl restart` refuses no connection)")
        return 0
    sent = 0
    for item in mine:
        name = STORE_PREFIX + item.role
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


def store_limit(environ: Mapping[str, str] | None = None) -> int | None:
    """``$FDSTORE`` (systemd >= 254): how many fds the store takes; None when unknown (252)."""
    value = (os.environ if environ is None else environ).get("FDSTORE", "")
    return int(value) if value.isdigit() else None


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


def _notify_address(environ: Mapping[str, str]) -> str | None:
    value = environ.get("NOTIFY_SOCKET") or ""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


# --------------------------------------------------------------------------- fds and names


def secure_standard_fds() -> None:
    """Open /dev/null on any of fds 0-2 that is closed; call it first thing in ``corral run``.

    Started with stdin or stdout closed (``corral run <&-``), the next file corral opens
    takes that number: a listening socket on fd 0 is then replaced by /dev/null in
    every worker (started with ``stdin=/dev/null``), and one on fd 1 by our stdout.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # EBADF: closed
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one, or a lower closed one
            if null != fd:
                os.dup2(null, fd)  # inheritable, as a standard fd is
                os.close(null)
            else:  # a standard fd survives an exec (the supervisor's image: corral.supervisor.launch)
                os.set_inheritable(fd, True)
    # Python leaves sys.stdout/sys.stderr None for a standard fd that was closed at start-up.
    # They live as long as the process: a context manager would close them at once.
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False, errors="backslashreplace")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")  # noqa: SIM115


def _above_stdio(sock: socket.socket) -> socket.socket:
    """``sock`` moved to an fd above 2 (close-on-exec), with /dev/null left in its old place."""
    fd = sock.fileno()
    if fd < 0 or fd > 2:
        return sock
    lifted = socket.socket(fileno=fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
    sock.detach()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, fd)  # atomically replaces the socket's old number: 0-2 stay open
    os.close(null)
    return lifted


def describe(sock: socket.socket) -> str:
    """A human-readable address: ``127.0.0.1:8000``, ``[::]:8000``, ``unix:/run/app.sock``."""
    try:
        name = sock.getsockname()
    except OSError:
        return f"fd:{sock.fileno()}"
    if sock.family == socket.AF_UNIX:
        path = _unix_name(name)
        return f"unix:{path}" if path else "unix:(unnamed)"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def _unix_name(name: str | bytes) -> str:
    """A unix socket's getsockname() as written in bind: (``@name`` for the abstract namespace)."""
    if isinstance(name, bytes):
        return "@" + name[1:].decode("utf-8", "replace") if name[:1] == b"\0" else name.decode()
    return name


def env_without_systemd(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a worker gets: no NOTIFY_SOCKET, WATCHDOG_* or LISTEN_*."""
    return {k: v for k, v in environ.items()
            if k != "NOTIFY_SOCKET" and not k.startswith(("WATCHDOG_", "LISTEN_"))}
