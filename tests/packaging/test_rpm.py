"""`make rpm`: the spec builds (on Debian with the compat macros) and the package is sound,
checked with rpm -qpl, rpm -qp --scripts and rpm -K, and by installing it into a scratch rpm
root."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from util import REPO


def rpm_query(rpm, *args: str) -> str:
    return subprocess.run(["rpm", *args, str(rpm.path)], check=True, capture_output=True,
                          text=True, timeout=120).stdout


def test_file_list(rpm) -> None:
    files = set(rpm_query(rpm, "-qpl").split())
    for path in ("/usr/bin/corral", "/usr/lib/systemd/system/corral@.service",
                 "/usr/lib/systemd/system/corral@.socket", "/usr/lib/sysusers.d/corral.conf",
                 "/usr/lib/corral/bin/python3", "/usr/lib/corral/pyvenv.cfg",
                 "/etc/corral"):
        assert path in files, f"{path} not in the rpm"
    # brp-compress gzips man pages on Fedora; Debian's rpm leaves them as they are.
    assert files & {"/usr/share/man/man1/corral.1", "/usr/share/man/man1/corral.1.gz"}
    assert any(re.search(r"/site-packages/uvloop-0\.(2[3-9]|[3-9]\d)", f) for f in files)
    assert not [f for f in files if "/.build-id/" in f], "private .so build-ids would conflict"
    assert not [f for f in files if re.search(r"yaml/_yaml\..*\.so$", f)]


def test_scriptlets(rpm) -> None:
    scripts = rpm_query(rpm, "-qp", "--scripts")
    sections = dict(re.findall(r"^(\w+) scriptlet \(using /bin/sh\):\n(.*?)(?=^\w+ scriptlet|\Z)",
                               scripts, re.M | re.S))
    assert "systemd-sysusers --replace=/usr/lib/sysusers.d/corral.conf" in sections["preinstall"]
    assert re.search(r"^u corral ", sections["preinstall"], re.M)
    assert "preset corral@.socket corral@.service" in sections["postinstall"]
    assert "disable --now corral@.socket corral@.service" in sections["preuninstall"]
    postun = sections["postuninstall"]
    assert "try-restart corral@.service" in postun
    assert not re.search(r"restart[^\n]*\.socket", scripts), "sockets must never be restarted"
    assert "try-reload-or-restart" in sections["posttrans"]


def test_digests(rpm) -> None:
    assert "digests OK" in rpm_query(rpm, "-K")


def test_dependencies_are_not_the_bundled_ones(rpm) -> None:
    requires = rpm_query(rpm, "-qp", "--requires")
    assert "python(abi) = 3.11" in requires
    assert not re.search(r"python3\.\d+dist\(", requires), requires
    provides = rpm_query(rpm, "-qp", "--provides")
    assert ".so" not in provides, provides


def test_installs_into_a_scratch_root_and_verifies(rpm, tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run(["rpm", "--root", str(root), "--initdb"], check=True, timeout=120)
    subprocess.run(["rpm", "--root", str(root), "-ivh", "--nodeps", "--noscripts",
                    str(rpm.path)], check=True, capture_output=True, timeout=300)
    verify = subprocess.run(["rpm", "--root", str(root), "-V", "--nodeps", "corral"],
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    unit = root / "usr/lib/systemd/system/corral@.service"
    assert unit.read_bytes() == (REPO / "units/corral@.service").read_bytes()
    # The check must be able to fail: an edited unit is reported.
    unit.write_text(unit.read_text() + "\n# edited\n")
    verify = subprocess.run(["rpm", "--root", str(root), "-V", "--nodeps", "corral"],
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode != 0 and "corral@.service" in verify.stdout
