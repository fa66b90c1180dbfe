"""The zygote's request channel: the messages the supervisor and a zygote exchange.

A module of its own so that the supervisor (corral.supervisor.zygote) imports only the wire format,
not the zygote's process code (corral.worker.zygote) and what that imports.

``SOCK_SEQPACKET``; one JSON object per datagram, with a ``"t"``:
  supervisor -> zygote: ``zygote_hello`` {config, generation}; ``fork`` {targets, channel}
                        with one fd per target (SCM_RIGHTS)
  zygote -> supervisor: ``zygote_ready`` {pid, preloaded, error, seconds}; ``forked`` {pid};
                        ``fork_failed`` {error}
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, TypedDict

MAX_MESSAGE = 1 << 20


class ZygoteKind(enum.StrEnum):
    """The ``"t"`` of a request-channel message."""

    HELLO = "zygote_hello"
    FORK = "fork"
    READY = "zygote_ready"
    FORKED = "forked"
    FORK_FAILED = "fork_failed"


class ZygoteHello(TypedDict):
    t: str
    config: dict[str, Any]
    generation: int


class ForkRequest(TypedDict):
    t: str
    targets: list[int]  # the fd number each passed fd must have in the worker, in order
    channel: int  # which target is the worker's control channel


class ZygoteReady(TypedDict):
    t: str
    pid: int
    preloaded: bool
    error: str | None  # set: every worker forked reports it as its boot error
    seconds: float  # how long the imports took


class Forked(TypedDict):
    t: str
    pid: int


class ForkFailed(TypedDict):
    t: str
    error: str


def zygote_hello(config: dict[str, Any], generation: int) -> ZygoteHello:
    return {"t": ZygoteKind.HELLO, "config": config, "generation": generation}


def fork_request(targets: list[int], channel: int) -> ForkRequest:
    return {"t": ZygoteKind.FORK, "targets": targets, "channel": channel}


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError(f"the request channel sent {type(message).__name__}, not a message object")
    return message


def kind_of(message: Mapping[str, Any]) -> ZygoteKind | None:
    value = message.get("t")
    try:
        return ZygoteKind(value) if isinstance(value, str) else None
    except ValueError:
        return None
