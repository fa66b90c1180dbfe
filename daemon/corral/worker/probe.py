"""The gate a new worker passes before it says ready: a warm-up request, then the health check.

Both are requests the worker sends to its own app. They must reach *this*
worker, never the shared public socket where an old-generation worker could
answer them. So each goes over a socket pair the worker makes: it hands one end
to its engine as a connection just accepted (``Server.serve_connection``) and
sends the request on the other. The request goes through the same HTTP parser,
app, response writer and deadlines as real traffic, and nothing else can ever
reach it: no address, no file, nothing left open after the gate. The gate's
requests are not traffic: they are left out of the access log, and the engine's
counters are zeroed afterwards (``max_requests``, the metrics and ``corral
status`` count from the first real request).

**Warm-up** (``warmup:``, on by default). Frameworks such as Django import
their URLconf, the views it names and their templates on the first request, not
at import: a deploy whose ``urls.py`` raises imports fine and would report
ready, then answer every request with 500. The warm-up sends one ``GET`` (``/``
by default) so that this lazy loading runs before the worker counts as ready:

* any status up to ``max_status`` (499) passes: a 404 for an app with nothing
  at ``/``, or a redirect to a login page, still proves the app's code loaded.
  Even Django's 400 for a Host outside ``ALLOWED_HOSTS`` imports the URLconf
  (to find its ``handler400``); the default Host is one the app accepts
  anyway, so that the real view runs and Django logs no ``DisallowedHost``;
* 503 is retried until ``timeout`` (an app may say "not yet" while it warms a
  cache);
* a redirect to the https URL of the same path (``SECURE_SSL_REDIRECT``) is
  sent again once with ``X-Forwarded-Proto: https``, which the engine believes
  from a unix-socket peer by default, so that the app's view runs;
* anything else above ``max_status``, or no answer within ``timeout``, fails.

A failed warm-up fails the boot only for a reload's new workers (the
supervisor says so with a ``reload_gate`` message): the old generation keeps
serving and the reload is refused. Elsewhere (the first start, a crashed
worker's replacement, a recycle) there is nothing better to serve with, so the
worker logs a warning and serves anyway, as uvicorn and gunicorn would.

**Health check** (``health_check:``, off by default): retried until it gets
exactly ``expect_status`` or ``health_check.timeout`` passes; it always fails
the boot. The last failure is the worker's boot error, which the supervisor
puts in STATUS and in the reload's answer.

None of this is a hot path: it runs once per worker boot.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from corral.engine import Server

log = logging.getLogger("corral.worker")

RETRY_INTERVAL = 0.25
MAX_RESPONSE_HEAD = 16384
# After the response head, the body is read for at most this long: an app that streams
# forever at the warm-up path has answered all the same.
BODY_GRACE = 5.0
USER_AGENT = "corral-health-check"
WARMUP_USER_AGENT = "corral-warmup"
UNAVAILABLE = 503  # "not yet": the warm-up asks again until its timeout
DEFAULT_HOST = "localhost"
ACCESS_LOGGER = logging.getLogger("corral.access")  # the engine's (corral.engine.accesslog)

# Opens a new connection to the app, already connected, for one request.
Connect = Callable[[], socket.socket]


class ProbeFailed(Exception):
    """The app did not answer the gate's request as expected; the message says what it did."""


class WarmupFailed(ProbeFailed):
    """The warm-up request got a status above ``warmup.max_status``, or no answer in time."""


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    location: str | None = None

    def describe(self) -> str:
        return f"{self.status} {self.reason}".rstrip()


@dataclass(frozen=True)
class Gate:
    """What a new worker must get through before it says ready (from its config)."""

    warmup: Mapping[str, Any] | None = None
    health_check: Mapping[str, Any] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Gate:
        return cls(config.get("warmup") or None, config.get("health_check") or None)

    def __bool__(self) -> bool:
        return bool(self.warmup or self.health_check)


