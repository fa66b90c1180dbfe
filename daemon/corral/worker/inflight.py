"""In-flight requests in shared memory: what a worker was serving when it died.

A worker that dies inside a request (``os._exit`` in the app, a segfault in a C
extension, the OOM killer) can tell nobody what killed it. So the engine notes,
before the app runs, each request in this table: a memfd the supervisor creates
for each worker and keeps open. After the worker is gone (or while it is hung)
the supervisor reads the table and logs the requests that were in flight, so
the operator can find a query of death.

One slot per open connection, taken when the connection opens (its client is
written then) and given back when it closes. Per request the engine writes the
method and target with one ``struct.pack_into`` and clears the flag byte when
the response is complete: about 0.1 µs of the hot path. One writer (the
worker's event loop), no locks: the supervisor reads only a dead or hung
worker's table, and a torn slot costs one log line's accuracy.

Layout: a header of ``SLOT_SIZE`` bytes (``magic, slots, high``: three uint32,
``high`` bounds the reader's scan), then ``slots`` slots of ``SLOT_SIZE`` bytes::

    flag (1: a request is in progress) | method (15) | target (448) | client (48)

Standard library only: the supervisor imports this module.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

MAGIC = 0x43524946  # "CRIF"
SLOT_SIZE = 512
MAX_SLOTS = 8192  # connections beyond this many go unrecorded (4 MiB, only the touched pages are real)
_HEADER = struct.Struct("<III")
_REQUEST = struct.Struct("<B15s448s")  # flag, method, target: written per request (hot path)
_CLIENT = struct.Struct("48s")  # written once per connection
_CLIENT_AT = _REQUEST.size


def table_size(slots: int) -> int:
    return SLOT_SIZE * (1 + slots)


def slots_for(max_connections: int) -> int:
    """Slots for a worker allowed ``max_connections`` open connections."""
    return max(1, min(int(max_connections), MAX_SLOTS))


def create(slots: int) -> int:
    """A new, zeroed table (supervisor side); returns its fd (close-on-exec: pass it explicitly)."""
    fd = os.memfd_create("corral-inflight", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, table_size(slots))
        os.pwrite(fd, _HEADER.pack(MAGIC, slots, 0), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


class InFlightTable:
    """The worker's end: the engine's in-flight recorder (``corral.engine.context.InFlightRecorder``)."""

    def __init__(self, fd: int, slots: int) -> None:
        self._map = mmap.mmap(fd, table_size(slots), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)  # the mapping keeps the memory; the supervisor holds its own fd
        self.buf = self._map
        # struct.pack_into(buf, offset, flag, method, target): pads with NULs, truncates what is longer.
        self.pack_into = _REQUEST.pack_into
        self._slots = slots
        self._free: list[int] = []
        self._high = 0  # slots handed out so far (the reader scans no further)

    def take(self, client: tuple[str, int] | None) -> int:
        """A slot for a new connection, as a byte offset; -1 when every slot is in use."""
        if self._free:
            offset = self._free.pop()
        elif self._high < self._slots:
            self._high += 1
            offset = self._high * SLOT_SIZE
            _HEADER.pack_into(self._map, 0, MAGIC, self._slots, self._high)
        else:
            return -1
        text = "unix socket" if client is None else f"{client[0]}:{client[1]}"
        self._map[offset] = 0
        _CLIENT.pack_into(self._map, offset + _CLIENT_AT, text.encode("utf-8", "replace"))
        return offset

    def give_back(self, offset: int) -> None:
        if offset > 0:
            self._map[offset] = 0
            self._free.append(offset)

    def close(self) -> None:
        self._map.close()


@dataclass(frozen=True)
class InFlight:
    """One request a worker was serving."""

    method: str
    target: str
    client: str

    def __str__(self) -> str:
        return f"{self.method} {self.target} from {self.client}"


def read(fd: int) -> list[InFlight]:
    """The requests in progress in a table (supervisor side; the worker is dead or hung)."""
    try:
        magic, slots, high = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
        if magic != MAGIC:
            return []
        data = os.pread(fd, SLOT_SIZE * min(high, slots), SLOT_SIZE)
    except (OSError, struct.error):
        return []
    found = []
    for offset in range(0, len(data), SLOT_SIZE):
        if data[offset] != 1:
            continue
        _flag, method, target = _REQUEST.unpack_from(data, offset)
        (client,) = _CLIENT.unpack_from(data, offset + _CLIENT_AT)
        full = target[-1] != 0  # filled to the last byte: the target was longer than the slot
        found.append(InFlight(_text(method), _text(target) + ("..." if full else ""), _text(client)))
    return found


def describe(requests: list[InFlight], limit: int = 5) -> str:
    """``GET /x from 1.2.3.4:5``, or ``3 requests: A, B, C`` (at most ``limit`` listed)."""
    if len(requests) == 1:
        return str(requests[0])
    listed = ", ".join(map(str, requests[:limit]))
    more = f" and {len(requests) - limit} more" if len(requests) > limit else ""
    return f"{len(requests)} requests: {listed}{more}"


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def _text(raw: Any) -> str:
    # Client bytes: one log line whatever they hold (control characters and non-ASCII escaped).
    return bytes(raw).rstrip(b"\0").decode("ascii", "backslashreplace").translate(_CONTROL)
