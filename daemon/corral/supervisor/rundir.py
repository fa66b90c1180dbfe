"""The control socket's directory, and the claim that makes its path one corral's alone.

**The claim.** Two corrals with one name (a service, and an admin's ``corral run --config``
of the same file) must never share a control socket: the second would serve, or delete, the
first one's. Before it binds anything, ``corral run`` takes an ``flock`` on a lock file beside
the socket (``control.sock.lock``, holding its pid for the error message) and keeps it for
its whole life, across an in-place re-exec too (the fd is handed over like the sockets).
The kernel drops the lock when the process dies, however it dies, so a crash leaves nothing
that blocks a restart; a socket file left by a crash is stale by definition and replaced.

**The directory.** Missing directories are made (the socket's own mode 0700, the ones above
it 0755, as systemd makes /run/corral for RuntimeDirectory=corral/NAME). The *private*
levels of the default location (``/tmp/corral-UID/NAME``, ``$XDG_RUNTIME_DIR/corral/NAME``:
see ``config.RuntimeLocation``) are in a directory others may share, so, as ssh-agent and
tmux do, corral makes each one itself with mkdir (which fails if anything is there), then
checks with lstat that it is a real directory of its user's, mode 0700, and refuses
anything else (another user's directory, a file, a symlink) with the path and the fix.

**On exit** corral removes the lock file and the directories it made, each only if empty.
The lock file is unlinked while still locked; a starting corral that locked the unlinked
file notices (its inode is no longer the path's) and starts over.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.config import RuntimeLocation, runtime_location, socket_path_too_long

if TYPE_CHECKING:
    from corral.config import Config

log = logging.getLogger("corral.control")

LOCK_SUFFIX = ".lock"
_ATTEMPTS = 5  # an instance exiting can remove the directory or the lock file under us once or twice
_SHARED_MODE = 0o755  # directories above the socket's own, which other users' services may need to cross
_PRIVATE_MODE = 0o700


class ClaimError(Exception):
    """The control socket's path cannot be this corral's; the message names the path and the fix."""


@dataclass
class Claim:
    socket_path: str
    fd: int  # the lock file, open and flock()ed
    made: list[str] = field(default_factory=list)  # directories this corral made, outermost first

    @property
    def lock_path(self) -> str:
        return self.socket_path + LOCK_SUFFIX

    def handover(self) -> dict[str, Any]:
        """What an in-place re-exec passes to the new image (the fd stays open across exec)."""
        return {"socket_path": self.socket_path, "lock_fd": self.fd, "made": list(self.made)}


_held: Claim | None = None


def held() -> Claim | None:
    """The claim this process holds, if any."""
    return _held


def claim_for(config: Config) -> Claim:
    """Claim the config's control socket; the private levels are checked when the path is
    the default one (a ``control_socket:`` is the operator's choice of directory)."""
    location = None if "control_socket" in config.explicit else runtime_location(config.name)
    return claim(config.control_socket, location)


def claim(socket_path: str, location: RuntimeLocation | None = None) -> Claim:
    """Make the socket's directory and take its lock for this process; the same claim again
    if this process holds it already. Raises ClaimError."""
    global _held
    if _held is not None:
        if _held.socket_path == socket_path:
            return _held
        raise ClaimError(f"this corral already holds the control socket {_held.socket_path}, "
                         f"not {socket_path}")
    problem = socket_path_too_long(socket_path)
    if problem is not None:
        raise ClaimError(f"{problem}; choose a shorter name (-n NAME) or control_socket:, or set "
                         "RUNTIME_DIRECTORY to a shorter directory")
    directory = os.path.dirname(os.path.normpath(socket_path)) or "."
    if location is None or os.path.normpath(location.path) != directory:
        location = RuntimeLocation(directory)
    made: list[str] = []
    try:
        for _ in range(_ATTEMPTS):
            made += _make_directories(location)
            fd = _lock(socket_path)
            if fd is not None:
                _held = Claim(socket_path, fd, made)
                return _held
    except BaseException:
        _remove_directories(made)
        raise
    _remove_directories(made)
    raise ClaimError(f"cannot lock {socket_path}{LOCK_SUFFIX}: it keeps disappearing (another corral with "
                     "this name starting and stopping?); try again")


def resume(handed_over: dict[str, Any] | None, config: Config) -> None:
    """In a re-executed image: keep the claim the previous image handed over. An image from
    before claims existed handed none: take it now, and never fail (workers would be orphaned)."""
    global _held
    if handed_over:
        fd = int(handed_over["lock_fd"])
        os.set_inheritable(fd, False)
        _held = Claim(str(handed_over["socket_path"]), fd, [str(d) for d in handed_over.get("made", [])])
        return
    try:
        claim_for(config)
    except ClaimError as exc:
        log.warning("re-executed in place, but could not claim the control socket: %s", exc)


def release() -> None:
    """On exit: remove the lock file and the (empty) directories this corral made, drop the lock."""
    global _held
    held_claim, _held = _held, None
    if held_claim is None:
        return
    try:
        if _is_open_file(held_claim.fd, held_claim.lock_path):
            os.unlink(held_claim.lock_path)  # still locked: see the module docstring
    except OSError:
        pass
    os.close(held_claim.fd)
    _remove_directories(held_claim.made)


# --------------------------------------------------------------------------- directories


def _make_directories(location: RuntimeLocation) -> list[str]:
    """Make what is missing of ``location``; return the directories made, outermost first."""
    made: list[str] = []
    missing: list[str] = []
    path = os.path.normpath(location.base)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path) or "."
    leaf = os.path.normpath(location.path)
    for path in reversed(missing):
        if _mkdir(path, _PRIVATE_MODE if path == leaf else _SHARED_MODE):
            made.append(path)
    path = os.path.normpath(location.base)
    for level in location.private:
        path = os.path.join(path, level)
        if _mkdir(path, _PRIVATE_MODE):
            made.append(path)
        try:
            _check_private(path)
        except ClaimError:
            _remove_directories(made)
            raise
    if not os.path.isdir(location.path):  # a file, or a dangling symlink, where the directory should be
        raise ClaimError(f"{location.path} is not a directory, so the control socket cannot go there; remove "
                         "it, or set control_socket: to a path in a directory of yours")
    return made


