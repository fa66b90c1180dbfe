"""Counters the worker reads (about once a second) for its heartbeat and metrics.

Updating them is a handful of integer additions per request (hot path). Values
that depend on the live set of requests (``in_flight``, ``oldest_in_flight``)
are computed when read, by walking the open connections, so they cost nothing
per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from corral.engine.contracts import Exchange

# Upper bounds (seconds, inclusive) of the request-duration histogram buckets;
# a last, implicit bucket counts everything slower (+Inf). Fixed, so that
# Prometheus series from every worker line up.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class WebSocketStats:
    """WebSocket counters (``corral.engine.websocket`` updates them; a few additions per message).

    Attributes (monotonically increasing unless noted):
      open                  WebSockets open now, after their 101 (gauge)
      accepted              handshakes answered 101
      denied                handshakes the app refused (websocket.close before accept: 403,
                            or a websocket.http.response)
      failed                handshakes that got no 101 otherwise: malformed (400/426), an app
                            error (500), a draining worker (503), a client gone before the answer
      messages_in/out       whole messages received from clients / sent by apps
      bytes_in/out          their payload bytes (before permessage-deflate)
      closes                {close code: count} of ended WebSockets: the code the app was told
                            (1006: the TCP connection was lost)
    """

    __slots__ = ("open", "accepted", "denied", "failed", "messages_in", "messages_out",
                 "bytes_in", "bytes_out", "closes")

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.denied = 0
        self.failed = 0
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.closes: dict[int, int] = {}

    def snapshot(self) -> dict[str, Any]:
        return {"open": self.open, "handshakes": {"accepted": self.accepted, "denied": self.denied,
                                                  "failed": self.failed},
                "messages_in": self.messages_in, "messages_out": self.messages_out,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "closes": {str(code): n for code, n in sorted(self.closes.items())}}


class EngineStats:
    """Per-worker request and connection counters.

    Attributes (all monotonically increasing unless noted):
      requests_total        requests whose head was parsed (including rejected ones)
      responses             list indexed by status class: responses[2] is the 2xx count
                            (index 0 unused); see ``responses_by_class()``
      connections_accepted  connections accepted
      connections_open      connections open now (gauge)
      duration_counts       per-bucket (not cumulative) counts of finished requests,
                            len(DURATION_BUCKETS) + 1 entries, the last one is +Inf
      duration_sum          total seconds of finished requests
      wants_recycle         None, or why this worker asks to be replaced gracefully (a WSGI
                            request stuck past request_timeout cannot be cancelled)
      ws                    WebSocketStats
    Read-time properties: ``in_flight`` and ``oldest_in_flight`` (time.monotonic()
    start of the oldest request still being answered, or None).
    """

    __slots__ = ("requests_total", "responses", "connections_accepted", "connections_open",
                 "duration_counts", "duration_sum", "wants_recycle", "ws", "_live")

    def __init__(self, live: Callable[[], Iterable[Exchange]] | None = None) -> None:
        self.requests_total = 0
        self.responses = [0, 0, 0, 0, 0, 0]
        self.connections_accepted = 0
        self.connections_open = 0
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.wants_recycle: str | None = None
        self.ws = WebSocketStats()
        self._live = live

    def observe(self, status: int, duration: float) -> None:
        """Record one finished response (hot path)."""
        self.responses[status // 100] += 1
        self.duration_counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration

    def _live_cycles(self) -> list[Exchange]:
        return list(self._live()) if self._live is not None else []

    @property
    def in_flight(self) -> int:
        """Requests being answered right now (read-time, O(connections))."""
        return len(self._live_cycles())

    @property
    def oldest_in_flight(self) -> float | None:
        """``time.monotonic()`` at which the oldest in-flight request started, or None."""
        starts = [c.start for c in self._live_cycles()]
        return min(starts) if starts else None

    def responses_by_class(self) -> dict[str, int]:
        return {f"{i}xx": self.responses[i] for i in range(1, 6)}

    def forget_requests(self) -> None:
        """Zero the request and connection counters, as if nothing had been served yet.

        For requests that are not traffic (the worker's own reload gate). ``connections_open``
        is a gauge that closing connections bring back down themselves, so it is left alone.
        """
        self.requests_total = 0
        self.connections_accepted = 0
        self.responses = [0] * len(self.responses)
        self.duration_counts = [0] * len(self.duration_counts)
        self.duration_sum = 0.0

    def snapshot(self) -> dict[str, Any]:
        """A plain-data copy (JSON-serialisable) of everything above."""
        live = self._live_cycles()
        starts = [c.start for c in live]
        return {
            "requests_total": self.requests_total,
            "responses": self.responses_by_class(),
            "in_flight": len(live),
            "oldest_in_flight": min(starts) if starts else None,
            "connections_open": self.connections_open,
            "connections_accepted": self.connections_accepted,
            "duration_buckets": list(DURATION_BUCKETS),
            "duration_counts": list(self.duration_counts),
            "duration_sum": self.duration_sum,
            "wants_recycle": self.wants_recycle,
            "ws": self.ws.snapshot(),
        }
