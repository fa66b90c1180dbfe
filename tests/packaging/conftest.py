"""Session fixtures: each package is built once per test session, by the real `make` targets,
into a private output directory (the pinned wheels are cached in packaging/out/wheels)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.fixtures import systemd_ns  # noqa: F401  (re-exported fixture)
from util import REPO

BUILD_TIMEOUT = 600


@dataclass(frozen=True)
class Built:
    path: Path  # the binary package
    out: Path  # its output directory
    log: str


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make sysdeps installs them)")


def make_package(target: str, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target],
                          env={**os.environ, "OUT": str(out), **env}, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT)


def _build(target: str, out: Path, pattern: str, **env: str) -> Built:
    proc = make_package(target, out, **env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make {target} failed ({proc.returncode}):\n{log[-6000:]}"
    found = sorted(out.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {out}, found {found}:\n{log[-3000:]}"
    return Built(found[0], out, log)


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _require("dpkg-buildpackage", "lintian", "python3.11")
    out = tmp_path_factory.mktemp("deb-1")
    return _build("deb", out, "deb/corral_*_*.deb")


@pytest.fixture(scope="session")
def deb_newer(tmp_path_factory: pytest.TempPathFactory, deb: Built) -> Built:
    """A newer build of the same code (Debian revision -2), for upgrade tests."""
    out = tmp_path_factory.mktemp("deb-2")
    version = deb.path.name.split("_")[1]
    upstream, _, revision = version.rpartition("-")
    return _build("deb", out, "deb/corral_*_*.deb", DEB_VERSION=f"{upstream}-{int(revision) + 1}")


@pytest.fixture(scope="session")
def rpm(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _require("rpmbuild", "rpm", "python3.11")
    out = tmp_path_factory.mktemp("rpm")
    return _build("rpm", out, "rpm/corral-*.x86_64.rpm")
