"""The warm-up gate in process: a real engine serving a toy ASGI app over the gate's socket pairs.

What passes (any status up to max_status), what is asked again (503, an https redirect of the
same path), what fails (a 5xx, no answer in time), a failure let through outside a reload, the
counters zeroed afterwards, the Host taken from Django's ALLOWED_HOSTS, and the config key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
import time
import types
from typing import Any

import pytest
import uvloop

from corral.config import ConfigError, load
from corral.engine import Server
from corral.engine.settings import EngineSettings
from corral.worker import probe


class App:
    """Answers ``/`` from a script of statuses (the last one repeats); records what it was asked."""

    def __init__(self, *statuses: int, location: str | None = None, delay: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.location = location
        self.delay = delay
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"path": scope["path"], "scheme": scope["scheme"], "host": headers.get("host"),
                          "agent": headers.get("user-agent")})
        await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        extra = []
        if 300 <= status < 400 and self.location and scope["scheme"] == "http":
            extra = [(b"location", self.location.encode())]
        elif 300 <= status < 400:
            status = 200  # asked over https: the page itself
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"2"), *extra]})
        await send({"type": "http.response.body", "body": b"ok"})


def gate(app: App, warmup: dict[str, Any] | None, *, strict: bool = True,
         health_check: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Run the gate against ``app`` as a worker does; returns what passed and the engine's counters."""

    async def main() -> tuple[list[str], dict[str, Any]]:
        server = Server(app, EngineSettings(), "asgi")
        await server.startup()
        try:
            passed = await probe.run_gate(server, probe.Gate(warmup, health_check), strict_warmup=strict)
            return passed, dict(server.stats.snapshot())
        finally:
            await server.shutdown(1)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


WARMUP = {"path": "/", "host": "app.test", "max_status": 499, "timeout": 5.0}


def test_any_status_up_to_max_status_passes():
    app = App(404)
    passed, _ = gate(app, WARMUP)
    assert passed == ["warm-up GET / (Host: app.test) -> 404 Not Found"]
    assert app.seen == [{"path": "/", "scheme": "http", "host": "app.test", "agent": "corral-warmup"}]


def test_a_server_error_fails_at_once_and_names_the_limit():
    app = App(500)
    with pytest.raises(probe.WarmupFailed, match=r"warm-up GET / \(Host: app.test\) answered 500 Internal Server "
                                                 r"Error, above warmup.max_status=499"):
        gate(app, WARMUP)
    assert len(app.seen) == 1  # not retried: a broken URLconf stays broken


def test_max_status_is_the_rule():
    assert gate(App(500), {**WARMUP, "max_status": 599})[0]
    with pytest.raises(probe.WarmupFailed, match="answered 404 Not Found, above warmup.max_status=399"):
        gate(App(404), {**WARMUP, "max_status": 399})


def test_503_is_asked_again_until_the_app_is_ready():
    app = App(503, 503, 200)
    passed, _ = gate(app, WARMUP)
    assert passed == ["warm-up GET / (Host: app.test) -> 200 OK"] and len(app.seen) == 3


def test_503_until_the_timeout_fails_with_the_attempts():
    with pytest.raises(probe.WarmupFailed, match=r"failed after \d+ attempts in warmup.timeout=1s: "
                                                 r"answered 503 Service Unavailable"):
        gate(App(503), {**WARMUP, "timeout": 1.0})


def test_no_answer_within_the_timeout_fails():
    with pytest.raises(probe.WarmupFailed, match=r"no answer within warmup.timeout=0.5s"):
        gate(App(200, delay=30), {**WARMUP, "timeout": 0.5})


def raw_answer(answer: bytes, tmp_path: Any, *, timeout: float = 0.6) -> str:
    """warm_up() against a unix socket that reads the request and writes ``answer`` (then closes):
    what the gate's own client makes of a server that is not a well-behaved HTTP server."""

    async def main() -> str:
        address = str(tmp_path / "raw.sock")

        async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        def connect() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(address)
            return sock

        server = await asyncio.start_unix_server(reply, address)
        async with server:
            return await probe.warm_up(connect, {**WARMUP, "timeout": timeout})

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def test_the_gates_client_reads_a_long_head_and_a_body_without_a_length_until_the_close(tmp_path):
    head = b"HTTP/1.1 302 Found\r\nLocation: /login/\r\nX-Long: " + b"x" * 15000 + b"\r\n\r\n"
    assert raw_answer(head + b"y" * 200000, tmp_path) == "warm-up GET / (Host: app.test) -> 302 Found"


