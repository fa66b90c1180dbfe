"""Fixtures of the fleet tests: the .deb (built once per session by `make deb`, as
tests/packaging builds it) and a started fleet (three hosts, HAProxy, load)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import Fleet
from harness.systemd import unavailable_reason
from util import REPO

BUILD_TIMEOUT = 600


def require_fleet_tools() -> None:
    """Skip, with the fix, where the fleet cannot run (not root, tools missing)."""
    reason = unavailable_reason(True)
    if reason is not None:
        pytest.skip(f"systemd namespace harness unavailable: {reason}")
    missing = [t for t in ("haproxy", "ip", "nsenter", "dpkg-buildpackage", "python3.11", "curl")
               if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make sysdeps installs them)")


@pytest.fixture(scope="session")
def fleet_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corral .deb of this checkout, built by the real `make deb`.

    CORRAL_FLEET_DEB=/path/to/corral_*.deb uses a package built earlier instead (to iterate on
    the fleet tests; `make test` always builds).
    """
    require_fleet_tools()
    prebuilt = os.environ.get("CORRAL_FLEET_DEB")
    if prebuilt:
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("fleet-deb")
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "deb"],
                          env={**os.environ, "OUT": str(out)}, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make deb failed ({proc.returncode}):\n{log[-6000:]}"
    found = sorted(out.glob("deb/corral_*_*.deb"))
    assert len(found) == 1, f"expected one corral_*.deb in {out}/deb, found {found}:\n{log[-3000:]}"
    return found[0]


@pytest.fixture
def fleet(fleet_deb: Path) -> Iterator[Fleet]:
    """Three hosts serving v1 behind HAProxy, every host UP; the load is not started yet."""
    started = Fleet(fleet_deb).start()
    try:
        yield started
    finally:
        print(started.dump())  # pytest shows it for a failing test only
        started.close()
