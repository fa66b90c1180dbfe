"""The one-line summary for systemd's ``STATUS=`` and the top of ``corral status``.

It is rendered from the dict ``Metrics.status()`` returns, which is also what
``corral status --json`` prints, so the line and the JSON always show the same
figures: e.g. ``4/4 workers ready · gen 1 · 1.2k req/s · queue 0 · rss 180 MiB``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_bytes", "format_rate", "format_status_line"]

_SEP = " · "
MAX_MESSAGE = 160  # systemctl status shows one line; keep a long error from taking it over


def format_rate(per_second: float) -> str:
    """``0``, ``7.5``, ``850``, ``1.2k``, ``34k``, ``1.5M``: short enough for one line."""
    for scale, suffix in ((1.0, ""), (1e3, "k"), (1e6, "M")):
        value = per_second / scale
        if value < 999.5 or suffix == "M":
            break
    text = f"{value:.1f}" if value < 9.95 else f"{value:.0f}"
    text = text.removesuffix(".0")
    return text + suffix


def format_bytes(n: int) -> str:
    """Memory as ``180 MiB`` or ``2.4 GiB``."""
    mib = n / (1 << 20)
    if mib < 1024:
        return f"{mib:.0f} MiB"
    return f"{mib / 1024:.1f} GiB"


def format_status_line(status: Mapping[str, Any]) -> str:
    """The STATUS line for a ``Metrics.status()`` dict."""
    parts = [f"{status['ready']}/{status['desired']} workers ready"]
    if status["draining"]:
        parts.append(f"{status['draining']} draining")
    parts.append(f"gen {status['generation']}")
    parts.append(f"{format_rate(status['requests_per_second'])} req/s")
    queue = status["queue_depth"]
    parts.append(f"queue {queue}" if queue is not None else "queue n/a")
    parts.append(f"rss {format_bytes(status['rss_bytes'])}")
    message = status.get("message")
    if message:
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE - 1] + "…"
        parts.append(message)
    return _SEP.join(parts)
