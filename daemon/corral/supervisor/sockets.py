"""The listening sockets: taken from systemd (LISTEN_FDS) or bound from the config.

Sockets from systemd are kept exactly as systemd made them: no listen() call (it
would override the socket unit's Backlog=), no option changes, and never closed
early or unlinked, because PID 1 owns them and keeps their queue across restarts.
"""

from __future__ import annotations

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

from corral.config import BindSpec, metrics_overlap_message
from corral.supervisor.addresses import Address, overlap, parse_address

log = logging.getLogger("corral.sockets")

SD_LISTEN_FDS_START = 3
ROLES = ("http", "metrics")


class SocketError(Exception):
    """A listening socket could not be set up; the message names the fix."""


@dataclass
class Listener:
    sock: socket.socket
    role: str  # "http" or "metrics"
    source: str  # "systemd", "bound" or "inherited"
    name: str = ""  # systemd's FileDescriptorName
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
            except OSError:
                pass
        self.sock.close()


@dataclass
class Listeners:
    items: list[Listener] = field(default_factory=list)
    from_systemd: bool = False

    def http(self) -> list[Listener]:
        return [item for item in self.items if item.role == "http"]

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
                os.dup2(null, fd)
                os.close(null)
    # Python leaves sys.stdout/sys.stderr None for a standard fd that was closed at start-up.
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False, errors="backslashreplace")
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")


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
        if isinstance(name, bytes):
            name = "@" + name[1:].decode("utf-8", "replace") if name[:1] == b"\0" else name.decode()
        return f"unix:{name}" if name else "unix:(unnamed)"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


# --------------------------------------------------------------------------- systemd


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
    n = int(count)
    labels = names.split(":") if names else []
    listeners = Listeners(from_systemd=True)
    reuse_groups: dict[str, int] = {}
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        label = labels[i] if i < len(labels) else "unknown"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise SocketError(f"LISTEN_FDS: fd {fd} ({label}) is not a socket: {exc.strerror}") from None
        os.set_inheritable(fd, False)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise SocketError(f"LISTEN_FDS: fd {fd} ({label}) is not a listening stream socket; "
                              "use ListenStream= in the socket unit")
        role = "metrics" if label == "metrics" else "http"
        group = 0
        if role == "http" and sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            # N identical ListenStream= lines with ReusePort=yes: one queue per worker slot.
            address = describe(sock)
            reuse_groups[address] = reuse_groups.get(address, 0) + 1
            group = reuse_groups[address]
        listeners.items.append(Listener(sock, role, "systemd", name=label, group=group))
    # A lone reuse-port socket is just a shared socket.
    if max(reuse_groups.values(), default=0) < 2:
        for item in listeners.items:
            item.group = 0
    return listeners


# --------------------------------------------------------------------------- binding ourselves


def bind_all(specs: Iterable[BindSpec], backlog: int, *, reuse_port: bool = False, slots: int = 1,
             metrics: Iterable[BindSpec] = ()) -> Listeners:
    """Bind every configured address; on any failure close what was bound and raise SocketError."""
    specs, metrics = list(specs), list(metrics)
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
            if reuse_port and address.kind == "tcp":
                for slot in range(slots):
                    listeners.items.append(_bind(spec, address, backlog, "http", reuse_port=True, group=slot + 1))
            else:
                listeners.items.append(_bind(spec, address, backlog, "http"))
        for spec in metrics:
            listeners.items.append(_bind(spec, parse_address(spec.address), backlog, "metrics"))
    except BaseException:
        listeners.close()
        raise
    return listeners


def bind_reuse_port_group(listeners: Listeners, specs: Iterable[BindSpec], backlog: int, group: int) -> None:
    """Add one more SO_REUSEPORT socket per TCP address, for a new worker slot (TTIN)."""
    for spec in specs:
        address = parse_address(spec.address)
        if address.kind == "tcp":
            listeners.items.append(_bind(spec, address, backlog, "http", reuse_port=True, group=group))


def _bind(spec: BindSpec, address: Address, backlog: int, role: str, *, reuse_port: bool = False,
          group: int = 0) -> Listener:
    if address.kind == "fd":
        return _inherited(address.fd, role)
    if address.kind == "unix":
        return _bind_unix(spec, address, backlog, role)
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    host = "127.0.0.1" if address.host == "localhost" else address.host
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # [::]:8000 means IPv6 only, as in nginx; list 0.0.0.0:8000 too for IPv4.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, address.port))
        except OSError as exc:
            raise SocketError(bind_error_message(address, exc)) from None
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return Listener(sock, role, "bound", group=group)


def _bind_unix(spec: BindSpec, address: Address, backlog: int, role: str) -> Listener:
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
                pass
        raise
    return Listener(sock, role, "bound", unlink_path=None if abstract else path)


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


def _inherited(fd: int, role: str) -> Listener:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SocketError(f"bind fd:{fd}: not an open socket ({exc.strerror})") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SocketError(f"bind fd:{fd}: not a listening stream socket")
    os.set_inheritable(fd, False)
    return Listener(sock, role, "inherited")


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


# --------------------------------------------------------------------------- errors that name the fix


def bind_error_message(address: Address, exc: OSError) -> str:
    """Turn a bind() failure into a message that says what to do about it."""
    if exc.errno == errno.EADDRINUSE:
        who = _owner_hint_tcp(address.port) if address.kind == "tcp" else _owner_hint_unix(address.path)
        return (f"bind {address}: address already in use{who}; stop that process, or choose another "
                "address with --bind (is another corral running? see `systemctl status`)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        if address.kind == "tcp" and 0 < address.port < 1024:
            return (f"bind {address}: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
                    "let systemd bind it with a socket unit (see units/app.socket: ListenStream="
                    f"{address}), or use a port >= 1024 behind a proxy")
        return f"bind {address}: permission denied; check the directory's permissions or run as another user"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"bind {address}: {address.host} is not an address of this machine; "
                "use 0.0.0.0 / [::] for all interfaces, or FreeBind=yes in a socket unit")
    if exc.errno == errno.ENOENT and address.kind == "unix":
        return f"bind {address}: directory {os.path.dirname(address.path)} does not exist; create it first"
    return f"bind {address}: {exc.strerror or exc}"


def _owner_hint_tcp(port: int) -> str:
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f" by pid {conn.pid} ({_cmdline(conn.pid)})"
    except Exception as exc:  # psutil needs /proc access; the hint is best effort
        log.debug("cannot find the owner of port %d: %s", port, exc)
    return ""


def _owner_hint_unix(path: str) -> str:
    try:
        import psutil

        for conn in psutil.net_connections(kind="unix"):
            if conn.laddr == path and conn.pid:
                return f" (pid {conn.pid}: {_cmdline(conn.pid)})"
    except Exception as exc:
        log.debug("cannot find the owner of %s: %s", path, exc)
    return ""


def _cmdline(pid: int) -> str:
    try:
        import psutil

        cmd = " ".join(psutil.Process(pid).cmdline())
        return cmd[:120] or psutil.Process(pid).name()
    except Exception:
        return "unknown command"


def env_without_systemd(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a worker gets: no NOTIFY_SOCKET, WATCHDOG_* or LISTEN_*."""
    return {k: v for k, v in environ.items()
            if k != "NOTIFY_SOCKET" and not k.startswith(("WATCHDOG_", "LISTEN_"))}
