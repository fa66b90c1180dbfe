"""What one image of the supervisor's process hands the next across ``execve``: JSON in a memfd
whose number an environment variable names. ``corral run``'s command line hands the supervisor its
config this way (corral.supervisor.launch), and an in-place self-upgrade its whole state
(corral.supervisor.reexec)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any


def write_json(data: Any, name: str) -> int:
    """A memfd holding ``data`` as JSON, rewound and inheritable (no MFD_CLOEXEC): the next image
    reads it. Values JSON cannot hold are written as their ``str()``."""
    fd = os.memfd_create(name, 0)
    try:
        os.write(fd, json.dumps(data, default=str).encode())
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def read_json(fd: int) -> Any:
    """The JSON the previous image left in memfd ``fd``, which is closed."""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return json.loads(b"".join(chunks))


def exec_with(command: Sequence[str], env: str, fd: int) -> None:
    """``execv`` of ``command`` with the variable ``env`` naming memfd ``fd``, the standard streams
    flushed first. Returns only by raising OSError, with the variable gone again."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[env] = str(fd)
    try:
        os.execv(command[0], list(command))
    finally:
        os.environ.pop(env, None)
