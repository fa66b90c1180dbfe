"""Access log: one line per finished request, on the ``corral.access`` logger.

Formats:
  common    ``host - - [time] "METHOD /path?query HTTP/1.1" status bytes duration``
  combined  common + ``"referer" "user-agent"`` (before the duration)
  json      one JSON object per line
Control characters, quotes and backslashes in request-derived fields are
escaped (``\\xHH``), so a client cannot forge log lines.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable

from corral.engine.contracts import Exchange

access_logger = logging.getLogger("corral.access")

_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f"\\]')


def escape(text: str) -> str:
    """Escape control characters, quotes and backslashes as ``\\xHH``."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class _Clock:
    """Log timestamps, formatted once per second."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.text = time.strftime(self.fmt, time.localtime(second))
        return self.text


def _header(cycle: Exchange, name: bytes) -> str:
    headers: list[tuple[bytes, bytes]] = cycle.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def _target(cycle: Exchange) -> str:
    scope = cycle.scope
    target: str = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("latin-1")
    return target


def _client(cycle: Exchange) -> str:
    client: tuple[str, int] | None = cycle.scope.get("client")
    return client[0] if client else "-"


def make_access_logger(fmt: str) -> Callable[[Exchange], None]:
    """A function logging one finished cycle in ``fmt``."""

    clf_clock = _Clock("%d/%b/%Y:%H:%M:%S %z")
    iso_clock = _Clock("%Y-%m-%dT%H:%M:%S%z")

    def common(cycle: Exchange) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        scope = cycle.scope
        duration = time.monotonic() - cycle.start if cycle.start else 0.0
        stamp = clf_clock.now()
        line = (f'{escape(_client(cycle))} - - [{stamp}] '
                f'"{escape(scope["method"])} {escape(_target(cycle))} HTTP/{scope["http_version"]}" '
                f'{cycle.status} {cycle.bytes_sent}')
        if fmt == "combined":
            referer = escape(_header(cycle, b"referer")) or "-"
            agent = escape(_header(cycle, b"user-agent")) or "-"
            line += f' "{referer}" "{agent}"'
        access_logger.info("%s %.6f", line, duration)

    def as_json(cycle: Exchange) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        scope = cycle.scope
        duration = time.monotonic() - cycle.start if cycle.start else 0.0
        record = {
            "time": iso_clock.now(),
            "client": _client(cycle),
            "method": scope["method"],
            "path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "protocol": f"HTTP/{scope['http_version']}",
            "status": cycle.status,
            "bytes": cycle.bytes_sent,
            "duration": round(duration, 6),
            "referer": _header(cycle, b"referer"),
            "user_agent": _header(cycle, b"user-agent"),
        }
        # ensure_ascii escapes every control and non-ASCII character.
        access_logger.info("%s", json.dumps(record, ensure_ascii=True))

    return as_json if fmt == "json" else common
