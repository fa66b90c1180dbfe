"""`make deb`: the package builds, is lintian-clean, and holds what it should."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from util import REPO

OVERRIDES = REPO / "packaging/debian/corral.lintian-overrides"
SITE = "usr/lib/corral/lib/python3.11/site-packages"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout


@pytest.fixture(scope="module")
def extracted(deb, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deb-root")
    run("dpkg-deb", "-x", str(deb.path), str(root))
    run("dpkg-deb", "-e", str(deb.path), str(root / "DEBIAN"))
    return root


def test_lintian_reports_no_errors_or_warnings(deb) -> None:
    changes = next((deb.out / "deb").glob("corral_*.changes"))
    proc = subprocess.run(["lintian", "--info", str(changes)], capture_output=True, text=True,
                          timeout=300)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert tags == [], "lintian errors/warnings (fix, or override with a reason):\n" + \
        "\n".join(tags)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_lintian_override_gives_its_reason() -> None:
    for paragraph in OVERRIDES.read_text().strip().split("\n\n"):
        lines = paragraph.splitlines()
        assert lines[0].startswith("#"), f"override without a reason:\n{paragraph}"
        assert any(not line.startswith("#") for line in lines), f"reason without override:\n{paragraph}"


def test_units_and_sysusers_are_installed_as_shipped(extracted: Path) -> None:
    for unit in ("corral@.service", "corral@.socket"):
        installed = extracted / "lib/systemd/system" / unit
        assert installed.read_bytes() == (REPO / "units" / unit).read_bytes()
    sysusers = (extracted / "usr/lib/sysusers.d/corral.conf").read_text()
    assert re.search(r"^u corral ", sysusers, re.M)
    assert (extracted / "etc/corral").is_dir()
    # The units' Documentation=file:/usr/share/doc/corral/README.md (never compressed).
    assert (extracted / "usr/share/doc/corral/README.md").is_file()


def test_runtime_is_a_private_venv_with_uvloop_at_least_0_23(extracted: Path) -> None:
    venv = extracted / "usr/lib/corral"
    assert "home = /usr/bin" in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin/python3.11").is_symlink()
    uvloop = [p.name for p in (extracted / SITE).glob("uvloop-*.dist-info")]
    assert len(uvloop) == 1
    version = tuple(int(x) for x in re.match(r"uvloop-(\d+)\.(\d+)", uvloop[0]).groups())
    assert version >= (0, 23), f"{uvloop[0]}: uvloop < 0.23 must never ship"
    for name in ("corral", "httptools", "psutil", "yaml", "sdnotify"):
        assert (extracted / SITE / name).exists(), f"{name} missing from the runtime"
    launcher = (extracted / "usr/bin/corral").read_text()
    assert launcher.startswith("#!/bin/sh") and "/usr/lib/corral/bin/python3 -P -m corral" in launcher


def test_package_holds_no_bytecode_build_paths_or_embedded_libyaml(extracted: Path, deb) -> None:
    files = [p for p in extracted.rglob("*") if p.is_file() and "DEBIAN" not in p.parts]
    assert not [p for p in files if p.suffix == ".pyc" or "__pycache__" in p.parts]
    assert not list((extracted / SITE / "yaml").glob("_yaml*.so"))
    leaks = [str(p) for p in files if str(deb.out).encode() in p.read_bytes()
             or b"/stage/corral-" in p.read_bytes()]
    assert leaks == [], f"files naming the build directory: {leaks}"


def test_maintainer_scripts_never_start_or_restart_units(extracted: Path) -> None:
    postinst = (extracted / "DEBIAN/postinst").read_text()
    assert "systemd-sysusers" in postinst and "corral.conf" in postinst
    assert "deb-systemd-invoke try-reload-or-restart" in postinst
    assert "'corral@*.service'" in postinst
    scripts = "".join((extracted / "DEBIAN" / s).read_text()
                      for s in ("postinst", "prerm", "postrm") if (extracted / "DEBIAN" / s).exists())
    assert not re.search(r"deb-systemd-invoke (start|restart)\b", scripts)
    assert not re.search(r"deb-systemd-helper enable", scripts)
    assert not re.search(r"restart[^\n]*\.socket", scripts), "sockets must never be restarted"


def test_control_depends_on_the_interpreter_the_venv_is_bound_to(deb) -> None:
    depends = run("dpkg-deb", "-f", str(deb.path), "Depends")
    assert re.search(r"\bpython3\.11\b", depends), depends
    # The walk-through makes the app's virtualenv with `python3.11 -m venv`.
    assert re.search(r"\bpython3\.11-venv\b", depends), depends
    assert "systemd" in depends  # via dh_installsysusers
    assert not re.search(r"python3-(uvloop|httptools)", depends)
