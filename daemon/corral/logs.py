"""Logging set-up shared by the supervisor and the workers.

Under systemd (JOURNAL_STREAM set and pointing at our stderr) each line starts with
a syslog priority prefix such as ``<3>`` and carries no timestamp: journald adds its
own, and a second one only clutters ``journalctl``. Elsewhere lines are timestamped
for humans.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NamedTuple

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal() -> bool:
    """True when stderr is the journald stream systemd connected us to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class JournalFormatter(logging.Formatter):
    """``<N>name: message``: the prefix becomes the journal PRIORITY field."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # Every physical line needs its own prefix, or journald files tracebacks at <6>.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


ACCESS_LOGGER = "corral.access"


def _writes_stdio(handler: logging.Handler) -> bool:
    """Whether ``handler`` writes to this process's stdout or stderr (and so to corral's output)."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    try:
        return handler.stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):
        return False


class NotWrittenByTheApp(logging.Filter):
    """Drops a record that a handler of the app's own already wrote to stdout or stderr.

    An app logger with a stderr handler of its own (the usual Django ``LOGGING``)
    still propagates to the root logger, where corral's handler would write the
    same record a second time. A record that the app's handlers send elsewhere
    (a file, mail, nowhere: a NullHandler) is still corral's to write.
    Not a hot path: the access log has a logger of its own that does not propagate.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger.parent is not None:  # up to, not including, the root
            for handler in logger.handlers:
                if record.levelno >= handler.level and _writes_stdio(handler) and handler.filter(record):
                    return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def print_error(message: str) -> None:
    """Write a last word (corral exits right after) to stderr, bypassing logging, which may
    not be set up yet; under journald at priority err, like a logged error."""
    prefix = f"<{_PRIORITY[logging.ERROR]}>" if stderr_is_journal() else ""
    print("\n".join(prefix + line for line in message.splitlines() or [""]), file=sys.stderr, flush=True)


class LogSetup(NamedTuple):
    """What :func:`setup_logging` installs, built ahead: a zygote builds its workers' before it
    forks them, since building handlers in a forked worker copies pages it shares with the zygote."""

    level: int
    handler: logging.Handler  # the root logger's
    access_handler: logging.Handler  # the access log's (logger ``corral.access``)


def setup_logging(level: str = "info", *, role: str = "corral") -> None:
    """Configure the root logger to write to stderr in the right dialect.

    The access log (logger ``corral.access``, used only when ``access_log`` is on)
    writes its lines bare: they carry their own timestamp, and ``json`` lines must
    stay one JSON object per line. It logs at INFO whatever ``level`` is, as an
    access log is wanted or switched off as a whole.
    """
    install_logging(log_setup(level, role=role))


def log_setup(level: str = "info", *, role: str = "corral") -> LogSetup:
    """The handlers :func:`setup_logging` installs for ``role``, not installed yet."""
    journal = stderr_is_journal()
    handler = logging.StreamHandler(sys.stderr)
    if journal:
        handler.setFormatter(JournalFormatter(f"{role}[%(process)d]: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)-7s {role}[%(process)d]: %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S",
            )
        )
    handler.addFilter(NotWrittenByTheApp())
    access_handler = logging.StreamHandler(sys.stderr)
    access_handler.setFormatter(JournalFormatter("%(message)s") if journal else logging.Formatter("%(message)s"))
    return LogSetup(logging.getLevelName(level.upper()), handler, access_handler)


def install_logging(setup: LogSetup) -> None:
    """Make ``setup``'s handlers the root logger's and the access log's."""
    root = logging.getLogger()
    root.handlers[:] = [setup.handler]
    _set_level(root, setup.level)
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers[:] = [setup.access_handler]
    access.propagate = False
    _set_level(access, logging.INFO)


def _set_level(logger: logging.Logger, level: int) -> None:
    """``setLevel`` only where the level changes: it clears the cache of every logger there is,
    which in a worker forked from a zygote writes to (and so copies) the pages of each one."""
    if logger.level != level:
        logger.setLevel(level)


def reopen_log_files() -> int:
    """Reopen every logging.FileHandler (on USR1, after logrotate moved the files away).

    corral itself logs to stderr; the file handlers are the app's own (a Django
    LOGGING dict, say), on any logger. Returns how many were reopened.
    """
    loggers = [logging.getLogger()] + [
        obj for obj in logging.Logger.manager.loggerDict.values() if isinstance(obj, logging.Logger)]
    reopened = 0
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    handler.close()
                    handler.stream = handler._open()
                    reopened += 1
                finally:
                    handler.release()
    return reopened
