"""Observability under a real systemd 252 (PID 1 of private namespaces), with journald running.

The service gets two socket units: ``app.socket`` (``FileDescriptorName=http``, the app's
traffic) and ``app-metrics.socket`` (``FileDescriptorName=metrics``, ``Service=app.service``):
``FileDescriptorName=`` names every fd of one socket unit, so the metrics listener needs a
unit of its own. The supervisor serves ``/metrics`` on the second one.

One namespace is booted for the module; each test restarts app.service with its own config.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from harness.fixtures import require_systemd_namespace
from harness.systemd import SystemdNamespace
from obs_util import (APPS, Scraper, Traffic, promtool_check, requests_by_class, samples, scrape, total,
                      value)
from util import CORRAL, free_port, wait_until

CONTROL = "/run/obstest/control.sock"
HTTP_BACKLOG = 512
METRICS_BACKLOG = 64


def _units(port: int, metrics_port: int, config: Path) -> dict[str, str]:
    # Tests run the working tree's corral; a PYTHONPATH pointing at it must reach the service too.
    pythonpath = os.environ.get("PYTHONPATH")
    extra_env = f"Environment=PYTHONPATH={pythonpath}\n" if pythonpath else ""
    return {
        "app.socket": f"""\
[Socket]
ListenStream=127.0.0.1:{port}
FileDescriptorName=http
Backlog={HTTP_BACKLOG}
""",
        "app-metrics.socket": f"""\
[Socket]
ListenStream=127.0.0.1:{metrics_port}
FileDescriptorName=metrics
Service=app.service
Backlog={METRICS_BACKLOG}
""",
        "app.service": f"""\
[Unit]
Requires=app.socket app-metrics.socket
After=app.socket app-metrics.socket

