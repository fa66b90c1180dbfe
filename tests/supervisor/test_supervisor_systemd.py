"""corral under a real systemd 252 (PID 1 of private namespaces): socket activation,
READY/STATUS, the watchdog, worker failures under load, and a graceful `systemctl stop`.

One namespace is booted for the module (booting costs seconds on this machine); each
test brings app.socket/app.service to the state it needs.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from harness.fixtures import require_systemd_namespace
from harness.systemd import SystemdNamespace
from supervisor_util import APPS, Load
from util import CORRAL, free_port, wait_until

CONTROL = "/run/apptest/control.sock"
GRACEFUL = 10


def _units(port: int, config: Path, start_timeout: str = "60s") -> dict[str, str]:
    socket_unit = f"""\
[Unit]
Description=corral test socket

[Socket]
ListenStream=127.0.0.1:{port}
FileDescriptorName=http
Accept=no
Backlog=512
"""
    service_unit = f"""\
[Unit]
Description=corral test service
Requires=app.socket
After=app.socket

[Service]
Type=notify
NotifyAccess=exec
ExecStart={CORRAL} run --config {config}
ExecReload={CORRAL} reload --config {config}
WatchdogSec=4s
TimeoutStartSec={start_timeout}
TimeoutStopSec=30s
TimeoutAbortSec=3s
KillMode=mixed
Restart=on-failure
RestartSec=1s
LimitCORE=0
RuntimeDirectory=apptest
Environment=PYTHONUNBUFFERED=1
"""
    return {"app.socket": socket_unit, "app.service": service_unit}


class App:
    """The namespace, the port and the config of app.service."""

    def __init__(self, ns: SystemdNamespace, port: int, config: Path) -> None:
        self.ns, self.port, self.config_path = ns, port, config

    def configure(self, **config: Any) -> None:
        base = {"app": "probe:app", "app_dir": str(APPS), "workers": 2, "graceful_timeout": GRACEFUL,
                "control_socket": CONTROL}
        base.update(config)
        self.config_path.write_text(yaml.safe_dump(base))

    def restart_fresh(self, **config: Any) -> None:
        """Stop the service, write the config, start the socket only (the service starts on demand)."""
        self.ns.systemctl("stop", "app.service", timeout=90)
        self.ns.systemctl("reset-failed", "app.service", check=False)
        self.configure(**config)
        self.ns.systemctl("start", "app.socket")

    def show(self, prop: str) -> str:
        return self.ns.show("app.service", prop)

    def status(self) -> dict[str, Any]:
        out = self.ns.run([CORRAL, "status", "--json", "--control-socket", CONTROL], check=False, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout)

    def get(self, path: str = "/", timeout: float = 60) -> tuple[int, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def start_and_wait(self) -> dict[str, Any]:
        self.ns.systemctl("start", "app.service", timeout=90)
        return wait_until(lambda: (d := self.status())["workers_ready"] == d["workers_wanted"] and d, 60, 0.1,
                          "all workers ready")

    def kill(self, pid: int, sig: str = "KILL") -> None:
        self.ns.run(["kill", f"-{sig}", str(pid)])


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    require_systemd_namespace()
    port = free_port()
    ns = SystemdNamespace({})
    config = ns.workdir / "app.yaml"
    for name, text in _units(port, config).items():
        ns.units[name] = text
    with ns:
        app = App(ns, port, config)
        app.configure()
        try:
            yield app
        finally:
            print(f"--- console ---\n{ns.console()[-6000:]}")


def test_socket_activation_ready_only_after_workers_and_status_text(app):
    app.restart_fresh(environment={"PROBE_STARTUP_DELAY": "2"})
    assert app.show("ActiveState") == "inactive"
    result: dict[str, Any] = {}
    first = threading.Thread(target=lambda: result.update(response=app.get("/")))
    first.start()  # the first connection activates the service
    samples = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = app.show("ActiveState")
        try:
            ready = app.status()["workers_ready"]
        except RuntimeError:
            ready = None  # the supervisor's control socket is not up yet
        samples.append((state, ready))
        if state == "active":
            break
    first.join(60)
    assert result["response"][0] == 200
    assert any(state == "activating" for state, _ in samples), samples
    # systemd saw READY=1 only once every worker was ready.
    assert all(ready == 2 for state, ready in samples if state == "active"), samples
    status_text = app.show("StatusText")
    assert status_text.startswith("2/2 workers ready · gen 1 · ") and "req/s" in status_text, status_text
    assert app.show("NotifyAccess") == "exec"


def test_watchdog_restarts_a_stopped_supervisor_and_queued_clients_succeed(app):
    app.restart_fresh()
    data = app.start_and_wait()
    old_main = int(app.show("MainPID"))
    old_workers = {w["pid"] for w in data["workers"]}
    restarts = int(app.show("NRestarts"))
    app.kill(old_main, "STOP")
    # systemd's watchdog (WatchdogSec=4s) aborts it; KillMode=mixed removes its workers; Restart=on-failure.
    wait_until(lambda: int(app.show("NRestarts")) > restarts, 60, 0.05, "a watchdog restart")
    results: list[Any] = []

    def client() -> None:
        try:
            results.append(app.get("/"))
        except Exception as exc:  # recorded, asserted below
            results.append(exc)

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()  # these connect while no worker runs: they wait in the socket's queue
    for thread in clients:
        thread.join(90)
    assert [r[0] if isinstance(r, tuple) else r for r in results] == [200] * 6
    assert not {int(r[1]["x-worker-pid"]) for r in results} & old_workers
    assert int(app.show("MainPID")) not in (0, old_main)
    assert "watchdog timeout" in app.ns.console().lower() or app.show("Result") in ("watchdog", "success")


def test_killed_worker_replaced_and_only_its_requests_fail(app):
    app.restart_fresh()
    data = app.start_and_wait()
    with Load(app.port, clients=8) as load:
        # Heartbeats (once a second) must show every client connected before the kill.
        workers = wait_until(lambda: (ws := app.status()["workers"]) and
                             sum(w["connections_open"] for w in ws) == load.clients and ws, 60, 0.1,
                             "all load connections in the heartbeats")
        victim = max(workers, key=lambda w: w["connections_open"])
        held = victim["connections_open"]
        started = time.monotonic()
        app.kill(victim["pid"])
        before = {w["pid"] for w in data["workers"]}
        wait_until(lambda: len([w for w in app.status()["workers"]
                                if w["state"] == "ready" and w["pid"] not in before]) == 1, 30, 0.02,
                   "a replacement worker ready")
        recovery = time.monotonic() - started
        ok = load.ok()
        wait_until(lambda: load.ok() > ok + 200, 60, 0.05, "load continuing")
    print(f"systemd: replacement ready {recovery:.3f}s after SIGKILL (as seen through `corral status`); "
          f"{load.failed()} failed of {load.total()}, the killed worker held {held} connections")
    assert load.failed() <= max(held, 1), load.errors()[:5]
    assert app.show("ActiveState") == "active"


def test_hung_and_leaking_workers_replaced_under_load(app):
    app.restart_fresh(timeout=2, max_memory="60MiB", policy_interval=0.2, policy_breaches=3)
    app.start_and_wait()
    with Load(app.port, clients=6) as load:
        wait_until(lambda: load.ok() > 100, 60, 0.05, "load running")
        # Leaking: recycled (replacement first, then drain) without failing a request.
        app.get("/leak?mb=80")
        wait_until(lambda: app.status()["restarts"].get("memory") == 1, 60, 0.1, "memory recycle")
        wait_until(lambda: [w["state"] for w in app.status()["workers"]] == ["ready", "ready"], 60, 0.1,
                   "two ready workers after the recycle")
        failed_after_leak = load.failed()
        # Hung: its event loop blocks; it is killed and replaced.
        threading.Thread(target=lambda: _quiet(app.get, "/block?s=60", 90), daemon=True).start()
        wait_until(lambda: app.status()["restarts"].get("hung") == 1, 60, 0.1, "hung worker detected")
        wait_until(lambda: [w["state"] for w in app.status()["workers"]] == ["ready", "ready"], 60, 0.1,
                   "two ready workers after the hang")
        ok = load.ok()
        wait_until(lambda: load.ok() > ok + 100, 60, 0.05, "load continuing")
    assert failed_after_leak == 0, load.errors()[:5]
    console = app.ns.console()
    assert "sent no heartbeat" in console and "max_memory" in console


def _quiet(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def test_systemctl_stop_lets_a_5s_request_finish(app):
    app.restart_fresh()
    app.start_and_wait()
    result: dict[str, Any] = {}
    request = threading.Thread(target=lambda: result.update(response=app.get("/sleep?s=5")))
    request.start()
    wait_until(lambda: sum(w["in_flight"] for w in app.status()["workers"]) == 1, 30, 0.05, "request in flight")
    started = time.monotonic()
    app.ns.systemctl("stop", "app.service", timeout=90)
    stopped_after = time.monotonic() - started
    request.join(30)
    print(f"systemctl stop took {stopped_after:.2f}s with a 5 s request in flight (graceful_timeout {GRACEFUL}s)")
    assert result["response"][0] == 200
    assert app.show("ActiveState") == "inactive" and app.show("Result") == "success"
    assert stopped_after < GRACEFUL


def test_slow_boot_extends_the_start_timeout(app):
    """TimeoutStartSec=3s, but lifespan startup takes 6 s: EXTEND_TIMEOUT_USEC keeps it alive."""
    app.restart_fresh(environment={"PROBE_STARTUP_DELAY": "6"})
    app.ns.write_unit("app.service.d/slow.conf", "[Service]\nTimeoutStartSec=3s\n")
    app.ns.daemon_reload()
    try:
        started = time.monotonic()
        app.ns.systemctl("start", "app.service", timeout=90)
        assert time.monotonic() - started > 5
        assert app.show("ActiveState") == "active"
        assert app.get("/")[0] == 200
    finally:
        (app.ns.unit_dir / "app.service.d" / "slow.conf").unlink()
        app.ns.daemon_reload()


def test_systemctl_reload_waits_for_the_new_generation_and_fails_visibly(app):
    app.restart_fresh(environment={"PROBE_STARTUP_DELAY": "1"})
    app.start_and_wait()
    main_pid = app.show("MainPID")
    out = app.ns.systemctl("reload", "app.service", timeout=90)
    assert out.returncode == 0
    # systemctl returned only once generation 2 served.
    data = app.status()
    assert data["generation"] == 2 and {w["generation"] for w in data["workers"] if w["state"] == "ready"} == {2}
    assert app.show("MainPID") == main_pid and app.get("/")[0] == 200
    # A bad config: the reload fails, and generation 2 keeps serving.
    app.configure(environment={"PROBE_STARTUP_DELAY": "1"}, workers="many")
    out = app.ns.systemctl("reload", "app.service", timeout=90, check=False)
    assert out.returncode != 0
    assert app.show("ActiveState") == "active" and app.status()["generation"] == 2
    assert "last reload failed: config error" in app.show("StatusText")
    assert app.get("/")[0] == 200
