"""corral's agent answers, read by the reference client: Debian's HAProxy 2.6, on loopback.

The unit tests (tests/metrics/test_probes.py) fix which line each host state gets; this proves
HAProxy understands every one of them as meant, including the undoing: only the agent can
revert what the agent set, so "ready" must end a DRAIN and "up" must end a DOWN."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from corral.metrics.agent import AgentServer
from corral.metrics.probes import HostState, Phase
from fleet import ServerStat, haproxy_server_states
from util import stop_process, wait_until

RUNNING = HostState(Phase.RUNNING, slots=4, ready_workers=4, fresh_heartbeats=4)

CONFIG = """\
global
    stats socket {stats} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
backend app
    server s1 127.0.0.1:{app_port} weight 100 check inter 100ms agent-check agent-port {agent_port} agent-inter 100ms
"""


class AgentThread:
    """An AgentServer on its own loop thread, answering from ``self.state``."""

    def __init__(self, listener: socket.socket) -> None:
        self.state = RUNNING
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = AgentServer(lambda: self.state)
        asyncio.run_coroutine_threadsafe(self._serve(listener), self.loop).result(30)

    async def _serve(self, listener: socket.socket) -> None:
        self.server.serve(listener)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)  # the health check's connections complete in the kernel's queue
    return sock


@pytest.fixture
def haproxy_with_agent(tmp_path: Path) -> Iterator[tuple[AgentThread, Path]]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed (make sysdeps installs it)")
    app, agent_sock = listening(), listening()
    agent = AgentThread(agent_sock)
    stats = tmp_path / "haproxy.sock"
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(stats=stats, app_port=app.getsockname()[1],
                                    agent_port=agent_sock.getsockname()[1]))
    log = open(tmp_path / "haproxy.log", "wb")  # noqa: SIM115 - handed to the process
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_until(stats.exists, timeout=60, what="HAProxy's stats socket")
        yield agent, stats
    finally:
        stop_process(proc, signal.SIGTERM)
        agent.close()
        app.close()
        agent_sock.close()
        print((tmp_path / "haproxy.log").read_text())


def wait_for(stats: Path, what: str, predicate) -> ServerStat:  # type: ignore[no-untyped-def]
    def seen() -> ServerStat | None:
        stat = haproxy_server_states(stats)["s1"]
        return stat if predicate(stat) else None
    return wait_until(seen, timeout=60, what=f"HAProxy showing s1 {what} "
                                               f"(now {haproxy_server_states(stats)['s1']})")


def test_haproxy_follows_every_agent_answer(haproxy_with_agent: tuple[AgentThread, Path]) -> None:
    agent, stats = haproxy_with_agent

    agent.state = replace(RUNNING, saturated_workers=2)  # "up ready 50%"
    wait_for(stats, "UP at weight 50", lambda s: s.status == "UP" and s.weight == 50)

    agent.state = replace(RUNNING, draining=True)  # "drain"
    wait_for(stats, "in DRAIN", lambda s: s.status.startswith("DRAIN"))

    agent.state = RUNNING  # "up ready 100%": "ready" ends the DRAIN the agent set
    wait_for(stats, "UP at weight 100", lambda s: s.status == "UP" and s.weight == 100)

    agent.state = replace(RUNNING, ready_workers=0)  # "down #no ready worker"
    down = wait_for(stats, "DOWN", lambda s: s.status.startswith("DOWN"))
    assert "no ready worker" in down.agent_desc + down.last_agent, down

    agent.state = RUNNING  # "up" ends the DOWN the agent set
    wait_for(stats, "UP at weight 100 again", lambda s: s.status == "UP" and s.weight == 100)

    # Starting is planned: DRAIN, never DOWN.
    agent.state = HostState(Phase.STARTING, slots=4)
    wait_for(stats, "in DRAIN while starting", lambda s: s.status.startswith("DRAIN"))
    agent.state = replace(RUNNING, saturated_workers=4)  # every worker saturated: "up ready 1%"
    wait_for(stats, "UP at weight 1", lambda s: s.status == "UP" and s.weight == 1)