[Service]
Type=notify
NotifyAccess=exec
Sockets=app.socket app-metrics.socket
ExecStart={CORRAL} run --config {config}
ExecReload={CORRAL} reload --config {config}
WatchdogSec=10s
TimeoutStartSec=60s
TimeoutStopSec=30s
KillMode=mixed
RuntimeDirectory=obstest
Environment=PYTHONUNBUFFERED=1
{extra_env}""",
    }


class App:
    def __init__(self, ns: SystemdNamespace, port: int, metrics_port: int, config: Path) -> None:
        self.ns, self.port, self.metrics_port, self.config_path = ns, port, metrics_port, config

    def restart_fresh(self, **config: Any) -> dict[str, Any]:
        """Stop the service, write its config, start it and wait until every worker is ready."""
        self.ns.systemctl("stop", "app.service", timeout=90)
        self.ns.systemctl("reset-failed", "app.service", check=False)
        base = {"app": "obsapp:app", "app_dir": str(APPS), "workers": 2, "graceful_timeout": 10,
                "control_socket": CONTROL}
        base.update(config)
        self.config_path.write_text(yaml.safe_dump(base))
        self.ns.systemctl("start", "app.socket", "app-metrics.socket")
        self.ns.systemctl("start", "app.service", timeout=90)
        return wait_until(lambda: (d := self.status())["workers_ready"] == d["workers_wanted"] == base["workers"]
                          and d["phase"] == "running" and d, 60, 0.1, "all workers ready")

    def status(self, *args: str) -> dict[str, Any]:
        out = self.ns.run([CORRAL, "status", "--json", "--control-socket", CONTROL, *args], check=False,
                          timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout)

    def status_text(self) -> str:
        return self.ns.run([CORRAL, "status", "--control-socket", CONTROL], timeout=30).stdout

    def scrape(self) -> list[tuple[str, dict[str, str], float]]:
        return samples(scrape(self.metrics_port))

    def signal(self, pid: int, sig: str) -> None:
        self.ns.run(["kill", f"-{sig}", str(pid)])

    def journal(self, *args: str) -> str:
        return self.ns.journal("app.service", *args)


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    require_systemd_namespace()
    port, metrics_port = free_port(), free_port()
    ns = SystemdNamespace({}, journald=True)
    config = ns.workdir / "app.yaml"
    ns.units.update(_units(port, metrics_port, config))
    with ns:
        try:
            yield App(ns, port, metrics_port, config)
        finally:
            print(f"--- journal ---\n{ns.journal(None)[-8000:]}")


def _paths(counts: dict[str, int], seed: int = 7) -> list[str]:
    paths = [path for path, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(paths)
    return paths


def _monotonic(scrapes: list[list[tuple[str, dict[str, str], float]]], name: str) -> bool:
    series = [total(s, name) for s in scrapes]
    return all(a <= b for a, b in zip(series, series[1:]))


def test_scrape_under_load_adds_up_and_status_agrees(app):
    app.restart_fresh(workers=2)
    sent = {"/": 600, "/status/404": 100, "/status/302": 50, "/status/503": 50}
    with Scraper(app.metrics_port) as scraper:
        traffic = Traffic(app.port, _paths(sent), concurrency=8).run()
    assert traffic.failures == []
    expected = {"1xx": 0, "2xx": 600, "3xx": 50, "4xx": 100, "5xx": 50}
    assert dict(traffic.responses) == {k: v for k, v in expected.items() if v}
    # Scrapes answered while the load ran, and no total ever went backwards.
    assert scraper.errors == [] and len(scraper.scrapes) >= 2
    for name in ("corral_requests_total", "corral_requests_received_total",
                 "corral_connections_accepted_total", "corral_request_duration_seconds_count"):
        assert _monotonic(scraper.scrapes, name), name

    # Heartbeats come once a second: the totals reach what was sent, exactly.
    data = wait_until(lambda: (s := app.scrape()) and requests_by_class(s) == expected and s, 30, 0.2,
                      f"scraped totals {expected}")
    assert value(data, "corral_requests_received_total") == 800
    assert value(data, "corral_request_duration_seconds_count") == 800
    assert value(data, "corral_request_duration_seconds_bucket", le="+Inf") == 800
    assert value(data, "corral_requests_in_flight") == 0
    assert value(data, "corral_connections_accepted_total") >= 8
    for status_class, n in expected.items():
        assert total(data, "corral_worker_requests_total", status=status_class) == n
    pids = {lb["pid"] for name, lb, _ in data if name == "corral_worker_requests_total"}
    assert {str(p) for p in traffic.pids} <= pids and len(pids) == 2
    assert value(data, "corral_workers", state="ready") == 2
    assert value(data, "corral_workers_desired") == 2
    assert value(data, "corral_generation") == 1
    assert total(data, "corral_worker_restarts_total") == 0
    assert all(v > 0 for name, _, v in data if name == "corral_worker_unique_memory_bytes")
    # Accept queues of both sockets, with the Backlog= of their socket units.
    address = f"127.0.0.1:{app.port}"
    assert value(data, "corral_listen_queue_max", name="http", address=address) == HTTP_BACKLOG
    assert value(data, "corral_listen_queue_max", name="metrics") == METRICS_BACKLOG
    assert value(data, "corral_listen_queue_depth", name="http") == 0
    promtool_check(scrape(app.metrics_port))

    # STATUS= and `corral status` are one set of figures.
    status = wait_until(lambda: (d := app.status()) and app.ns.show("app.service", "StatusText")
                        == d["status"] and d, 30, 0.2, "StatusText equal to corral status")
    assert status["status"].startswith("2/2 workers ready · gen 1 · ")
    assert " · queue 0 · rss " in status["status"]
    assert (status["workers_ready"], status["workers_wanted"], status["generation"], status["queue_depth"]) == \
        (2, 2, 1, 0)
    assert status["requests_total"] == 800 and status["rss_bytes"] > status["supervisor"]["rss"] > 0
    assert {item["name"]: item["queue_max"] for item in status["listeners"]} == \
        {"http": HTTP_BACKLOG, "metrics": METRICS_BACKLOG}
    assert status["status"] in app.status_text()
    # The supervisor serves all this without the app or the worker's HTTP stack.
    assert not {"obsapp", "uvloop", "httptools"} & set(status["supervisor"]["modules"])


def test_restart_reasons_after_a_kill_and_a_recycle(app):
    app.restart_fresh(workers=2, max_requests=40)
    first = Traffic(app.port, ["/"] * 30, concurrency=2).run()
    assert first.failures == [] and first.answered == 30
    wait_until(lambda: requests_by_class(app.scrape())["2xx"] == 30, 30, 0.2, "30 requests scraped")
    # A worker that has served: its death is a crash to replace at once (one that never served
    # would count as a boot failure, with a backoff).
    victim = wait_until(lambda: [w["pid"] for w in app.status()["workers"] if w["requests"] > 0], 30, 0.2,
                        "a worker whose heartbeat reports requests served")[0]
    app.signal(victim, "KILL")
    data = wait_until(lambda: (s := app.scrape()) and value(s, "corral_worker_restarts_total", reason="crash")
                      == 1 and value(s, "corral_workers", state="ready") == 2 and s, 60, 0.2,
                      "a crash restart and two ready workers")
    # The killed worker's last reported counters stay in the totals.
    assert requests_by_class(data)["2xx"] == 30
    assert str(victim) not in {lb["pid"] for name, lb, _ in data if name == "corral_worker_ready"}

    # New connection per request, so that every worker passes max_requests (40) and is recycled.
    second = Traffic(app.port, ["/"] * 200, concurrency=4, keepalive=False).run()
    assert second.failures == [] and second.answered == 200
    data = wait_until(lambda: (s := app.scrape()) and requests_by_class(s)["2xx"] == 230
                      and value(s, "corral_workers", state="draining") == 0
                      and value(s, "corral_worker_restarts_total", reason="max_requests") >= 2 and s,
                      90, 0.2, "recycles finished and 230 requests counted")
    assert value(data, "corral_worker_restarts_total", reason="crash") == 1
    assert value(data, "corral_requests_received_total") == 230
    for reason in ("hung", "memory", "fds", "lifetime", "deadline", "reload", "boot_failed"):
        assert value(data, "corral_worker_restarts_total", reason=reason) == 0, reason
    assert app.status()["restarts"].get("max_requests") == value(data, "corral_worker_restarts_total",
                                                             reason="max_requests")
    journal = app.journal("-o", "cat")
    assert "was killed by SIGKILL" in journal
    assert re.search(r"recycling worker \d+ \(pid \d+, slot \d\): max_requests", journal), journal[-3000:]
    # Every start says why: the first ones, the crash's replacement, the recycles' successors.
    assert re.search(r"starting in slot \d, generation 1: start$", journal, re.M)
    # The killed worker had served: it is replaced at once, not after a backoff (a boot failure's).
    assert re.search(r"starting in slot \d, generation 1: replaces worker \d+ \(crash\)", journal)
    assert re.search(r"starting in slot \d, generation 1: replaces worker \d+ \(max_requests\)", journal)


def test_queue_depth_rises_while_workers_are_stopped_and_drains_after_cont(app):
    # A generous heartbeat timeout: stopped workers must not be taken for hung ones here.
    app.restart_fresh(workers=2, timeout=300)
    pids = [w["pid"] for w in app.status()["workers"]]
    clients = 24
    traffic = Traffic(app.port, ["/"] * clients, concurrency=clients, timeout=120)
    runner = threading.Thread(target=traffic.run)
    try:
        for pid in pids:
            app.signal(pid, "STOP")
        runner.start()
        # Nobody accepts: every client's connection waits in the kernel's accept queue.
        data = wait_until(lambda: (s := app.scrape()) and value(s, "corral_listen_queue_depth", name="http")
                          == clients and s, 60, 0.1, f"{clients} connections queued")
        assert value(data, "corral_listen_queue_max", name="http") == HTTP_BACKLOG
        status = wait_until(lambda: (d := app.status())["queue_depth"] == clients and d, 30, 0.2,
                            "corral status showing the queue")
        assert f" · queue {clients} · " in status["status"]
        wait_until(lambda: f" · queue {clients} · " in app.ns.show("app.service", "StatusText"), 30, 0.2,
                   "STATUS= showing the queue")
    finally:
        for pid in pids:
            app.signal(pid, "CONT")
    runner.join(150)
    assert not runner.is_alive()
    assert traffic.failures == [] and traffic.responses["2xx"] == clients
    wait_until(lambda: value(app.scrape(), "corral_listen_queue_depth", name="http") == 0, 30, 0.1,
               "the queue drained")
    wait_until(lambda: app.status()["queue_depth"] == 0, 30, 0.2, "corral status queue back to 0")


SECRETS = ("authorization-SECRET-4f1c", "cookie-SECRET-9a7e", "body-SECRET-c3d2")


def test_journal_priorities_access_json_and_no_secrets(app):
    app.restart_fresh(workers=1, access_log=True, access_log_format="json", log_level="debug")
    auth, cookie, body = SECRETS
    headers = {"authorization": f"Bearer {auth}", "cookie": f"session={cookie}"}
    raised = Traffic(app.port, ["/raise"] * 3, concurrency=1, headers=headers).run()
    assert raised.responses == {"5xx": 3}
    posted = Traffic(app.port, ["/echo"] * 3, concurrency=1, headers=headers, method="POST",
                     body=body.encode() * 100).run()
    assert posted.responses == {"2xx": 3}
    # A request the engine refuses, carrying the same headers: its log line must not quote them.
    with socket.create_connection(("127.0.0.1", app.port), timeout=30) as sock:
        sock.sendall(f"GET /refused HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {auth}\r\n"
                     f"Cookie: session={cookie}\r\nBad Header Line\r\n\r\n{body}".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")

    errors = wait_until(lambda: (out := app.journal("-p", "err", "-o", "cat")).count(
        "Exception in ASGI application") >= 3 and out, 30, 0.2, "the app's errors in journalctl -p err")
    assert "RuntimeError: obsapp: deliberate failure" in errors  # traceback lines carry <3> too
    assert " ready in " not in errors and "starting in slot" not in errors  # info lines are <6>
    info = app.journal("-p", "info", "-o", "cat")
    assert re.search(r"worker \d+ \(pid \d+\) ready in ", info)
    lines = app.journal("-o", "cat").splitlines()
    corral_lines = [line for line in lines if line.startswith(("corral[", "corral-worker["))]
    assert corral_lines
    # journald consumed the <N> prefixes, and corral adds no timestamp of its own.
    assert not [line for line in lines if re.match(r"<\d>", line)]
    assert not [line for line in corral_lines if re.search(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d", line)]
    # The access log: one JSON object per line, of every request the app answered.
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert sorted((r["method"], r["path"], r["status"]) for r in records) == \
        sorted([("GET", "/raise", 500)] * 3 + [("POST", "/echo", 200)] * 3)
    # Nothing anywhere (every unit's journal and PID 1's console) holds a header value or body.
    everything = app.ns.journal(None, "-o", "verbose") + app.ns.console()
    for secret in SECRETS:
        assert secret not in everything, secret


def test_reload_outcomes_generation_and_their_log_lines(app):
    app.restart_fresh(workers=2)
    app.ns.systemctl("reload", "app.service", timeout=120)
    data = wait_until(lambda: (s := app.scrape()) and value(s, "corral_generation") == 2
                      and value(s, "corral_worker_restarts_total", reason="reload") == 2
                      and value(s, "corral_workers", state="ready") == 2
                      and value(s, "corral_workers", state="draining") == 0 and s, 60, 0.2,
                      "generation 2 serving, generation 1 drained")
    assert value(data, "corral_reload_duration_seconds_count", outcome="success") == 1
    assert value(data, "corral_last_reload_success") == 1
    assert {lb["pid"] for name, lb, v in data if name == "corral_worker_generation" and v == 2} == \
        {lb["pid"] for name, lb, _ in data if name == "corral_worker_ready"}

    # An invalid config: the reload is aborted and generation 2 keeps serving.
    config = yaml.safe_load(app.config_path.read_text())
    app.config_path.write_text(yaml.safe_dump({**config, "workers": "many"}))
    assert app.ns.systemctl("reload", "app.service", check=False, timeout=120).returncode != 0
    data = wait_until(lambda: (s := app.scrape()) and value(s, "corral_reload_duration_seconds_count",
                                                             outcome="aborted") == 1 and s, 30, 0.2,
                      "the aborted reload counted")
    assert value(data, "corral_last_reload_success") == 0
    assert value(data, "corral_generation") == 2 and value(data, "corral_workers", state="ready") == 2
    status = app.status()
    assert "reload failed" in status["status"] and "workers" in status["status"]
    wait_until(lambda: "reload failed" in app.ns.show("app.service", "StatusText"), 30, 0.2,
               "STATUS= naming the failed reload")
    # A bad deploy: the new generation cannot import the app and is rolled back.
    app.config_path.write_text(yaml.safe_dump({**config, "app": "obsbroken:app"}))
    assert app.ns.systemctl("reload", "app.service", check=False, timeout=120).returncode != 0
    data = wait_until(lambda: (s := app.scrape()) and value(s, "corral_reload_duration_seconds_count",
                                                             outcome="rolled_back") == 1
                      and value(s, "corral_workers", state="booting") == 0 and s, 60, 0.2,
                      "the rolled-back reload counted")
    assert value(data, "corral_generation") == 2 and value(data, "corral_workers", state="ready") == 2
    # Nothing was restarted: the failed generation's workers are not restarts.
    assert total(data, "corral_worker_restarts_total") == 2  # generation 1's two, replaced by the reload
    journal = app.journal("-o", "cat")
    assert re.search(r"reload: generation 2 starting", journal)
    assert re.search(r"starting in slot \d, generation 2: reload$", journal, re.M)
    assert re.search(r"reload: generation 2 ready in [\d.]+s", journal)
    assert re.search(r"reload failed: .*workers", journal)


def test_an_app_that_fails_to_boot_has_its_whole_traceback_at_priority_err(app):
    app.ns.systemctl("stop", "app.service", timeout=90)
    app.ns.systemctl("reset-failed", "app.service", check=False)
    app.config_path.write_text(yaml.safe_dump({"app": "obsbroken:app", "app_dir": str(APPS), "workers": 1,
                                               "control_socket": CONTROL}))
    assert app.ns.systemctl("start", "app.service", timeout=90, check=False).returncode != 0
    errors = wait_until(lambda: (out := app.journal("-p", "err", "-o", "cat")).count(
        "obsbroken: database unreachable at import") >= 2 and out, 30, 0.2, "the boot failure at err")
    assert "Traceback (most recent call last):" in errors
    assert re.search(r'File ".*obsbroken\.py", line 3, in <module>', errors)
    # The supervisor's last word before it exits non-zero, too; and a config error's.
    assert "corral: no worker could boot: RuntimeError: obsbroken" in errors
    app.ns.systemctl("reset-failed", "app.service", check=False)
    app.config_path.write_text(yaml.safe_dump({"app": "obsapp:app", "app_dir": str(APPS), "wrokers": 1}))
    assert app.ns.systemctl("start", "app.service", timeout=90, check=False).returncode != 0
    wait_until(lambda: "unknown config key 'wrokers'" in app.journal("-p", "err", "-o", "cat"), 30, 0.2,
               "the config error at err")
