"""Boot a real systemd (252) as PID 1 of private namespaces, for tests that need systemctl.

Why a namespace and not the host's systemd: the test machines often have no systemd running at
all, and when they do we must not touch it. A careless boot (host unit directories, host /tmp)
starts the host's default units, and systemd-tmpfiles then wipes the host's /tmp. This module
boots systemd in a way that cannot do that:

* ``unshare --pid --fork --mount --mount-proc --propagation private`` (plus ``--cgroup --uts
  --ipc``, and ``--net`` in overlay mode) runs ``boot.sh`` (below). It mounts fresh tmpfs on
  ``/run``, ``/tmp`` and ``/var/tmp``, a private ``/dev`` (so sockets with ``Symlinks=`` or
  ``/dev/log`` never land in the host's ``/dev``), read-only ``/sys`` and ``/proc/sys`` (no
  host-wide sysctl writes), and a cgroup2 hierarchy rooted at a cgroup made for this boot only
  (so parallel boots never share ``system.slice``), then execs ``/lib/systemd/systemd --system
  --unit=corral-test.target``.
* ``SYSTEMD_UNIT_PATH`` names ONLY the test unit directory (no trailing colon: a trailing colon
  appends the host's unit directories). It holds the units under test and two-line stub targets
  for everything the default dependencies pull in, so nothing of the host's starts.
* Commands run inside through ``nsenter``; TCP listeners of the basic mode are reachable from
  the host on 127.0.0.1 (the network namespace is shared).
* Teardown SIGKILLs the namespace's systemd by pid: the kernel then kills everything else in
  the pid namespace, and the mount namespace with its tmpfs disappears with it.

Where files live. The work directory (``self.workdir``, ``/var/tmp/corral-test-XXXXXX`` by
default) is on the host filesystem and is bind-mounted at the same path inside, so a test can
write a config or an app there on the host and name the same path in a unit. ``/tmp`` and
``/var/tmp`` inside are fresh tmpfs: files written to the host's /tmp are NOT visible inside.
The workdir is mode 0755 so that services running as an unprivileged ``User=`` can read it.

Two modes:

* basic (default): the host filesystem is shared apart from the mounts above. Units may read
  anything on the host (the repo, its .venv). Anything they write outside /run, /tmp, /var/tmp
  and the workdir (``StateDirectory=``, ``/etc``) goes to the host, and ``User=`` must name a
  user that exists on the host. Use it for service behaviour tests.
* ``overlay=True``: the root is an overlay with ``lowerdir=/`` and an upper layer in the
  workdir, entered with ``pivot_root``; the network namespace is private (``lo`` only). Every
  write, ``dpkg -i`` included, lands in the upper layer and vanishes at teardown. The host
  cannot reach sockets inside: make requests from inside (``.run(["curl", ...])`` or
  ``.popen([...])``). ``/lib/systemd/system`` and ``/etc/systemd/system`` start as empty
  tmpfs and are on the unit path, so that a package's units (``dpkg -i``), ``systemctl
  enable`` and drop-ins work while none of the host's units can load. Use it for package
  install tests.

Testing the shipped units (units/app.*) with the repo's .venv: on this machine its python
lives under /root/.pyenv, which ``ProtectHome=yes`` hides, and ``User=corral`` needs a user
the host may not have. Relax exactly those in the test with a drop-in
(``app.service.d/test.conf`` in the unit directory: ``ProtectHome=read-only``, ``User=``
of an existing user), or use overlay mode and create the user inside
(``systemd-sysusers``).

PID 1's own log (and, without journald, the services' stdout/stderr through ``/dev/console``)
is collected from a pty into ``workdir/console.log``; read it with ``.console()``. With
``journald=True`` a minimal systemd-journald (volatile storage) runs inside and ``.journal()``
works; service output then goes to the journal, which is also forwarded to the console log.

Usage::

    with SystemdNamespace({"app.socket": SOCKET, "app.service": SERVICE}) as ns:
        ns.systemctl("start", "app.socket")
        assert ns.show("app.service", "ActiveState") == "inactive"
"""

from __future__ import annotations

import ctypes
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import IO, Mapping, Sequence

