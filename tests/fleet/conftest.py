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


def build_deb(out: Path, **env: str) -> Path:
    """``make deb`` into ``out``: the one corral_*.deb it wrote."""
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "deb"],
                          env={**os.environ, "OUT": str(out), **env}, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make deb failed ({proc.returncode}):\n{log[-6000:]}"
    found = sorted(out.glob("deb/corral_*_*.deb"))
    assert len(found) == 1, f"expected one corral_*.deb in {out}/deb, found {found}:\n{log[-3000:]}"
    return found[0]


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
    return build_deb(tmp_path_factory.mktemp("fleet-deb"))


# What packaging/build-deb.sh reads from the tree (stage-source.sh's list, and packaging/).
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "docs", "daemon", "units", "conf", "packaging")


def bump_patch(version: str) -> str:
    major, minor, patch = version.split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


@pytest.fixture(scope="session")
def fleet_deb_newer(tmp_path_factory: pytest.TempPathFactory, fleet_deb: Path) -> Path:
    """The next corral release as a package: this checkout with its version bumped (0.1.0 ->
    0.1.1 in pyproject.toml and corral.__version__, a 0.1.1-1 changelog entry), built by the
    same packaging/build-deb.sh from a copy of the tree. Its code differs from the installed
    one (the version line), as every real release's does, so the upgrade's reload re-executes
    the supervisor in place; a rebuild of identical code (a Debian revision bump alone) is no
    change to corral and only starts new workers. CORRAL_FLEET_DEB_NEWER names one built earlier.
    """
    prebuilt = os.environ.get("CORRAL_FLEET_DEB_NEWER")
    if prebuilt:
        return Path(prebuilt)
    tree = tmp_path_factory.mktemp("fleet-newer-tree")
    for name in PACKAGE_SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "out"))
        else:
            shutil.copy2(source, tree / name)
    upstream = fleet_deb.name.split("_")[1].rpartition("-")[0]
    newer = bump_patch(upstream)
    for path, line in ((tree / "pyproject.toml", 'version = "{}"'),
                       (tree / "daemon/corral/__init__.py", '__version__ = "{}"')):
        text = path.read_text()
        assert line.format(upstream) in text, f"{path.relative_to(tree)} has no {line.format(upstream)!r}"
        path.write_text(text.replace(line.format(upstream), line.format(newer), 1))
    out = tmp_path_factory.mktemp("fleet-deb-newer")
    proc = subprocess.run(["bash", str(tree / "packaging/build-deb.sh")],
                          env={**os.environ, "OUT": str(out), "DEB_VERSION": f"{newer}-1",
                               # the wheels `make deb` fetched for this checkout: no network
                               "CORRAL_WHEEL_CACHE": os.environ.get("CORRAL_WHEEL_CACHE",
                                                                     str(REPO / "packaging/out/wheels"))},
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"building the newer .deb failed ({proc.returncode}):\n{log[-6000:]}"
    found = sorted(out.glob(f"deb/corral_{newer}-1_*.deb"))
    assert len(found) == 1, f"expected corral_{newer}-1_*.deb in {out}/deb, found {found}:\n{log[-3000:]}"
    return found[0]


@pytest.fixture
def fleet(fleet_deb: Path, fleet_deb_newer: Path) -> Iterator[Fleet]:
    """Three hosts serving v1 behind HAProxy, every host UP; the load is not started yet."""
    started = Fleet(fleet_deb, fleet_deb_newer).start()
    try:
        yield started
    finally:
        print(started.dump())  # pytest shows it for a failing test only
        started.close()
