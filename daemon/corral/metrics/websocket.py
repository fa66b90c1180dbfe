"""WebSocket figures: parsed from a worker heartbeat's ``ws`` field, summed, rendered.

The heartbeat's ``ws`` is ``corral.engine.stats.WebSocketStats.snapshot()``::

    {"open": 3, "handshakes": {"accepted": 9, "denied": 1, "failed": 2},
     "messages_in": 40, "messages_out": 41, "bytes_in": 900, "bytes_out": 950,
     "closes": {"1000": 5, "1012": 1}}

Everything but ``open`` is a counter. Like the HTTP series, totals include the
workers that exited (the registry keeps their last figures) and never go back.
Close codes are labels as they are: the engine only counts codes RFC 6455
allows on the wire (1000-1014, 3000-4999) plus 1005/1006, so the label set is bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corral.metrics import exposition as ex

__all__ = ["HANDSHAKE_OUTCOMES", "WsCounters", "parse_ws", "ws_families"]

HANDSHAKE_OUTCOMES = ("accepted", "denied", "failed")
_COUNTERS = ("messages_in", "messages_out", "bytes_in", "bytes_out")
# Always exported (0 until seen), so that rate() and alerts work from the first scrape: normal
# closure, going away (stop), abnormal (lost), internal error (app crash, ping timeout), restart.
BASELINE_CLOSE_CODES = ("1000", "1001", "1006", "1011", "1012")


class WsCounters:
    """One worker's (or a sum of workers') WebSocket figures."""

    __slots__ = ("open", "handshakes", "messages_in", "messages_out", "bytes_in", "bytes_out", "closes")

    def __init__(self) -> None:
        self.open = 0  # gauge
        self.handshakes = dict.fromkeys(HANDSHAKE_OUTCOMES, 0)
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.closes: dict[str, int] = {}

    def add(self, other: WsCounters, *, gauge: bool = True) -> None:
        """Add ``other``'s figures to these (``gauge=False``: the counters only, for an exited worker)."""
        if gauge:
            self.open += other.open
        for outcome in HANDSHAKE_OUTCOMES:
            self.handshakes[outcome] += other.handshakes[outcome]
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for code, n in other.closes.items():
            self.closes[code] = self.closes.get(code, 0) + n

    def clamp(self, old: WsCounters) -> None:
        """Counters only grow: keep the larger of each against the previous heartbeat's."""
        for outcome in HANDSHAKE_OUTCOMES:
            self.handshakes[outcome] = max(self.handshakes[outcome], old.handshakes[outcome])
        for name in _COUNTERS:
            setattr(self, name, max(getattr(self, name), getattr(old, name)))
        for code, n in old.closes.items():
            self.closes[code] = max(self.closes.get(code, 0), n)


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"heartbeat field {field!r} must be a non-negative integer, got {value!r}")
    return value


def parse_ws(stats: Mapping[str, Any]) -> WsCounters:
    """The ``ws`` field of a heartbeat (absent: all zero). Raises ValueError naming a bad field."""
    c = WsCounters()
    ws = stats.get("ws")
    if ws is None:
        return c
    if not isinstance(ws, Mapping):
        raise ValueError(f"heartbeat field 'ws' must be a dict (WebSocketStats.snapshot()), got {ws!r}")
    c.open = _count(ws.get("open", 0), "ws.open")
    handshakes = ws.get("handshakes", {})
    if not isinstance(handshakes, Mapping):
        raise ValueError(f"heartbeat field 'ws.handshakes' must be a dict, got {handshakes!r}")
    unknown = set(handshakes) - set(HANDSHAKE_OUTCOMES)
    if unknown:
        raise ValueError(f"heartbeat field 'ws.handshakes' has unknown outcomes {sorted(map(str, unknown))}; "
                         f"expected {HANDSHAKE_OUTCOMES}")
    for outcome in HANDSHAKE_OUTCOMES:
        c.handshakes[outcome] = _count(handshakes.get(outcome, 0), f"ws.handshakes.{outcome}")
    for name in _COUNTERS:
        setattr(c, name, _count(ws.get(name, 0), f"ws.{name}"))
    closes = ws.get("closes", {})
    if not isinstance(closes, Mapping):
        raise ValueError(f"heartbeat field 'ws.closes' must be a dict of close code -> count, got {closes!r}")
    for code, n in closes.items():
        if not str(code).isdigit() or not 1000 <= int(code) <= 4999:
            raise ValueError(f"heartbeat field 'ws.closes' has close code {code!r}; expected 1000-4999")
        c.closes[str(int(code))] = _count(n, f"ws.closes.{code}")
    return c


def ws_families(total: WsCounters, workers: Iterable[tuple[Mapping[str, str], WsCounters]]) -> list[ex.Family]:
    """The WebSocket series: totals over all workers (exited ones included), and open per worker."""
    open_now = ex.gauge("corral_websocket_connections_open", "WebSocket connections open now, all workers.")
    open_now.add(total.open)
    per_worker = ex.gauge("corral_worker_websocket_connections_open",
                          "WebSocket connections one worker holds open.")
    for labels, c in workers:
        per_worker.add(c.open, labels)
    handshakes = ex.counter("corral_websocket_handshakes_total",
                            "WebSocket handshakes by outcome: accepted (101), denied by the app (403 or its "
                            "own response), failed (malformed, app error, draining worker, client gone).")
    for outcome in HANDSHAKE_OUTCOMES:
        handshakes.add(total.handshakes[outcome], {"outcome": outcome})
    messages = ex.counter("corral_websocket_messages_total",
                          "Whole WebSocket messages received from clients (in) and sent by apps (out).")
    messages.add(total.messages_in, {"direction": "in"})
    messages.add(total.messages_out, {"direction": "out"})
    payload = ex.counter("corral_websocket_bytes_total",
                         "WebSocket message payload bytes in and out (before permessage-deflate).")
    payload.add(total.bytes_in, {"direction": "in"})
    payload.add(total.bytes_out, {"direction": "out"})
    closes = ex.counter("corral_websocket_closes_total",
                        "Ended WebSockets by close code (the code the app was told; 1006: the connection "
                        "was lost without a close frame).")
    for code in sorted(set(total.closes) | set(BASELINE_CLOSE_CODES), key=int):
        closes.add(total.closes.get(code, 0), {"code": code})
    return [open_now, per_worker, handshakes, messages, payload, closes]
