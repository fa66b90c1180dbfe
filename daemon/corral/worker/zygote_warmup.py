"""The warm-up request sent once in a preloading zygote (``preload_warmup: true``).

Django imports its URLconf, the views it names, their templates and much of itself on the
first request, not at import. A worker that does that after the fork holds its own copy of all
of it: 3 MiB per worker for a bare ``startproject`` admin page, far more for a real project. Sent
once in the zygote, before any worker is forked, that first request's imports and caches are in
the zygote's memory, which every worker shares.

The zygote holds no event loop, so this is a plain PEP 3333 call of the app (no socket, no
engine): WSGI apps only. The zygote must fork nothing it cannot share, so the request must leave
no thread and no open file descriptor behind (a database connection kept open, a file); if it
does, :func:`warm_up` raises :class:`WarmupRefused` naming them, and the zygote refuses to start
workers, as it does for an app that starts a thread at import. The request's status is only
logged: each worker still sends its own warm-up through its own engine, which is the gate that
decides (``corral.worker.probe``).

Not a hot path: it runs once per zygote.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from corral.engine.wsgi.environ import build_environ, environ_base
from corral.engine.wsgi.filewrapper import FileWrapper
from corral.metrics.procfs import thread_ids
from corral.worker.probe import WARMUP_USER_AGENT, app_host, is_https_upgrade

log = logging.getLogger("corral.zygote")

# How many times the request is sent. CPython 3.11 rewrites a function's bytecode in place
# (specialises it) once it has run a few times (8 calls before quickening): a worker that does
# this itself copies the pages that bytecode is on. Ten requests in the zygote leave the workers
# fewer to copy: 1.4-1.8 MiB less for the Django tree of docs/zygote.md, against one request.
REPEATS = 10


class WarmupRefused(Exception):
    """The warm-up could not run in the zygote, or left behind what a fork must not copy."""


class WarmupTimeout(BaseException):
    """Raised in the zygote's only thread by SIGALRM once ``warmup.timeout`` has passed (a
    BaseException, so that the app's own ``except Exception`` does not turn it into a 500)."""


def warm_up(app: Callable[..., Any], interface: str, settings: Mapping[str, Any]) -> str:
    """Send the warm-up request to ``app`` (REPEATS times while it answers 2xx or 3xx, all within
    ``timeout``); returns what it last answered, raises WarmupRefused."""
    if interface != "wsgi":
        raise WarmupRefused(
            "preload_warmup runs WSGI apps only, and this app is ASGI: an ASGI request needs an event "
            "loop, which the zygote must not hold when it forks; set preload_warmup: false")
    path = str(settings.get("path") or "/")
    host = str(settings.get("host") or app_host())
    timeout = float(settings.get("timeout", 30.0))
    fds_before = open_fds()
    threads_before = thread_ids("self")
    start = time.monotonic()
    scheme = "http"
    status, location = _call(app, path, host, scheme, timeout)
    if is_https_upgrade(status, location, path):  # behind a TLS proxy: ask as the proxy would
        scheme = "https"
        status, location = _call(app, path, host, scheme, max(timeout - (time.monotonic() - start), 0.1))
    sent = 1
    while sent < REPEATS:
        left = timeout - (time.monotonic() - start)
        # Only a page that answers is asked again: an error would not settle anything, and an
        # app logs each 404 or 500 (Django: "Not Found: /"), which ten times is noise.
        if not 200 <= status < 400 or left <= 0:
            break
        status, location = _call(app, path, host, scheme, left)
        sent += 1
    what = f"GET {path} (Host: {host}) -> {status or 'no answer'}"
    leftovers = _leftovers(fds_before, threads_before)
    if leftovers:
        # Garbage the request left (Django's request and response hold reference cycles) may hold
        # the only reference to an open file. Only collected when something is left: the holes a
        # collection leaves are where the workers' first allocations go, copying those pages.
        gc.collect()
        leftovers = _leftovers(fds_before, threads_before)
    if leftovers:
        raise WarmupRefused(
            f"preload_warmup refused: the warm-up request in the zygote ({what}) left {leftovers} behind; "
            "a fork would share it between every worker. Close connections and files at the end of each "
            "request (Django does unless CONN_MAX_AGE is set), or set preload_warmup: false")
    return f"{what}, {sent} request{'s' if sent > 1 else ''} in {time.monotonic() - start:.2f}s"


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each one is (``/proc/self/fd``)."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory's own fd, closed once listed
            continue
    return fds


def _leftovers(fds_before: Mapping[int, str], threads_before: set[int]) -> str:
    new_fds = [f"fd {fd} ({target})" for fd, target in sorted(open_fds().items())
               if fds_before.get(fd) != target]
    names = {t.native_id: t.name for t in threading.enumerate()}
    new_threads = [f"thread {names[tid]!r}" if tid in names else f"thread {tid} (not started by Python)"
                   for tid in sorted(thread_ids("self") - threads_before)]
    return ", ".join(new_fds + new_threads)


def _call(app: Callable[..., Any], path: str, host: str, scheme: str, timeout: float) -> tuple[int, str | None]:
    """One GET through the app, body read to its end; (status or 0, Location header or None)."""
    base = environ_base(None, None, scheme, "", False, True, FileWrapper)
    target = urlsplit(path)
    headers = [(b"host", host.encode("latin-1")), (b"user-agent", WARMUP_USER_AGENT.encode())]
    if scheme == "https":
        headers.append((b"x-forwarded-proto", b"https"))
    environ = build_environ(base, "GET", (target.path or "/").encode("latin-1"), target.query.encode("latin-1"),
                            "1.1", headers, io.BytesIO())
    environ["REMOTE_ADDR"] = "127.0.0.1"
    answer: dict[str, Any] = {"status": 0, "location": None}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[
            [bytes], None]:
        answer["status"] = int(status.split(None, 1)[0])
        answer["location"] = next((v for k, v in response_headers if k.lower() == "location"), None)
        return lambda data: None

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    result: Iterable[bytes] | None = None
    try:
        result = app(environ, start_response)
        for _chunk in result:
            pass
    except WarmupTimeout:
        log.warning("the warm-up request in the zygote (GET %s) had not ended after warmup.timeout=%gs; "
                    "stopped there (each worker's own warm-up decides)", path, timeout)
    except Exception:  # the app's error: each worker's own warm-up reports it as the gate's failure
        log.warning("the warm-up request in the zygote (GET %s) raised; each worker's own warm-up will "
                    "tell whether the app serves", path, exc_info=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            close = getattr(result, "close", None)
            if close is not None:
                close()  # Django sends request_finished here, which closes its database connection
        except Exception:  # as above
            log.warning("closing the warm-up response in the zygote raised", exc_info=True)
        finally:
            signal.signal(signal.SIGALRM, previous)
    return answer["status"], answer["location"]


def _alarm(signum: int, frame: Any) -> None:
    raise WarmupTimeout
