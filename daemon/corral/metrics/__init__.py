"""Observability for the supervisor: Prometheus metrics, accept-queue depth, the STATUS line.

Standard library only (no psutil, no uvloop, no httptools): the supervisor
imports this and must stay small.

- ``registry.Metrics``: the data model, fed from heartbeats and supervisor events;
- ``exposition``: Prometheus text format 0.0.4;
- ``queue``: accept-queue depth of listening TCP and unix sockets;
- ``status_line``: the one-line summary for ``STATUS=`` and ``corral status``;
- ``server.MetricsServer``: ``GET /metrics`` on asyncio;
- ``looplag.LoopLagMonitor``: the supervisor's event-loop lag;
- ``probes``: ``/livez``, ``/readyz`` and HAProxy agent answers from a ``HostState`` (pure);
- ``agent.AgentServer``: HAProxy's ``agent-check`` on asyncio, one line per connection.
"""
