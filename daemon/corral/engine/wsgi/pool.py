"""Where WSGI apps run: a fixed pool of threads, and a watch on request deadlines.

``threads: N`` runs each request on one of N threads of this worker. The pool
never grows: the protocol counts requests handed to it and stops the worker
accepting connections while every thread is busy (see ``WSGIRunner``), so a
worker that cannot run more work leaves new connections in the kernel backlog
for its siblings instead of queueing them.

A WSGI call cannot be cancelled. :class:`DeadlineWatch` is a daemon thread
(so it still runs while an inline app blocks the event loop) that notices a
request running past ``request_timeout``, logs the stuck thread's stack, and
reports it once, so the worker can be recycled gracefully.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import traceback
from typing import Callable

log = logging.getLogger("corral.engine.wsgi")

Job = Callable[[], None]


class ThreadPool:
    """N daemon threads running jobs from one queue.

    Daemon threads: a request stuck in the app must not keep a recycled
    worker process alive after its graceful drain is over.
    """

    def __init__(self, threads: int, name: str = "corral-wsgi") -> None:
        if threads < 1:
            raise ValueError(f"threads: {threads} is not a pool size; use 0 for inline mode or N >= 1")
        self.size = threads
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; one of the threads runs it. Jobs handle their own errors."""
        self._queue.put(job)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            try:
                job()
            except BaseException:  # a job escaping its own handler is a corral bug: keep the thread
                log.exception("internal error in a WSGI worker thread")

    def shutdown(self, timeout: float = 0.0) -> list[str]:
        """Stop the threads once their queued jobs are done; names of those still busy after ``timeout``."""
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]


class DeadlineWatch:
    """Reports requests that run longer than ``timeout`` seconds, once each.

    Runners call :meth:`begin` / :meth:`end` around the app call (from the
    thread that runs it: a dict store, cheap enough for the hot path).
    ``on_stuck(label, elapsed, stack)`` runs on the watch thread.
    """

    def __init__(self, timeout: float, on_stuck: Callable[[str, float, str], None]) -> None:
        self.timeout = timeout
        self._on_stuck = on_stuck
        self._active: dict[int, tuple[float, str]] = {}
        self._reported: set[tuple[int, float]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corral-wsgi-deadline", daemon=True)
        self._thread.start()

    def begin(self, label: str) -> None:
        self._active[threading.get_ident()] = (time.monotonic(), label)

    def end(self) -> None:
        self._active.pop(threading.get_ident(), None)

    def _run(self) -> None:
        interval = min(1.0, max(0.05, self.timeout / 4))
        while not self._stop.wait(interval):
            self.check()

    def check(self) -> None:
        """Report every request now past its deadline that was not reported yet."""
        now = time.monotonic()
        # list() of a dict view runs in C under the GIL: a consistent snapshot
        # even while request threads add and remove entries.
        snapshot = list(self._active.items())
        for ident, (started, label) in snapshot:
            key = (ident, started)
            if now - started <= self.timeout or key in self._reported:
                continue
            self._reported.add(key)
            frame = sys._current_frames().get(ident)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(thread finished)\n"
            try:
                self._on_stuck(label, now - started, stack)
            except Exception:
                log.exception("internal error while reporting a stuck WSGI request")
        # Forget reports about requests that have finished.
        live = {(i, s) for i, (s, _) in snapshot}
        self._reported &= live

    def stop(self) -> None:
        self._stop.set()