class _DropAll(logging.Filter):
    """Drops every record: the gate's requests stay out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


async def run_gate(server: Server, gate: Gate, *, strict_warmup: bool) -> list[str]:
    """Send the warm-up, then the health check, to ``server`` (started up, not yet serving traffic).

    Returns a description of each passing answer. Raises ProbeFailed when the health
    check fails, and WarmupFailed when the warm-up does and ``strict_warmup`` is set;
    without it a failed warm-up is logged as a warning and the worker goes on.
    """

    def connect() -> socket.socket:
        ours, engines = socket.socketpair()
        server.serve_connection(engines)
        return ours

    passed: list[str] = []
    quiet = _DropAll()
    # Nothing else is served until the gate is over: every access line now is the gate's.
    ACCESS_LOGGER.addFilter(quiet)
    try:
        if gate.warmup:
            try:
                passed.append(await warm_up(connect, gate.warmup))
            except WarmupFailed as exc:
                if strict_warmup:
                    raise
                log.warning("%s; serving anyway (nothing older to fall back to; a reload would be refused)", exc)
        if gate.health_check:
            passed.append(await _until_passes(connect, gate.health_check))
        return passed
    finally:
        ACCESS_LOGGER.removeFilter(quiet)
        # The gate's requests are not traffic (a warm-up that timed out and was let through may
        # still finish later and count one response: that is the app's doing, and rare).
        server.stats.forget_requests()


# --------------------------------------------------------------------------- the warm-up


def app_host() -> str:
    """A Host the app accepts: the first usable entry of Django's ``ALLOWED_HOSTS`` when the app is a
    configured Django project, else ``localhost`` (which Django also accepts with ``DEBUG`` on)."""
    conf = sys.modules.get("django.conf")
    settings = getattr(conf, "settings", None)
    try:
        if settings is None or not settings.configured:
            return DEFAULT_HOST
        hosts = [str(entry).strip() for entry in settings.ALLOWED_HOSTS]
    except Exception:  # noqa: BLE001  the app's settings run its code and may raise anything; the warm-up request will show the app's error
        return DEFAULT_HOST
    for entry in hosts:
        if entry == "*":
            return DEFAULT_HOST
        entry = entry.removeprefix(".")  # ".example.com" also matches example.com itself
        if entry and "*" not in entry:
            return entry
    return DEFAULT_HOST


async def warm_up(connect: Connect, settings: Mapping[str, Any]) -> str:
    """Send the warm-up request until it passes; returns a description, raises WarmupFailed."""
    path = str(settings.get("path") or "/")
    host = str(settings.get("host") or app_host())
    max_status = int(settings.get("max_status", 499))
    timeout = float(settings.get("timeout", 30.0))
    deadline = time.monotonic() + timeout
    what = f"warm-up GET {path} (Host: {host})"
    headers: dict[str, str] = {}
    attempts = 0
    while True:
        attempts += 1
        try:
            answer = await asyncio.wait_for(_request(connect, path, host, WARMUP_USER_AGENT, headers),
                                            max(deadline - time.monotonic(), 0.05))
        except TimeoutError:
            raise WarmupFailed(f"{what}: no answer within warmup.timeout={timeout:g}s") from None
        except (OSError, ValueError) as exc:
            last = f"the request failed: {exc}"
        else:
            if _https_upgrade(answer, path) and not headers:
                headers["X-Forwarded-Proto"] = "https"  # behind a TLS proxy: ask as the proxy would
                continue
            if answer.status <= max_status:
                return f"{what} -> {answer.describe()}"
            if answer.status != UNAVAILABLE:
                raise WarmupFailed(f"{what} answered {answer.describe()}, above warmup.max_status={max_status}: "
                                   "the new code fails its first request (the app's traceback is in the log; "
                                   f"if the app serves nothing at {path}, set warmup.path to a page it serves, "
                                   "or warmup: false)")
            last = f"answered {answer.describe()}"
        if time.monotonic() + RETRY_INTERVAL >= deadline:
            raise WarmupFailed(f"{what} failed after {attempts} attempt{'s' if attempts != 1 else ''} "
                               f"in warmup.timeout={timeout:g}s: {last}")
        await asyncio.sleep(RETRY_INTERVAL)


def _https_upgrade(answer: Answer, path: str) -> bool:
    return is_https_upgrade(answer.status, answer.location, path)


def is_https_upgrade(status: int, location: str | None, path: str) -> bool:
    """A redirect to the https URL of the very path asked for (a plain-http request refused)."""
    if not 300 <= status < 400 or not location:
        return False
    target = urlsplit(location)
    return target.scheme == "https" and (target.path or "/") == (urlsplit(path).path or "/")


# --------------------------------------------------------------------------- the health check


async def _until_passes(connect: Connect, check: Mapping[str, Any]) -> str:
    path = str(check.get("path", "/"))
    expect = int(check.get("expect_status", 200))
    timeout = float(check.get("timeout", 10.0))
    host = str(check.get("host") or DEFAULT_HOST)
    deadline = time.monotonic() + timeout
    attempts = 0
    last = "no answer"
    while True:
        attempts += 1
        left = deadline - time.monotonic()
        try:
            answer = await asyncio.wait_for(_request(connect, path, host, USER_AGENT), max(left, 0.05))
        except TimeoutError:
            last = f"no answer within health_check.timeout={timeout:g}s"
        except (OSError, ValueError) as exc:
            last = f"the request failed: {exc}"
        else:
            if answer.status == expect:
                return f"GET {path} -> {answer.describe()}"
            last = f"answered {answer.describe()}, expected {expect}"
        if time.monotonic() + RETRY_INTERVAL >= deadline:
            raise ProbeFailed(f"health check GET {path} failed after {attempts} attempt"
                              f"{'s' if attempts != 1 else ''} in {timeout:g}s: {last}")
        await asyncio.sleep(RETRY_INTERVAL)


# --------------------------------------------------------------------------- one request


async def _request(connect: Connect, path: str, host: str, agent: str,
                   headers: Mapping[str, str] | None = None) -> Answer:
    """One GET over a new connection. Not a hot path.

    A bare non-blocking socket and the loop's ``sock_*`` calls, not asyncio's streams: a forked
    worker would copy the pages of every stream class and method it runs, for one request."""
    loop = asyncio.get_running_loop()
    with connect() as sock:
        sock.setblocking(False)
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n{extra}"
                                      "Connection: close\r\n\r\n".encode("latin-1"))
        head = bytearray()
        while (end := head.find(b"\r\n\r\n")) < 0:
            if len(head) > MAX_RESPONSE_HEAD:
                raise ValueError(f"the response head is over {MAX_RESPONSE_HEAD} bytes")
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                if not head:
                    raise ValueError("the connection closed without a response")
                break
            head += chunk
        answer = parse_head(bytes(head if end < 0 else head[:end]))
        # Read the rest, so that the app's response completes normally; the body is not needed.
        try:
            await asyncio.wait_for(_drain(loop, sock), BODY_GRACE)
        except TimeoutError:
            pass
        return answer


def parse_head(head: bytes) -> Answer:
    """The status line and the Location header of a response head (without its blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    location = None
    for header in lines[1:]:
        name, _, value = header.partition(":")
        if name.strip().lower() == "location":
            location = value.strip()
    return Answer(int(parts[1]), parts[2] if len(parts) > 2 else "", location)


async def _drain(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    while await loop.sock_recv(sock, 65536):
        pass
