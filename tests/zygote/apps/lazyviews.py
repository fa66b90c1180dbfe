"""Imported by warmwsgi.py on its first request, as Django imports its views: it records the pid
that imported it, in IMPORTED_IN and as one more line of lazy.log next to it."""

from __future__ import annotations

import os
from pathlib import Path

IMPORTED_IN = os.getpid()
with open(Path(__file__).resolve().parent / "lazy.log", "a") as log:
    log.write(f"{IMPORTED_IN}\n")