def _mkdir(path: str, mode: int) -> bool:
    """mkdir; True if we made it, False if something was there already."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ClaimError(f"cannot create the directory of the control socket, {path}: {exc.strerror}; set "
                         "control_socket: to a path in a directory of yours, or RuntimeDirectory= in the "
                         "unit") from None
    os.chmod(path, mode)  # whatever the umask took away
    return True


def _check_private(path: str) -> None:
    """A private level must be a real directory, ours, mode 0700: nobody else can put a
    socket there, or swap the directory for their own."""
    me = os.geteuid()
    fix = ("remove it (as root if it is another user's), or set XDG_RUNTIME_DIR, or control_socket: to a "
           "path in a directory of yours")
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ClaimError(f"cannot check {path}, the directory of corral's control socket: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ClaimError(f"{path} is a symlink, not a directory: corral's control socket must not go where "
                         f"someone else points it; {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise ClaimError(f"{path} is not a directory (a {_kind(st.st_mode)}, owned by {_user(st.st_uid)}); "
                         f"corral needs it for its control socket: {fix}")
    if st.st_uid != me:
        raise ClaimError(f"{path} is owned by {_user(st.st_uid)}, not by you ({_user(me)}): whoever made it "
                         f"could take over corral's control socket; {fix}")
    if stat.S_IMODE(st.st_mode) != _PRIVATE_MODE:
        raise ClaimError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; corral's control socket directory "
                         f"must be 0700 (yours alone): chmod 700 {path}")


def _remove_directories(made: list[str]) -> None:
    for path in reversed(made):
        try:
            os.rmdir(path)
        except OSError:
            pass  # not empty (someone else's files, another instance's directory): keep it


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "special file"


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


# --------------------------------------------------------------------------- the lock


def _lock(socket_path: str) -> int | None:
    """Open and flock the lock file: its fd, or None if it vanished meanwhile (try again)."""
    lock_path = socket_path + LOCK_SUFFIX
    try:
        # O_NOFOLLOW: never open (and write our pid into) a file a symlink points at.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None  # an exiting instance removed the directory: make it again
    except OSError as exc:
        raise ClaimError(f"cannot open the lock file of the control socket, {lock_path}: {exc.strerror}; "
                         "remove it if it is not corral's, or set control_socket: elsewhere") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        holder = f"pid {pid}" if pid else "its lock is held"
        raise ClaimError(f"another corral is running with control socket {socket_path} ({holder}); stop it, "
                         "or give this one another name: -n NAME (or name:, or control_socket:)") from None
    except OSError as exc:
        os.close(fd)
        raise ClaimError(f"cannot lock {lock_path}: {exc.strerror}") from None
    if not _is_open_file(fd, lock_path):
        os.close(fd)  # we locked a file an exiting instance had just unlinked
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _is_open_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
