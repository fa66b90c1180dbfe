"""One of corral's functions, run in a short-lived child interpreter with the code now on disk,
without blocking the supervisor's loop: a self-upgrade's preflight (corral.supervisor.reexec) and
a reload's reading of the config (corral.supervisor.launch, so that PyYAML loads there)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from typing import NamedTuple


class Finished(NamedTuple):
    returncode: int
    out: bytes
    err: bytes

    def last_line(self) -> str:
        """The child's last word (stderr's last line, else stdout's), or its exit status."""
        lines = (self.err or self.out).decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else str(self.returncode)


async def run_function(module: str, function: str, payload: bytes, timeout: float,
                       env: Mapping[str, str] | None = None) -> Finished:
    """``sys.exit(module.function())`` in ``python -P``, with ``payload`` on its stdin.

    Raises TimeoutError once the child, still running after ``timeout`` seconds, is killed, and
    OSError when the interpreter cannot start (TimeoutError is an OSError too: catch it first).
    """
    import asyncio  # here: the supervisor keeps ssl out of asyncio before anything imports it

    # -P: never import a `corral` from the working directory instead of the installed one.
    command = [sys.executable, "-P", "-c", f"from {module} import {function}; raise SystemExit({function}())"]
    proc = await asyncio.create_subprocess_exec(*command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(payload), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None  # communicate() waited for it
    return Finished(proc.returncode, out, err)
