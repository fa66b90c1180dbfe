"""Where WSGI apps run: a fixed pool of threads, and a watch on request deadlines.

``threads: N`` runs each request on one of N threads of this worker. The pool
never grows: the protocol counts requests handed to it and stops the worker
accepting connections while every thread is busy (see ``interface.WSGIInterface``), so a
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
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("corral.engine.wsgi")

Job = Callable[[Any], None]


class ThreadPool:
    """N daemon threads running jobs from one queue.

    Daemon threads: a request stuck in the app must not keep a recycled
    worker process alive after its graceful drain is over.
    """

    def __init__(self, threads: int, name: str = "corral-wsgi") -> None:
        if threads < 1:
            raise ValueError(f"threads: {threads} is not a pool size; use 0 for inline mode or N >= 1")
        self.size = threads
        self._queue: queue.SimpleQueue[tuple[Job, Any] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job, arg: Any) -> None:
        """Queue ``job(arg)``; one of the threads runs it. Jobs handle their own errors. Hot path."""
        self._queue.put((job, arg))

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            try:
                item[0](item[1])
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

    ``sample()`` returns the requests running now as ``(key, thread ident,
    monotonic start, request object)``; it is called from the watch thread,
    so it must only read. ``on_stuck(request, elapsed, stack)`` runs on the
    watch thread too, with the formatted stack of the thread running it.
    """

    def __init__(self, timeout: float, sample: Callable[[], Iterable[tuple[Any, int, float, Any]]],
                 on_stuck: Callable[[Any, float, str], None]) -> None:
        self.timeout = timeout
        self._sample = sample
        self._on_stuck = on_stuck
        self._reported: set[Any] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corral-wsgi-deadline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = min(1.0, max(0.05, self.timeout / 4))
        while not self._stop.wait(interval):
            try:
                self.check()
            except Exception:
                log.exception("internal error while checking WSGI request deadlines")

    def check(self) -> None:
        """Report every request now past its deadline that was not reported yet."""
        now = time.monotonic()
        live = set()
        for key, ident, started, request in list(self._sample()):
            live.add(key)
            if not started or now - started <= self.timeout or key in self._reported:
                continue
            self._reported.add(key)
            frame = sys._current_frames().get(ident)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(thread finished)\n"
            self._on_stuck(request, now - started, stack)
        self._reported &= live  # forget requests that have finished

    def stop(self) -> None:
        self._stop.set()
