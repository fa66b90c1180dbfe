"""corral as PID 1 (a container without an init system) or as a child subreaper.

A PID 1, or a process that set PR_SET_CHILD_SUBREAPER, inherits every process
orphaned below it: an app's subprocess that double-forks, a daemonised helper, a
shell's background job. When such an orphan exits it stays a zombie until its new
parent waits for it; an init that never does fills the process table. Under
systemd this is systemd's job, so the reaper is only active as PID 1 or as a
subreaper (``Reaper.for_this_process``).

It must never take the exit status of a process someone else in corral waits
for, or that waiter sees ECHILD and the status is lost (``subprocess.Popen``
then reports 0, asyncio 255). So it looks before it reaps: ``waitid(WNOWAIT)``
names the next zombie child without reaping it, and

- a worker is left to the supervisor's own exit handling (``Popen.poll()`` in
  ``Supervisor._reap``, which runs first, on the same thread);
- a child in corral's own process group may be one that corral itself started
  and is waiting for on another thread (asyncio's child watcher, e.g. the
  pre-flight of an in-place upgrade): it is reaped only if it is still a zombie
  ``OWN_CHILD_GRACE`` seconds later, when nobody is waiting for it;
- anything else is an orphan (workers run in process groups of their own, so
  whatever an app starts is never in corral's group): reaped at once.

Signals: the kernel drops a signal whose action is the default one when it is
sent to PID 1, so ``corral run`` as PID 1 stops only on signals it handles. The
supervisor's loop handles TERM (graceful), INT and QUIT (fast); before the loop
runs, ``prepare_pid1`` makes TERM stop a starting corral at once, as it would any
other process.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable
from types import FrameType

from corral.logs import stderr_is_journal

log = logging.getLogger("corral.supervisor")

OWN_CHILD_GRACE = 1.0  # seconds a zombie of corral's own group is left to whoever started it
MAX_PER_CALL = 1000  # zombies looked at per call at most: the loop's other work is not starved
FORGET_AFTER = 60.0  # an own-group zombie not seen again for this long was reaped by its waiter
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
PR_GET_CHILD_SUBREAPER = 37
# Set by the command line's image of `corral run` for the supervisor's: "1" if this process is a
# child subreaper (it made itself one for worker_start: zygote, or was started as one), else "0".
SUBREAPER_ENV = "_CORRAL_SUBREAPER"  # not CORRAL_*: those are config keys
EXIT_TERMINATED = 128 + signal.SIGTERM  # a shell's status for "killed by SIGTERM"


class Role(enum.Enum):
    """Why orphaned processes end up as corral's children."""

    INIT = "PID 1"  # the init of its PID namespace: a container's entry point
    SUBREAPER = "child subreaper"  # PR_SET_CHILD_SUBREAPER, set by whoever started corral


def role() -> Role | None:
    """Whether orphans are re-parented to this process (and how); None: they go elsewhere."""
    if os.getpid() == 1:
        return Role.INIT
    return Role.SUBREAPER if is_subreaper() else None


# What this process is, once known: prctl() needs ctypes (about 0.3 MiB), which the supervisor's
# image never loads when the command line's image found out for it (hand_over_subreaper).
_subreaper: bool | None = None


def hand_over_subreaper(make: bool) -> None:
    """In the command line's image, before it re-executes itself as the supervisor: make this
    process a child subreaper if ``make`` (the attribute survives execve), and tell the next image
    whether it is one. Best effort: the supervisor's image finds out itself if this could not."""
    if make:
        become_subreaper()
    os.environ[SUBREAPER_ENV] = "1" if is_subreaper() else "0"


def take_subreaper() -> None:
    """In the supervisor's image: what the command line's image found (the variable removed, so
    that no worker sees it)."""
    global _subreaper
    told = os.environ.pop(SUBREAPER_ENV, None)
    if told in ("0", "1"):
        _subreaper = told == "1"


def is_subreaper() -> bool:
    """Whether orphaned descendants are re-parented to this process (PR_GET_CHILD_SUBREAPER)."""
    global _subreaper
    if _subreaper is None:
        _subreaper = _prctl_subreaper(PR_GET_CHILD_SUBREAPER)
    return _subreaper


