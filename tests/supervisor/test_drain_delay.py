"""drain_delay: on SIGTERM corral first tells the load balancers it drains (/readyz 503, agent
`drain`) while it keeps serving everything, keep-alive responses carrying `Connection: close`;
only then does it drain and stop (issue 18). Under real systemd, `systemctl stop` is not killed
during the delay (EXTEND_TIMEOUT_USEC) and requests are answered through it.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from supervisor_util import APPS, Corral
from test_probe_endpoints import agent, probe

from harness.fixtures import require_systemd_namespace
from harness.systemd import SystemdNamespace
from util import CORRAL, Load, free_port, wait_until

DELAY = 4.0


def _keep_alive_get(conn: http.client.HTTPConnection, path: str = "/") -> tuple[int, str | None]:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("connection")


def test_sigterm_reports_draining_and_keeps_serving_for_drain_delay(tmp_path):
    metrics, agent_port = free_port(), free_port()
    corral = Corral(tmp_path, workers=2, drain_delay=DELAY, metrics_bind=[f"127.0.0.1:{metrics}"],
                    agent_bind=[f"127.0.0.1:{agent_port}"])
    with corral:
        corral.wait_ready(2)
        assert probe(metrics, "/readyz")[0] == 200 and agent(agent_port) == "up ready 100%"
        # A keep-alive connection opened before the stop: kept alive while serving normally.
        kept = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=10)
        assert _keep_alive_get(kept) == (200, None)
        with Load(corral.port, clients=4, fresh_every=2) as load:
            load.wait_for_more(20)
            assert corral.proc is not None
            stopped_at = time.monotonic()
            corral.signal(signal.SIGTERM)
            # At once: not ready, with the reason; the agent says drain; still live.
            wait_until(lambda: probe(metrics, "/readyz")[0] == 503, 10, 0.02, "/readyz 503")
            assert probe(metrics, "/readyz") == (503, "not ready: draining for stop: finish open requests "
                                                      "elsewhere\n")
            assert agent(agent_port) == "drain"
            assert probe(metrics, "/livez")[0] == 200
            # Everything is still served, and a keep-alive answer closes its connection.
            assert _keep_alive_get(kept) == (200, "close")
            kept.close()
            fresh = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=10)
            assert _keep_alive_get(fresh) == (200, "close")
            fresh.close()
            load.wait_for_more(20, timeout=DELAY / 2)  # the load keeps flowing during the delay
            in_delay = time.monotonic() - stopped_at
            load.stop()
            assert corral.proc.poll() is None, "corral stopped before drain_delay was over"
        assert in_delay < DELAY
        assert load.failed() == 0, load.errors()
        assert load.ok_between(stopped_at, stopped_at + DELAY) >= 20
        assert corral.proc.wait(60) == 0
        took = time.monotonic() - stopped_at
        assert took >= DELAY, f"corral exited {took:.2f}s after SIGTERM, before drain_delay={DELAY}s"
        log = corral.log()
        assert "drain_delay=4s" in log and "all workers stopped; exiting" in log, log[-3000:]


def test_a_second_fast_stop_cuts_the_delay_short(tmp_path):
    corral = Corral(tmp_path, workers=1, drain_delay=60)
    with corral:
        corral.wait_ready(1)
        assert corral.proc is not None
        corral.signal(signal.SIGTERM)
        wait_until(lambda: "drain_delay=60s" in corral.log(), 10, 0.05, "the drain announced")
        assert corral.get("/")[0] == 200  # serving during the delay
        started = time.monotonic()
        corral.signal(signal.SIGINT)
        assert corral.proc.wait(30) == 0
        assert time.monotonic() - started < 20


# --------------------------------------------------------------------------- under real systemd


SYSTEMD_DELAY = 3


def _units(port: int, config: Path) -> dict[str, str]:
    socket_unit = f"""\
[Unit]
Description=corral drain test socket

[Socket]
ListenStream=127.0.0.1:{port}
FileDescriptorName=http
"""
    # TimeoutStopSec=1s: shorter than drain_delay, so only EXTEND_TIMEOUT_USEC keeps systemd from
    # killing corral during the delay.
    service_unit = f"""\
[Unit]
Description=corral drain test service
Requires=app.socket
After=app.socket

[Service]
Type=notify
NotifyAccess=exec
ExecStart={CORRAL} run --config {config}
TimeoutStartSec=60s
TimeoutStopSec=1s
KillMode=mixed
RuntimeDirectory=draintest
Environment=PYTHONUNBUFFERED=1
"""
    return {"app.socket": socket_unit, "app.service": service_unit}


@pytest.fixture
def drain_service() -> Iterator[tuple[SystemdNamespace, int, int]]:
    require_systemd_namespace()
    port, metrics = free_port(), free_port()
    ns = SystemdNamespace({})
    config = ns.workdir / "app.yaml"
    config.write_text(yaml.safe_dump({
        "app": "probe:app", "app_dir": str(APPS), "workers": 2, "graceful_timeout": 5,
        "drain_delay": SYSTEMD_DELAY, "metrics_bind": [f"127.0.0.1:{metrics}"],
        "control_socket": "/run/draintest/control.sock"}))
    ns.units.update(_units(port, config))
    with ns:
        try:
            yield ns, port, metrics
        finally:
            print(f"--- console ---\n{ns.console()[-6000:]}")


def test_systemctl_stop_waits_drain_delay_serving_and_is_not_killed(drain_service):
    ns, port, metrics = drain_service
    ns.systemctl("start", "app.socket")
    ns.systemctl("start", "app.service", timeout=90)
    wait_until(lambda: probe(metrics, "/readyz")[0] == 200, 60, 0.1, "ready")
    answered: list[tuple[float, int, str | None]] = []
    stop_thread_result: dict[str, Any] = {}

    def stop() -> None:
        began = time.monotonic()
        out = ns.systemctl("stop", "app.service", timeout=90, check=False)
        stop_thread_result.update(rc=out.returncode, took=time.monotonic() - began, began=began)

    stopper = threading.Thread(target=stop)
    stopper.start()
    try:
        wait_until(lambda: probe(metrics, "/readyz")[0] == 503, 10, 0.02, "/readyz 503 after systemctl stop")
        began = time.monotonic()
        # Requests are answered through the delay, each closing its connection.
        # 1.5 s of the 3 s delay: no request may arrive after corral exits (the socket would start it again).
        while stopper.is_alive() and time.monotonic() - began < 1.5:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                status, connection = _keep_alive_get(conn)
            finally:
                conn.close()
            answered.append((time.monotonic() - began, status, connection))
    finally:
        stopper.join(120)
    # Read before anything could reach app.socket again (which would start the service anew).
    state = (ns.show("app.service", "ActiveState"), ns.show("app.service", "Result"))
    ns.systemctl("stop", "app.socket")
    assert stop_thread_result["rc"] == 0
    # Not killed by TimeoutStopSec=1s: EXTEND_TIMEOUT_USEC covered the delay, a clean stop.
    assert state == ("inactive", "success"), ns.console()[-4000:]
    assert stop_thread_result["took"] >= SYSTEMD_DELAY, stop_thread_result
    assert len(answered) >= 10 and all(s == 200 and c == "close" for _, s, c in answered), answered
    assert answered[-1][0] >= 1.0, "requests were answered for at least 1 s of the delay"