@pytest.mark.parametrize("answer, error", [
    (b"", "the connection closed without a response"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP response: 'SSH-2.0-OpenSSH_9.2'"),
    (b"HTTP/1.1 200 OK\r\nX-Endless: " + b"x" * (probe.MAX_RESPONSE_HEAD + 70000),
     f"the response head is over {probe.MAX_RESPONSE_HEAD} bytes"),
])
def test_an_answer_that_is_not_an_http_response_fails_the_warmup_and_says_what_it_was(tmp_path, answer, error):
    with pytest.raises(probe.WarmupFailed, match=r"failed after \d+ attempts? in warmup.timeout=0.6s: "
                                                 r"the request failed: " + re.escape(error)):
        raw_answer(answer, tmp_path)


def sockets() -> set[str]:
    """This process's open sockets (as /proc names them: ``socket:[inode]``)."""
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the directory's own fd, closed by now
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
    return {name for name in names if name.startswith("socket:")}


def test_the_gate_leaves_no_connection_and_no_socket_behind():
    # Its connections are socket pairs: nothing to bind, nothing to remove, nothing reachable after.
    async def main() -> tuple[list[str], int, set[str], set[str]]:
        server = Server(App(503, 200), EngineSettings(), "asgi")
        await server.startup()
        try:
            before = sockets()
            passed = await probe.run_gate(server, probe.Gate(WARMUP, {"path": "/", "expect_status": 200,
                                                                      "timeout": 5}), strict_warmup=True)
            deadline = time.monotonic() + 10
            while server.connection_count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return passed, server.connection_count, before, sockets()
        finally:
            await server.shutdown(1)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        passed, connections, before, after = runner.run(main())
    assert passed == ["warm-up GET / (Host: app.test) -> 200 OK", "GET / -> 200 OK"]
    assert connections == 0
    assert after == before


def test_an_https_redirect_of_the_same_path_is_asked_again_as_a_tls_proxy_would():
    # Django's SECURE_SSL_REDIRECT answers plain http with a 301 before any view (or the URLconf)
    # runs; X-Forwarded-Proto from the unix-socket peer (trusted by default) gets the real page.
    app = App(301, location="https://app.test/")
    passed, _ = gate(app, WARMUP)
    assert passed == ["warm-up GET / (Host: app.test) -> 200 OK"]
    assert [s["scheme"] for s in app.seen] == ["http", "https"]


def test_a_redirect_elsewhere_passes_as_it_is():
    app = App(302, location="/accounts/login/?next=/")
    assert gate(app, WARMUP)[0] == ["warm-up GET / (Host: app.test) -> 302 Found"]
    assert len(app.seen) == 1


def test_outside_a_reload_a_failed_warmup_is_a_warning_and_the_health_check_still_runs(caplog):
    app = App(500, 200)
    with caplog.at_level(logging.WARNING, logger="corral.worker"):
        passed, _ = gate(app, WARMUP, strict=False, health_check={"path": "/", "expect_status": 200, "timeout": 5})
    assert passed == ["GET / -> 200 OK"]
    assert "answered 500 Internal Server Error" in caplog.text and "serving anyway" in caplog.text


def test_the_gates_requests_are_not_counted_as_traffic():
    _, stats = gate(App(200), WARMUP, health_check={"path": "/", "expect_status": 200, "timeout": 5})
    assert stats["requests_total"] == 0 and stats["connections_accepted"] == 0
    assert sum(stats["duration_counts"]) == 0 and stats["responses"]["2xx"] == 0


# --------------------------------------------------------------------------- the default Host


@pytest.fixture
def django_settings(monkeypatch):
    """A stand-in ``django.conf`` with configured settings, as a Django app leaves it."""
    settings = types.SimpleNamespace(configured=True, ALLOWED_HOSTS=[])
    monkeypatch.setitem(sys.modules, "django.conf", types.SimpleNamespace(settings=settings))
    return settings


@pytest.mark.parametrize("hosts, expected", [
    (["blog.example.test", "127.0.0.1"], "blog.example.test"),
    ([".example.com"], "example.com"),  # a subdomain wildcard also matches the domain itself
    (["*"], "localhost"),
    ([], "localhost"),  # DEBUG on: Django accepts localhost
])
def test_the_default_host_is_one_djangos_allowed_hosts_accepts(django_settings, hosts, expected):
    django_settings.ALLOWED_HOSTS = hosts
    assert probe.app_host() == expected


def test_the_default_host_without_django_is_localhost(monkeypatch):
    monkeypatch.delitem(sys.modules, "django.conf", raising=False)
    assert probe.app_host() == "localhost"


def test_a_configured_host_wins_over_the_apps(django_settings):
    django_settings.ALLOWED_HOSTS = ["blog.example.test"]
    app = App(200)
    gate(app, {**WARMUP, "host": "other.test"})
    assert app.seen[0]["host"] == "other.test"
    app = App(200)
    gate(app, {**WARMUP, "host": None})
    assert app.seen[0]["host"] == "blog.example.test"


# --------------------------------------------------------------------------- the config key


def _warmup(tmp_path, text: str | None = None, environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "c.yaml"
    path.write_text(f"warmup: {text}\n" if text is not None else "{}\n")
    return load(path, environ=environ or {}).warmup


def test_warmup_is_on_by_default_and_can_be_switched_off(tmp_path):
    assert _warmup(tmp_path) == {"path": "/", "host": None, "max_status": 499, "timeout": 30.0}
    assert _warmup(tmp_path, "false") is None
    assert _warmup(tmp_path, "null") is None
    assert _warmup(tmp_path, environ={"CORRAL_WARMUP": "off"}) is None
    assert _warmup(tmp_path, "{path: /health/, timeout: 5s}") == {"path": "/health/", "host": None,
                                                                   "max_status": 499, "timeout": 5.0}


@pytest.mark.parametrize("text, message", [
    ("{paht: /}", "unknown field 'paht'; did you mean 'path'"),
    ("{path: health}", "path must start with '/'"),
    ("{max_status: 700}", "max_status must be an HTTP status"),
    ("{timeout: 0}", "timeout must be greater than 0 (to switch the warm-up off: warmup: false)"),
    ("{host: 'a b'}", "host must be a host name"),
    ("[/]", "or false to switch the warm-up off"),
])
def test_a_bad_warmup_names_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        _warmup(tmp_path, text)
    assert "config key 'warmup'" in str(info.value) and message in str(info.value)


def test_reload_rollback_is_full_by_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    assert load(path, environ={}).reload_rollback == "full"
    path.write_text("reload_rollback: partial\n")
    assert load(path, environ={}).reload_rollback == "partial"
    path.write_text("reload_rollback: some\n")
    with pytest.raises(ConfigError, match=r"reload_rollback.*one of 'full', 'partial'"):
        load(path, environ={})
