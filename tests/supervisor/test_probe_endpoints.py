"""A real `corral run` answers /livez and /readyz on its metrics port (and a health port), and
HAProxy's agent-check on agent_bind, in every state a test can produce: starting with a slow
app, ready, a rolling reload, no ready worker after a crash (issue 18).

The probes are served by the supervisor, never by the app: the app's own /livez is untouched.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess

from supervisor_util import Corral

from util import CORRAL, free_port, wait_until


def probe(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def agent(port: int) -> str:
    """One agent-check exchange, as HAProxy does it: connect, send agent-send, read the line to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"be_app/srv1\n")
        data = b""
        while chunk := sock.recv(1024):
            data += chunk
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data
    return data.decode().strip()


def _ports() -> dict[str, int]:
    return {"metrics": free_port(), "health": free_port(), "agent": free_port()}


def _binds(ports: dict[str, int]) -> dict[str, list[str]]:
    return {f"{role}_bind": [f"127.0.0.1:{port}"] for role, port in ports.items()}


def test_slow_start_then_ready_on_metrics_health_and_agent(tmp_path):
    ports = _ports()
    corral = Corral(tmp_path, workers=2, environment={"PROBE_STARTUP_DELAY": "4"}, **_binds(ports))
    corral.start(wait=False)
    with corral:
        # Starting: the first generation is booting (4 s of lifespan startup).
        wait_until(lambda: probe(ports["metrics"], "/readyz")[0] == 503, 60, 0.05, "the probes served")
        status, body = probe(ports["metrics"], "/readyz")
        assert status == 503 and body.startswith("not ready: starting"), body
        assert probe(ports["health"], "/readyz") == (status, body)
        # A booting worker within boot_timeout is alive: Kubernetes must not restart a slow start.
        live = probe(ports["metrics"], "/livez")
        assert live[0] == 200 and live[1].startswith("live: 2 worker"), live
        assert agent(ports["agent"]) == "drain"

        corral.wait_ready(2)
        status, body = probe(ports["metrics"], "/readyz")
        assert (status, body) == (200, "ready: 2 of 2 workers, weight 100%\n")
        assert probe(ports["health"], "/readyz") == (200, body)
        assert probe(ports["metrics"], "/livez") == (200, "live: 2 worker heartbeats fresh\n")
        assert agent(ports["agent"]) == "up ready 100%"
        # The metrics listener still serves /metrics; the health listener serves only the probes.
        metrics_status, metrics_body = probe(ports["metrics"], "/metrics")
        assert metrics_status == 200 and "corral_workers" in metrics_body
        assert probe(ports["health"], "/metrics")[0] == 404
        # The app's URL space is untouched: its own /readyz is the app's answer.
        app_status, app_body, _ = corral.get("/readyz")
        assert app_status == 200 and app_body.startswith(b"ok"), app_body


def test_rolling_reload_reports_the_reduced_weight_and_never_drain(tmp_path):
    ports = _ports()
    corral = Corral(tmp_path, workers=2, reload_strategy="rolling", reload_batch=1, **_binds(ports))
    with corral:
        corral.wait_ready(2)
        assert agent(ports["agent"]) == "up ready 100%"
        # The new generation boots slowly: each batch of one replaces half the capacity for a while.
        corral.write_config(environment={"PROBE_STARTUP_DELAY": "3"})
        reload = corral.reload_async()
        try:
            seen = wait_until(lambda: (a := agent(ports["agent"])) != "up ready 100%" and a, 60, 0.05,
                              "the agent to report the reload")
            assert seen == "up ready 50%", seen
            status, body = probe(ports["metrics"], "/readyz")
            assert (status, body) == (200, "ready: 1 of 2 workers, weight 50%\n")
            answers = set()
            while reload.poll() is None:
                answers.add(agent(ports["agent"]))
            assert reload.returncode == 0, reload.communicate()
        finally:
            if reload.poll() is None:
                reload.kill()
                reload.wait(10)
        # A rolling reload leaves capacity: never "drain" nor "down" during it.
        assert answers <= {"up ready 50%", "up ready 100%"}, answers
        wait_until(lambda: agent(ports["agent"]) == "up ready 100%", 30, 0.05, "full weight after the reload")
        assert probe(ports["metrics"], "/readyz")[0] == 200


def test_no_ready_worker_after_a_crash_is_down_but_live(tmp_path):
    ports = _ports()
    # One worker with a 4 s startup: its replacement after a crash leaves the host with none ready.
    corral = Corral(tmp_path, workers=1, environment={"PROBE_STARTUP_DELAY": "4"}, **_binds(ports))
    with corral:
        corral.wait_ready(1)
        assert agent(ports["agent"]) == "up ready 100%"
        assert corral.get("/")[0] == 200  # it served: its crash is replaced at once, without backoff
        victim = corral.status()["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: agent(ports["agent"]).startswith("down"), 30, 0.05, "the agent to say down")
        assert agent(ports["agent"]) == "down #no ready worker"
        status, body = probe(ports["metrics"], "/readyz")
        assert (status, body) == (503, "not ready: no ready worker\n")
        # The replacement boots (4 s) within boot_timeout: live again at once, though not ready, so
        # that Kubernetes does not restart the whole host for a crash the supervisor handles.
        live = wait_until(lambda: (a := probe(ports["metrics"], "/livez"))[0] == 200 and a, 10, 0.05, "live")
        assert live == (200, "live: 1 worker heartbeat fresh\n")
        assert probe(ports["metrics"], "/readyz")[0] == 503
        corral.wait_ready(1)
        wait_until(lambda: agent(ports["agent"]) == "up ready 100%", 30, 0.05, "up again")
        assert probe(ports["metrics"], "/readyz")[0] == 200


def test_overlapping_agent_bind_is_a_config_error_naming_the_fix(tmp_path):
    corral = Corral(tmp_path, workers=1)
    corral.write_config(agent_bind=[f"127.0.0.1:{corral.port}"])
    out = subprocess.run([CORRAL, "check", "--config", str(corral.config_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "agent_bind" in out.stderr + out.stdout and "another port" in out.stderr + out.stdout