def become_subreaper() -> bool:
    """Make this process a child subreaper (worker_start: zygote re-parents forked workers to it);
    False if not possible."""
    global _subreaper
    if not _subreaper:
        _subreaper = _prctl_subreaper(PR_SET_CHILD_SUBREAPER)
    return _subreaper


def _prctl_subreaper(option: int) -> bool:
    """PR_SET_CHILD_SUBREAPER (to 1): whether it succeeded; PR_GET_CHILD_SUBREAPER: the value."""
    import ctypes  # only here: see _subreaper

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if option == PR_SET_CHILD_SUBREAPER:
            return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
        value = ctypes.c_int(0)
        if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
            return False
        return value.value != 0
    except (OSError, AttributeError):  # not Linux, or no prctl: orphans are not ours
        return False


class Reaper:
    """Waits for orphaned processes re-parented to corral; see the module docstring."""

    def __init__(self, as_role: Role, clock: Callable[[], float], grace: float = OWN_CHILD_GRACE) -> None:
        self.role = as_role
        self.clock = clock
        self.grace = grace
        self.reaped = 0  # orphans reaped since start
        self._own_group = os.getpgrp()
        self._first_seen: dict[int, float] = {}  # own-group zombie -> when it was first seen

    @classmethod
    def for_this_process(cls, clock: Callable[[], float]) -> Reaper | None:
        """A reaper when orphans come to this process (PID 1 or a subreaper), else None."""
        as_role = role()
        if as_role is None:
            return None
        log.info("running as %s: corral reaps the orphaned processes it inherits; SIGTERM stops it "
                 "gracefully, SIGINT or SIGQUIT fast", as_role.value)
        return cls(as_role, clock)

    def reap(self, is_worker: Callable[[int], bool]) -> int:
        """Reap the zombie children that are neither workers nor possibly awaited; returns how many.

        Call it after the workers were polled: a worker's zombie found here is left for the
        next poll, and so are the zombies behind it (at most until the next tick)."""
        count = 0
        for _ in range(MAX_PER_CALL):
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None  # no children at all
            if info is None:
                break
            pid = info.si_pid
            if is_worker(pid) or not self._reapable(pid):
                break  # waitid names the same zombie until it is reaped: try again later
            if self._reap_one(pid):
                count += 1
        self.reaped += count
        if self._first_seen:
            now = self.clock()
            self._first_seen = {pid: t for pid, t in self._first_seen.items() if now - t < FORGET_AFTER}
        return count

    def _reapable(self, pid: int) -> bool:
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return True  # reaped by someone else since waitid named it: look again at once
        if group != self._own_group:
            return True
        now = self.clock()
        first = self._first_seen.setdefault(pid, now)
        return now - first >= self.grace

    def _reap_one(self, pid: int) -> bool:
        self._first_seen.pop(pid, None)
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False  # its own waiter took it meanwhile
        if reaped != pid:
            return False
        log.debug("reaped orphaned process %d (%s)", pid, _describe(status))
        return True


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def prepare_pid1() -> bool:
    """Before anything else in ``corral run``: when corral is PID 1 outside systemd (a container),
    its log, its workers' and the app's stderr go to stdout, and SIGTERM stops it even before the
    supervisor's loop handles signals. Returns whether it is PID 1."""
    if os.getpid() != 1:
        return False
    _stderr_to_stdout()
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        # As PID 1 the default action is dropped by the kernel: a SIGTERM while corral starts
        # (before it runs a worker) would be lost and the runtime would SIGKILL it later.
        signal.signal(signal.SIGTERM, _exit_on_term)
    return True


def _exit_on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_TERMINATED)


def _stderr_to_stdout() -> None:
    """Make fd 2 a copy of fd 1: one ordered stream, which is what a container runtime shows
    (``kubectl logs``) and what log shippers expect. Left alone when stderr is the journal,
    when stdout is /dev/null or closed (stderr would be lost) or when both are the same file."""
    if stderr_is_journal():
        return
    try:
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return
    if (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino) or _is_devnull(out):
        return
    sys.stderr.flush()
    os.dup2(1, 2)


def _is_devnull(st: os.stat_result) -> bool:
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev
