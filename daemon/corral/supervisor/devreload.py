"""``corral run --reload``: reload the app when a watched file changes (development).

A change runs the same reload transaction as ``systemctl reload`` (``reload.py``): a new
generation boots beside the serving one and takes over only once it is ready. So, unlike a
server that restarts itself on a change, the listening socket never closes, requests in
flight finish on the old workers, and new code that does not import (a syntax error, an
import error, a failing warm-up) leaves the last good code serving: the error is printed
once, in a banner on stderr, and the next save that fixes it reloads.

The watcher is ``watchfiles`` (the ``dev`` extra), run in a thread of its own: its Rust
notifier blocks, and the thread only hands each batch of changes to the supervisor's loop
(``call_soon_threadsafe``). Everything else happens on that loop. One dev reload runs at a
time; changes that arrive meanwhile are collected and coalesce into one more reload when
it is over. The supervisor still never imports the app: the banner finds a syntax error's
file and line by compiling the changed files (parsing only, nothing runs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from corral.config import Config
from corral.logs import print_error
from corral.supervisor.state import Phase, ReloadOutcome

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["BANNER_TITLE", "DevReloadError", "DevReloadHost", "DevReloader", "WatchFilter", "WatchPlan", "start"]

log = logging.getLogger("corral.devreload")

INSTALL_HINT = "pip install 'corral[dev]'"
BANNER_TITLE = "RELOAD FAILED"  # what a developer's eye (and the tests) look for on stderr
RULE = "=" * 72
DEFAULT_INCLUDES = ("*.py",)
# uvicorn's: hidden files, compiled files, vim swap files, backups.
DEFAULT_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")
# How long watchfiles waits for a burst of changes (an editor's write-then-rename, a `git
# checkout`) to settle before it reports them: short, since it adds to every reload.
STEP_MS = 50
DEBOUNCE_MS = 1600  # the longest a continuous stream of changes delays the report
# Never walked for a syntax error at start (watchfiles' DefaultFilter skips them too).
IGNORED_DIRS = frozenset({"__pycache__", "node_modules", "venv", "site-packages", "build", "dist"})
WAKE_MS = 200
STOP_WAIT = 2.0  # seconds stop() waits for the watcher thread (it checks its stop flag every STEP_MS)


class DevReloadError(Exception):
    """``--reload`` cannot work as configured; the message names the fix."""


class DevReloadHost(Protocol):
    """What the dev reloader needs from the supervisor (``Supervisor``)."""

    phase: Phase

    def start_reload(self, waiter: asyncio.Future[ReloadOutcome] | None = None, notify: bool = True) -> None: ...
    def retry_boot(self) -> None:
        """Nothing could boot yet: start the first workers again (with the code now on disk)."""
        ...


@dataclass(frozen=True)
class WatchFilter:
    """Which changed paths reload, as uvicorn's ``--reload-include``/``--reload-exclude`` decide:
    a path must match an include pattern and no exclude pattern, nor lie under an excluded
    directory. Patterns match from the right of the path (``PurePath.match``): ``*.html``,
    ``templates/*.txt``."""

    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    exclude_dirs: tuple[Path, ...]

    @classmethod
    def from_config(cls, config: Config) -> WatchFilter:
        from pathlib import Path  # only with --reload: the supervisor never loads pathlib otherwise

        base = Path(config.app_dir)
        includes = [p for p in DEFAULT_INCLUDES if p not in config.reload_excludes]
        includes += [p for p in config.reload_includes if p not in includes]
        excludes = [p for p in DEFAULT_EXCLUDES if p not in config.reload_includes]
        exclude_dirs: list[Path] = []
        for pattern in config.reload_excludes:
            if pattern in DEFAULT_INCLUDES:
                continue  # excluding *.py removes it from the includes (above), it excludes nothing else
            directory = base / pattern
            if directory.is_dir():
                exclude_dirs.append(directory.resolve())
            elif pattern not in excludes:
                excludes.append(pattern)
        return cls(tuple(includes), tuple(excludes), tuple(exclude_dirs))

    def __call__(self, path: str) -> bool:
        from pathlib import PurePath

        pure = PurePath(path)
        if not any(pure.match(pattern) for pattern in self.includes):
            return False
        if any(directory in pure.parents for directory in self.exclude_dirs):
            return False
        # An include that names the file exactly (`--reload-include .env`) wins over the exclusion
        # of hidden files.
        if any(pure.name == pattern for pattern in self.includes):
            return True
        return not any(pure.match(pattern) for pattern in self.excludes)


@dataclass(frozen=True)
class WatchPlan:
    """The directories watched and the filter of their changes."""

    dirs: tuple[Path, ...]
    filter: WatchFilter

    @classmethod
    def from_config(cls, config: Config) -> WatchPlan:
        from pathlib import Path  # only with --reload: the supervisor never loads pathlib otherwise

        base = Path(config.app_dir)
        dirs: list[Path] = []
        for name in config.reload_dirs or (config.app_dir,):
            path = (base / name).resolve()
            if not path.is_dir():
                raise DevReloadError(f"reload_dirs: {path} is not a directory; give directories that exist "
                                     f"(relative paths are taken from app_dir {base})")
            # A directory under another one is watched already (watchfiles recurses).
            if path not in dirs and not any(d in path.parents for d in dirs):
                dirs = [d for d in dirs if path not in d.parents] + [path]
        return cls(tuple(dirs), WatchFilter.from_config(config))

    def files(self, most: int = 2000) -> list[str]:
        """The watched files there are now (at most ``most``: a virtualenv under app_dir not
        named .venv is no reason to parse all of site-packages)."""
        found: list[str] = []
        for top in self.dirs:
            for root, subdirs, names in os.walk(top):
                subdirs[:] = [d for d in subdirs if d not in IGNORED_DIRS and not d.startswith(".")]
                found += [path for name in names if self.filter(path := os.path.join(root, name))]
                if len(found) >= most:
                    return found[:most]
        return found

    def describe(self) -> str:
        where = ", ".join(map(str, self.dirs))
        what = ", ".join(self.filter.includes) or "nothing"
        return f"{where} ({what})"


@dataclass(frozen=True)
class SyntaxProblem:
    """Where a file does not parse: what the banner shows."""

    path: str
    line: int
    column: int
    text: str
    message: str

    def lines(self) -> list[str]:
        out = [f'  File "{self.path}", line {self.line}']
        if self.text.strip():
            stripped = self.text.rstrip("\n")
            indent = len(stripped) - len(stripped.lstrip())
            out.append("    " + stripped.strip())
            if self.column > 0:
                out.append("    " + " " * max(self.column - 1 - indent, 0) + "^")
        out.append(f"  SyntaxError: {self.message}")
        return out


def find_syntax_error(paths: Iterable[str]) -> SyntaxProblem | None:
    """The first of ``paths`` (Python files) that does not parse, found by compiling it: the
    supervisor parses, never runs, the app's code."""
    for path in sorted(paths):
        if not path.endswith(".py"):
            continue
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError:
            continue  # deleted since: an import error, if anything, names it
        try:
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            return SyntaxProblem(exc.filename or path, exc.lineno or 0, exc.offset or 0, exc.text or "", exc.msg)
        except ValueError:
            continue  # null bytes: the worker's import reports it
    return None


class DevReloader:
    """Watches files in a thread; on the supervisor's loop, turns each batch of changes into a
    reload transaction, one at a time, and reports a failed one once."""

    def __init__(self, host: DevReloadHost, plan: WatchPlan, loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.plan = plan
        self.loop = loop
        self.changed: set[str] = set()  # seen since the running reload started: the next one's cause
        self.suspects: set[str] = set()  # changed since the code last loaded: where a syntax error may be
        self.running: asyncio.Future[ReloadOutcome] | None = None
        self.started_at = 0.0
        self.cause: list[str] = []
        self.last_error: str | None = None  # the banner's error, printed once; None: the code loads
        self.never_booted = False  # the code was broken at start: a save retries the first boot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the watcher thread

    def start(self) -> None:
        try:
            import watchfiles
        except ImportError as exc:
            raise DevReloadError(f"--reload needs the watchfiles package, which cannot be imported ({exc}): "
                                 f"{INSTALL_HINT}") from None
        # watchfiles logs "1 change detected" at INFO for every batch: our own line says which files.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        default = watchfiles.DefaultFilter()  # __pycache__, .git, .venv, node_modules, ...
        ours = self.plan.filter

        def wanted(change: Any, path: str) -> bool:
            return default(change, path) and ours(path)

        self._thread = threading.Thread(target=self._watch, args=(watchfiles.watch, wanted), daemon=True,
                                        name="corral-devreload")
        self._thread.start()

    def _watch(self, watch: Any, wanted: Any) -> None:
        watching = False
        try:
            # yield_on_timeout: an empty batch every WAKE_MS of quiet, the first of which says that
            # the watches are in place (watchfiles sets them up on the first iteration).
            for changes in watch(*self.plan.dirs, watch_filter=wanted, debounce=DEBOUNCE_MS, step=STEP_MS,
                                 stop_event=self._stop, raise_interrupt=False, ignore_permission_denied=True,
                                 yield_on_timeout=True, rust_timeout=WAKE_MS):
                if not watching:
                    watching = True
                    log.info("reload: watching %s for changes (development mode)", self.plan.describe())
                paths = {path for _change, path in changes}
                if paths and not self._post(paths):
                    return
        except Exception:
            # The watcher's failure must be seen, not kill the server: it keeps serving unwatched.
            log.exception("reload: the file watcher failed; changes are no longer picked up (restart corral)")

    def _post(self, paths: set[str]) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.on_changes, paths, time.monotonic())
        except RuntimeError:
            return False  # the loop is closed: corral is exiting
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_WAIT)

    # ------------------------------------------------------------------ on the supervisor's loop

    def on_changes(self, paths: set[str], seen: float | None = None) -> None:
        """Files changed: reload, or, with one under way, reload once more after it."""
        if self.host.phase is Phase.STOPPING or self._stop.is_set():
            return
        self.changed |= paths
        if self.never_booted:
            self._retry_boot()
        elif self.running is None:
            self._begin(seen)

    def boot_failed(self, error: str) -> None:
        """No worker could boot at start (the supervisor would exit): wait for a save instead."""
        self.never_booted = True
        self._report(ReloadOutcome(False, 0, error), starting=True)

    def _retry_boot(self) -> None:
        if self.host.phase is not Phase.STARTING:  # it booted: from now on a save is a reload
            self.never_booted = False
            self.last_error = None
            self._begin()
            return
        self.cause = sorted(self.changed)
        self.suspects |= self.changed
        self.changed = set()
        log.info("reload: %s changed; starting the app again", _describe_paths(self.cause))
        self.host.retry_boot()

    def _begin(self, seen: float | None = None) -> None:
        self.cause = sorted(self.changed)
        self.suspects |= self.changed
        self.changed = set()
        self.started_at = seen if seen is not None else time.monotonic()
        log.info("reload: %s changed; reloading", _describe_paths(self.cause))
        waiter = self.running = self.loop.create_future()
        waiter.add_done_callback(self._finished)
        self.host.start_reload(waiter)

    def _finished(self, waiter: asyncio.Future[ReloadOutcome]) -> None:
        self.running = None
        if waiter.cancelled() or self.host.phase is Phase.STOPPING:
            return
        outcome = waiter.result()
        elapsed = time.monotonic() - self.started_at
        if outcome.ok:
            fixed = self.last_error is not None
            self.last_error = None
            self.suspects.clear()
            log.info("reload: new code serving %.0f ms after the change was seen (%s)%s", elapsed * 1000,
                     outcome.message, "; the error is fixed" if fixed else "")
        else:
            self._report(outcome)
        if self.changed:  # saved again meanwhile: one more reload for all of it
            self._begin()

    def _report(self, outcome: ReloadOutcome, starting: bool = False) -> None:
        error = outcome.message
        # At start nothing has changed yet: any watched file may be the broken one.
        problem = find_syntax_error(self.suspects or (self.plan.files() if starting else ()))
        if problem is not None and problem.message not in error:
            problem = None  # a file that does not parse, but not the one the worker failed on
        # The same error as the last banner, whatever the generation numbers in the message say.
        key = repr(problem) if problem is not None else re.sub(r"\d+", "#", error)
        if key == self.last_error:
            # The same error again (saved a file that does not fix it): one line, not another banner.
            where = f" ({problem.path}, line {problem.line})" if problem is not None else ""
            print_error(f"corral: reload failed again, same error as above{where}; "
                        + ("nothing serves yet" if starting else "the last good code still serves"))
            return
        self.last_error = key
        if starting:
            head = "the app does not load, so nothing serves yet (the port accepts, nobody answers)."
        else:
            head = f"the last good code (generation {outcome.generation}) keeps serving."
        lines = [RULE, f"{BANNER_TITLE}: {head}"]
        if self.cause:
            lines.append(f"Changed: {_describe_paths(self.cause)}")
        if problem is not None:
            lines += problem.lines()
        else:
            lines += [f"Error: {error}", "The app's traceback, if it has one, is above (the new worker's log)."]
        lines += ["Fix it and save: the next change reloads.", RULE]
        print_error("\n".join(lines))


def start(host: DevReloadHost, config: Config) -> DevReloader | None:
    """The dev reloader for ``config`` (started), or None when ``reload`` is off. Raises
    DevReloadError (with the fix) when it cannot watch. Call it on the supervisor's loop."""
    if not config.reload:
        unused = sorted(k for k in ("reload_dirs", "reload_includes", "reload_excludes") if k in config.explicit)
        if unused:
            log.warning("%s set but reload is off: nothing is watched (add --reload)", ", ".join(unused))
        return None
    reloader = DevReloader(host, WatchPlan.from_config(config), asyncio.get_running_loop())
    reloader.start()
    return reloader


def _describe_paths(paths: Sequence[str], most: int = 3) -> str:
    cwd = os.getcwd()
    shown = [os.path.relpath(p, cwd) if p.startswith(cwd + os.sep) else p for p in paths[:most]]
    more = len(paths) - most
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