SYSTEMD = "/lib/systemd/systemd"
TEST_TARGET = "corral-test.target"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Every target the default dependencies of services and sockets reach, as a do-nothing stub, so
# nothing of the host's is ever loaded. network-online/nss-lookup/remote-fs/time-sync are
# there because real-world units name them in After=/Wants=.
STUB_TARGETS = (
    "sysinit", "sockets", "basic", "shutdown", "paths", "timers", "slices", "local-fs",
    "network", "multi-user", "umount", "swap", "network-online", "network-pre", "nss-lookup",
    "remote-fs", "time-sync", "final", "graphical", "default",
)

# Overlay mode only: where packages install units and `systemctl enable` links them.
OVERLAY_UNIT_DIRS = ":/etc/systemd/system:/run/systemd/system:/lib/systemd/system"

# A minimal journald (the host's unit pulls in audit and /dev/log sockets, and kmsg).
JOURNALD_UNITS = {
    "systemd-journald.socket": """\
[Unit]
Description=Journal Socket (test namespace)
DefaultDependencies=no
Before=sockets.target

[Socket]
ListenDatagram=/run/systemd/journal/socket
ListenStream=/run/systemd/journal/stdout
PassCredentials=yes
PassSecurity=yes
ReceiveBuffer=8M
Service=systemd-journald.service
SocketMode=0666
Timestamping=us
""",
    "systemd-journald.service": """\
[Unit]
Description=Journal Service (test namespace)
DefaultDependencies=no
Requires=systemd-journald.socket
After=systemd-journald.socket

[Service]
Type=notify
ExecStart=/lib/systemd/systemd-journald
Sockets=systemd-journald.socket
RuntimeDirectory=systemd/journal
RuntimeDirectoryPreserve=yes
FileDescriptorStoreMax=4224
StandardOutput=null
Restart=always
RestartSec=0
""",
}

# Runs as PID 1 of the new pid namespace until it execs systemd. It only ever mounts inside its
# own (private) mount namespace. Inputs come from the environment (see SystemdNamespace._boot).
BOOT_SH = r"""#!/bin/sh
set -eu
W="$CORRAL_NS_WORKDIR"

ro_bind() {  # a read-only view of a directory over itself
    mount --bind "$1" "$1"
    mount -o remount,bind,ro "$1"
}

private_dev() {  # $1: the /dev to populate; $2: the host's /dev to take nodes from
    mount -t tmpfs -o mode=755,nosuid tmpfs "$1"
    for n in null zero full random urandom tty; do
        touch "$1/$n"
        mount --bind "$2/$n" "$1/$n"
    done
    mkdir -m 755 "$1/pts" "$1/shm" "$1/mqueue"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$1/pts"
    ln -s pts/ptmx "$1/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$1/shm"
    ln -s /proc/self/fd "$1/fd"
    ln -s /proc/self/fd/0 "$1/stdin"
    ln -s /proc/self/fd/1 "$1/stdout"
    ln -s /proc/self/fd/2 "$1/stderr"
    touch "$1/console"
    mount --bind "$2/${CORRAL_NS_CONSOLE#/dev/}" "$1/console"
}

# The checkout (and its .venv) may itself live under /tmp or /var/tmp (a CI clone): keep those
# paths visible at the same place above the fresh tmpfs. CORRAL_NS_KEEP is space-separated.
save_kept() {  # $1: a directory on the new /run to park bind mounts in
    i=0
    for p in $CORRAL_NS_KEEP; do
        mkdir -p "$1/$i"; mount --bind "$p" "$1/$i"; i=$((i + 1))
    done
}

restore_kept() {  # $1: where save_kept parked them; $2: the root to put them back under
    i=0
    for p in $CORRAL_NS_KEEP; do
        mkdir -p "$2$p"; mount --move "$1/$i" "$2$p"; rmdir "$1/$i"; i=$((i + 1))
    done
}

cgroup_view() {  # $1: root; cgroup2 rooted at this boot's own cgroup (we are in a cgroup ns)
    mount -t cgroup2 cgroup2 "$1/sys/fs/cgroup"
}

if [ "$CORRAL_NS_MODE" = basic ]; then
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
    save_kept /run/.keep
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
    # /var/tmp becomes fresh too (PrivateTmp= dirs, leftovers after SIGKILL stay inside), but
    # the workdir, which usually lives there, is moved back to the same path.
    mkdir /run/.w /run/.hostdev
    mount --bind "$W" /run/.w
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
    mkdir -p "$W"
    mount --move /run/.w "$W"
    restore_kept /run/.keep ""
    mount --rbind /dev /run/.hostdev
    private_dev /dev /run/.hostdev
    umount -l /run/.hostdev
    rmdir /run/.w /run/.hostdev
    ro_bind /sys
    cgroup_view ""
else
    R="$W/root"
    mkdir -p "$R" "$W/ov/upper" "$W/ov/work"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$W/ov/upper,workdir=$W/ov/work" "$R"
    # Packages install units here, so these are on the unit path in this mode: start them
    # empty, so that none of the host's units (and none of their .wants/ links) can load.
    mount -t tmpfs -o mode=755 tmpfs "$R/usr/lib/systemd/system"
    mount -t tmpfs -o mode=755 tmpfs "$R/etc/systemd/system"
    mount -t proc proc "$R/proc"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
    cgroup_view "$R"
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/var/tmp"
    mkdir -p "$R$W"
    mount --bind "$W" "$R$W"
    for p in $CORRAL_NS_KEEP; do mkdir -p "$R$p"; mount --bind "$p" "$R$p"; done
    private_dev "$R/dev" /dev
    # systemd brings lo up itself as well; iproute2 may be missing from minimal images.
    if command -v ip >/dev/null; then ip link set lo up; fi
    mkdir -p "$R/.oldroot"
    cd "$R"
    pivot_root . .oldroot
    cd /
    umount -l /.oldroot
    rmdir /.oldroot
fi
ro_bind /proc/sys
if [ -e /proc/sysrq-trigger ]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
    mount -o remount,bind,ro /proc/sysrq-trigger
fi

# Tell journald (if started) to keep its files in /run: the host has /var/log/journal.
mkdir -p /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nForwardToConsole=yes\nMaxLevelConsole=debug\n' \
    > /run/systemd/journald.conf.d/corral-test.conf

exec env -i container=corral-test "PATH=$CORRAL_NS_PATH" \
    "SYSTEMD_UNIT_PATH=$CORRAL_NS_UNIT_PATH" \
    /lib/systemd/systemd --system "--unit=$CORRAL_NS_TARGET" --log-target=console \
    --log-color=no --show-status=no $CORRAL_NS_EXTRA_ARGS
"""


