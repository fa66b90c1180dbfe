"""Counters the worker reads (about once a second) for its heartbeat and metrics.

Updating them is a handful of integer additions per request (hot path). Values
that depend on the live set of requests (``in_flight``, ``oldest_in_flight``)
are computed when read, by walking the open connections, so they cost nothing
per request.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from corral.engine.cycle import Cycle

# Upper bounds (seconds, inclusive) of the request-duration histogram buckets;
# a last, implicit bucket counts everything slower (+Inf). Fixed, so that
# Prometheus series from every worker line up.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


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
    Read-time properties: ``in_flight`` and ``oldest_in_flight`` (time.monotonic()
    start of the oldest request still being answered, or None).
    """

    __slots__ = ("requests_total", "responses", "connections_accepted", "connections_open",
                 "duration_counts", "duration_sum", "wants_recycle", "_live")

    def __init__(self, live: Callable[[], Iterable["Cycle"]] | None = None) -> None:
        self.requests_total = 0
        self.responses = [0, 0, 0, 0, 0, 0]
        self.connections_accepted = 0
        self.connections_open = 0
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.wants_recycle: str | None = None
        self._live = live

    def observe(self, status: int, duration: float) -> None:
        """Record one finished response (hot path)."""
        self.responses[status // 100] += 1
        self.duration_counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration

    def _live_cycles(self) -> list["Cycle"]:
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
        }