class NamespaceUnavailable(RuntimeError):
    """This machine does not allow booting systemd in namespaces (the reason is the message)."""


@lru_cache(maxsize=None)
def unavailable_reason(overlay: bool = False) -> str | None:
    """Why the harness cannot run here, or None when it can. Probed once per process."""
    if os.geteuid() != 0:
        return "needs root (unshare of pid/mount/cgroup namespaces)"
    for tool in ("unshare", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install util-linux systemd)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing (apt-get install systemd)"
    if _cgroup2_base() is None:
        return "no cgroup2 hierarchy mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    flags = ["--pid", "--fork", "--mount", "--cgroup", "--uts", "--ipc"]
    if overlay:
        flags.append("--net")
    try:
        probe = subprocess.run(["unshare", *flags, "--mount-proc", "--propagation", "private",
                                "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare probe failed: {exc}"
    if probe.returncode != 0:
        return f"unshare {' '.join(flags)} is not allowed here: {probe.stderr.strip()}"
    if overlay and "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (modprobe overlay)"
    return None


def _paths_hidden_by_fresh_tmp() -> list[str]:
    """The checkout, its virtualenv and its Python, where they lie under /tmp or /var/tmp.

    Inside the namespace those are fresh tmpfs, which would hide a CI clone made there (and
    with it the corral the units start). Paths with spaces are not supported (boot.sh splits
    on them) and are left out.
    """
    repo = Path(__file__).resolve().parents[2]
    candidates = {repo, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    kept: set[str] = set()
    for path in candidates:
        for top in ("/tmp", "/var/tmp"):
            if str(path).startswith(top + "/") and " " not in str(path):
                kept.add(str(path))
    # A path inside another kept one is covered by it.
    return sorted(p for p in kept if not any(p != q and p.startswith(q + "/") for q in kept))


def _cgroup2_base() -> Path | None:
    """The cgroup2 directory this process lives in (pure v2 or hybrid layout)."""
    for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (mount / "cgroup.procs").exists() and (mount / "cgroup.controllers").exists():
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    return mount / line[3:].lstrip("/")
            return mount
    return None


def _unit_name_ok(name: str) -> bool:
    """A unit file name ("app.service"), or a drop-in ("app.service.d/test.conf")."""
    parts = name.split("/")
    if len(parts) == 2:
        unit, conf = parts
        return unit.endswith(".d") and conf.endswith(".conf") and _unit_name_ok(unit[:-2])
    return len(parts) == 1 and "." in name and not name.startswith(".")


class SystemdNamespace:
    """systemd 252 booted as PID 1 of private namespaces; see the module docstring.

    ``units`` maps unit file names to their text (written into the test unit directory).
    ``journald`` starts a volatile systemd-journald inside (for ``journal()``).
    ``workdir`` overrides the default ``/var/tmp/corral-test-XXXXXX`` (it must not be under
    /tmp, which is a fresh tmpfs inside).
    """

    def __init__(self, units: Mapping[str, str], *, overlay: bool = False,
                 journald: bool = False, workdir: str | os.PathLike[str] | None = None,
                 boot_timeout: float = 120.0) -> None:
        for name in units:
            if not _unit_name_ok(name):
                raise ValueError(f"bad unit file name {name!r}: expected e.g. 'app.service' "
                                 "or a drop-in 'app.service.d/test.conf'")
        self.units = dict(units)
        self.overlay = overlay
        self.journald = journald
        self.boot_timeout = boot_timeout
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="corral-test-", dir="/var/tmp"))
            self._own_workdir = True
        else:
            self.workdir = Path(workdir).resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        if self.workdir == Path("/tmp") or Path("/tmp") in self.workdir.parents:
            raise ValueError(f"workdir {self.workdir} is under /tmp, which is a fresh tmpfs "
                             "inside the namespace; use /var/tmp or a build directory")
        self.workdir.chmod(0o755)
        self.unit_dir = self.workdir / "units"
        self.unit_dir.mkdir(exist_ok=True)
        self.pid: int | None = None  # host pid of the namespace's systemd (PID 1 inside)
        self._unshare: subprocess.Popen[bytes] | None = None
        self._cgroup: Path | None = None
        self._console_master: int | None = None
        self._console_slave: int | None = None
        self._console_thread: threading.Thread | None = None
        self._console_log: IO[bytes] | None = None
        self._popens: list[subprocess.Popen[bytes]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> SystemdNamespace:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> SystemdNamespace:
        """Boot, and wait until ``systemctl is-system-running`` says running or degraded."""
        reason = unavailable_reason(self.overlay)
        if reason is not None:
            raise NamespaceUnavailable(reason)
        try:
            self._write_units()
            self._boot()
            self._wait_running()
            if self.journald:
                self.systemctl("start", "systemd-journald.socket", "systemd-journald.service")
                # PID 1 logs to the console until told otherwise; the journal is nicer to grep.
                self.run(["systemd-analyze", "set-log-target", "journal-or-kmsg"])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """SIGKILL the namespace's systemd by pid (everything inside dies), then clean up."""
        if self._unshare is not None:
            if self.pid is not None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            # --kill-child makes unshare's child die with it, and unshare exits once it has.
            if self._unshare.poll() is None:
                try:
                    self._unshare.wait(30)
                except subprocess.TimeoutExpired:
                    self._unshare.kill()
                    self._unshare.wait(30)
            self._unshare = None
        for proc in self._popens:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        self._popens.clear()
        self.pid = None
        self._remove_cgroup()
        if self._console_slave is not None:
            os.close(self._console_slave)
            self._console_slave = None
        if self._console_thread is not None:
            self._console_thread.join(10)
            self._console_thread = None
        if self._console_master is not None:
            os.close(self._console_master)
            self._console_master = None
        if self._console_log is not None:
            self._console_log.close()
            self._console_log = None
        if self._own_workdir and self.workdir.exists():
            self._rmtree_workdir()

    # -- driving it --------------------------------------------------------------------------

    def nsenter_argv(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None
                     ) -> list[str]:
        """The host command line that runs ``argv`` inside, with a clean environment."""
        if self.pid is None:
            raise RuntimeError("the namespace is not running; call start() first")
        flags = ["-m", "-p", "-u", "-i", "-C", "-r", "-w"]
        if self.overlay:
            flags.append("-n")
        environment = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
                       "SYSTEMD_COLORS": "0", "HOME": "/root"}
        environment.update(env or {})
        return ["nsenter", "-t", str(self.pid), *flags, "--", "env", "-i",
                *(f"{k}={v}" for k, v in environment.items()), *argv]

    def run(self, argv: Sequence[str], *, timeout: float = 60, check: bool = True,
            input: str | None = None, env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (mount/pid/... namespaces, clean env) and capture its output."""
        cmd = self.nsenter_argv(argv, env=env)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  input=input)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{' '.join(argv)} did not finish within {timeout}s inside "
                                 f"the namespace; console log tail:\n{self.console()[-3000:]}"
                                 ) from exc
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode} inside the "
                                 f"namespace\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def popen(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running command inside; it is killed at close() at the latest."""
        proc = subprocess.Popen(self.nsenter_argv(argv, env=env), **kwargs)  # type: ignore[call-overload]
        self._popens.append(proc)
        return proc

    def systemctl(self, *args: str, timeout: float = 60, check: bool = True
                  ) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` inside (no pager, no password agent)."""
        return self.run(["systemctl", "--no-pager", "--no-ask-password", *args],
                        timeout=timeout, check=check)

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, e.g. ``show("app.service", "ActiveState")``."""
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def write_unit(self, name: str, text: str) -> Path:
        """Add or replace a unit file or drop-in (call daemon_reload() afterwards)."""
        if not _unit_name_ok(name):
            raise ValueError(f"bad unit file name {name!r}")
        path = self.unit_dir / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path

    def journal(self, unit: str | None = None, *args: str, timeout: float = 60) -> str:
        """``journalctl`` output (optionally for one unit); needs ``journald=True``."""
        if not self.journald:
            raise RuntimeError("journal() needs SystemdNamespace(..., journald=True)")
        argv = ["journalctl", "--no-pager", "-o", "short-monotonic", *args]
        if unit is not None:
            argv += ["-u", unit]
        return self.run(argv, timeout=timeout, check=False).stdout

    def console(self) -> str:
        """Everything PID 1 (and, without journald, the services) wrote to /dev/console."""
        path = self.workdir / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- internals ---------------------------------------------------------------------------

    def _write_units(self) -> None:
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        stubs = {f"{t}.target": f"[Unit]\nDescription=stub {t}.target (test namespace)\n"
                 for t in STUB_TARGETS}
        stubs[TEST_TARGET] = "[Unit]\nDescription=corral test target\n"
        if self.journald:
            stubs.update(JOURNALD_UNITS)
        stubs.update(self.units)
        for name, text in stubs.items():
            (self.unit_dir / name).parent.mkdir(exist_ok=True)
            (self.unit_dir / name).write_text(text)
        (self.workdir / "boot.sh").write_text(BOOT_SH)
        (self.workdir / "boot.sh").chmod(0o755)

    def _boot(self) -> None:
        base = _cgroup2_base()
        assert base is not None  # checked by unavailable_reason()
        self._cgroup = base / self.workdir.name
        self._cgroup.mkdir()
        master, slave = pty.openpty()
        self._console_master = master
        slave_path = os.ttyname(slave)
        extra = "" if self.journald else \
            "--default-standard-output=tty --default-standard-error=inherit"
        env = {
            "PATH": CLEAN_PATH,
            "CORRAL_NS_WORKDIR": str(self.workdir),
            "CORRAL_NS_MODE": "overlay" if self.overlay else "basic",
            "CORRAL_NS_CONSOLE": slave_path,
            "CORRAL_NS_PATH": CLEAN_PATH,
            # No trailing colon: that would append the host's unit directories (and the
            # generators' output). Overlay mode adds the package directories, which boot.sh
            # has replaced with empty ones.
            "CORRAL_NS_UNIT_PATH": str(self.unit_dir) + (OVERLAY_UNIT_DIRS if self.overlay else ""),
            "CORRAL_NS_TARGET": TEST_TARGET,
            "CORRAL_NS_EXTRA_ARGS": extra,
            "CORRAL_NS_KEEP": " ".join(_paths_hidden_by_fresh_tmp()),
        }
        flags = ["--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--mount-proc",
                 "--propagation", "private", "--cgroup", "--uts", "--ipc"]
        if self.overlay:
            flags.append("--net")
        cgroup_procs = str(self._cgroup / "cgroup.procs")
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1

        def enter_cgroup_and_die_with_parent() -> None:
            # Runs in the child between fork and exec: only plain syscalls here. The cgroup
            # move happens before unshare(CLONE_NEWCGROUP), so the new cgroup namespace (and
            # the cgroup2 mount in boot.sh) is rooted at this boot's own cgroup.
            fd = os.open(cgroup_procs, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)  # pytest killed -> unshare dies

        log = open(self.workdir / "boot.log", "wb")
        try:
            self._unshare = subprocess.Popen(
                ["unshare", *flags, str(self.workdir / "boot.sh")], env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=enter_cgroup_and_die_with_parent)
        finally:
            log.close()
        # Keep our slave fd open until close(): reading a pty master with no open slave fails
        # with EIO, which would end the drain thread before systemd opens /dev/console.
        self._console_slave = slave
        self._console_log = open(self.workdir / "console.log", "ab", buffering=0)
        self._console_thread = threading.Thread(target=self._drain_console, daemon=True,
                                                name=f"console-{self.workdir.name}")
        self._console_thread.start()
        self.pid = self._find_namespace_init()

    def _drain_console(self) -> None:
        # PID 1 blocks writing to /dev/console if nobody reads the pty: always drain it.
        assert self._console_master is not None and self._console_log is not None
        master, log = self._console_master, self._console_log
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once every slave fd is closed (the namespace died)
                return
            if not data:
                return
            try:
                log.write(data.replace(b"\r\n", b"\n"))
            except ValueError:  # closed by close()
                return

    def _find_namespace_init(self) -> int:
        """Host pid of unshare's child (the namespace's PID 1), once it is systemd."""
        assert self._unshare is not None
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise AssertionError(f"namespace boot failed (unshare exited "
                                     f"{self._unshare.returncode}):\n{self._boot_log()}")
            try:
                pids = children.read_text().split()
                if pids and Path(f"/proc/{pids[0]}/exe").resolve() == Path(SYSTEMD).resolve():
                    return int(pids[0])
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"systemd did not start in the namespace within 60s:\n"
                             f"{self._boot_log()}")

    def _wait_running(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        last = ""
        while time.monotonic() < deadline:
            if self._unshare is not None and self._unshare.poll() is not None:
                raise AssertionError(f"the namespace's systemd exited during boot:\n"
                                     f"{self._boot_log()}\n{self.console()[-5000:]}")
            proc = self.systemctl("is-system-running", check=False, timeout=30)
            last = (proc.stdout + proc.stderr).strip()
            if proc.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(0.1)
        raise AssertionError(f"systemd in the namespace not running after {self.boot_timeout}s"
                             f" (last answer {last!r}); console:\n{self.console()[-5000:]}")

    def _boot_log(self) -> str:
        path = self.workdir / "boot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _remove_cgroup(self) -> None:
        """rmdir this boot's cgroup tree, deepest first, once its processes are gone."""
        if self._cgroup is None or not self._cgroup.exists():
            self._cgroup = None
            return
        deadline = time.monotonic() + 30
        while True:
            try:
                dirs = sorted((p for p in self._cgroup.rglob("*") if p.is_dir()),
                              key=lambda p: len(p.parts), reverse=True)
                for d in [*dirs, self._cgroup]:
                    d.rmdir()
                self._cgroup = None
                return
            except FileNotFoundError:
                continue
            except OSError:  # EBUSY while killed processes are still being reaped
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _rmtree_workdir(self) -> None:
        # Inside the namespace workdir/root is an overlay of the whole host root. Mounts never
        # propagate out (private propagation), but deleting through a leaked one would delete
        # the host, so refuse if anything under the workdir is a mount point here.
        prefix = str(self.workdir) + "/"
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4]
            if mount_point == str(self.workdir) or mount_point.startswith(prefix):
                raise RuntimeError(f"{mount_point} is mounted on the host; not deleting "
                                   f"{self.workdir}")
        shutil.rmtree(self.workdir, ignore_errors=True)
