"""Static checks of the shipped units: `systemd-analyze verify` is clean, the security exposure
is <= 2.0, and the settings the supervisor relies on are present (and the known traps absent).
Runtime behaviour under systemd is tested with the packages (tests/packaging)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from util import REPO

UNITS = REPO / "units"
MAX_EXPOSURE = 2.0
# (socket, service) pairs as they are verified: templates under an instance name.
PAIRS = {
    "model": ("app.socket", "app.service", "app.socket", "app.service"),
    "template": ("corral@.socket", "corral@.service", "corral@demo.socket", "corral@demo.service"),
}

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (apt-get install systemd)")


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    entries, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in parse_unit(path) if s == section and k == key]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"cannot parse time span {value!r}"
    return float(match[1]) * (60 if match[2] in ("min", "m") else 1)


@pytest.fixture(scope="module")
def staged_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for `--root=`: the host's unit library (so dependencies resolve), an executable
    /usr/bin/corral (verify checks Exec*= binaries exist) and our units in /etc."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    corral = root / "usr/bin/corral"
    corral.parent.mkdir(parents=True)
    corral.write_text("#!/bin/sh\nexit 0\n")
    corral.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS.iterdir():
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    return root


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args, f"--root={root}"], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("pair", PAIRS)
def test_verify_is_clean(staged_root: Path, pair: str) -> None:
    socket, service, socket_as, service_as = PAIRS[pair]
    unit_dir = staged_root / "etc/systemd/system"
    proc = analyze(staged_root, "verify", "--man=no", "--recursive-errors=yes",
                   f"{unit_dir / service}:{service_as}", f"{unit_dir / socket}:{socket_as}")
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, \
        f"systemd-analyze verify {service} {socket}: rc {proc.returncode}\n{proc.stderr}"


@pytest.mark.parametrize("service", ["app.service", "corral@.service"])
def test_security_exposure_at_most_2(staged_root: Path, service: str) -> None:
    name = "corral@demo.service" if "@" in service else service  # found in the staged /etc
    proc = analyze(staged_root, "security", "--offline=yes", "--no-pager", name)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, f"no exposure level in the output:\n{proc.stdout}\n{proc.stderr}"
    score = float(match[1])
    print(f"systemd-analyze security {service}: {score}")
    assert score <= MAX_EXPOSURE, f"{service} exposure {score} > {MAX_EXPOSURE}:\n{proc.stdout}"


@pytest.mark.parametrize("service", ["app.service", "corral@.service"])
def test_service_settings_the_supervisor_relies_on(service: str) -> None:
    path = UNITS / service
    expect = {
        "Type": "notify",  # notify-reload is silently "simple" on systemd 252
        "NotifyAccess": "exec",  # `corral reload` sends RELOADING=1/BARRIER=1 itself
        "KillMode": "mixed",
        "Restart": "on-failure",
        "OOMPolicy": "continue",
    }
    for key, value in expect.items():
        assert values(path, "Service", key) == [value], f"{service}: want {key}={value}"
    exec_start = values(path, "Service", "ExecStart")
    assert len(exec_start) == 1 and re.match(r"/\S*/corral run --config /etc/corral/\S+\.yaml$",
                                             exec_start[0]), exec_start
    # The same binary and config: the config may move the control socket.
    binary, config = exec_start[0].split()[0], exec_start[0].split()[-1]
    assert [v.split() for v in values(path, "Service", "ExecReload")] == \
        [[binary, "reload", "--config", config]]
    assert seconds(values(path, "Service", "WatchdogSec")[0]) > 0
    # The unit does not know the app's config, so it must outlast the default drain.
    defaults = corral_defaults()
    assert seconds(values(path, "Service", "TimeoutStopSec")[0]) > defaults.graceful_timeout
    # Start (and, on systemd 252, each reload) includes booting the workers.
    assert seconds(values(path, "Service", "TimeoutStartSec")[0]) > defaults.boot_timeout


@pytest.mark.parametrize("service", ["app.service", "corral@.service"])
def test_hardening_avoids_known_traps(service: str) -> None:
    path = UNITS / service
    assert values(path, "Service", "ProcSubset") == [], "ProcSubset=pid breaks psutil"
    families = " ".join(values(path, "Service", "RestrictAddressFamilies")).split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= set(families), \
        "psutil.net_if_addrs() needs AF_NETLINK"
    filters = " ".join(values(path, "Service", "SystemCallFilter"))
    assert "@resources" not in filters.replace("@system-service", ""), \
        "~@resources makes os.nice() fail"
    assert values(path, "Service", "CapabilityBoundingSet") == [""]
    assert values(path, "Service", "NoNewPrivileges") == ["yes"]


@pytest.mark.parametrize("pair", PAIRS)
def test_socket_survives_the_service(pair: str) -> None:
    socket, service = PAIRS[pair][:2]
    socket_path, service_path = UNITS / socket, UNITS / service
    assert values(socket_path, "Unit", "PartOf") == [], "a service restart would drop the queue"
    assert values(socket_path, "Socket", "Accept") == ["no"]
    assert values(socket_path, "Socket", "FileDescriptorName") == ["http"]
    runtime = [f"/run/{d}" for d in values(service_path, "Service", "RuntimeDirectory")]
    for listen in values(socket_path, "Socket", "ListenStream"):
        for directory in runtime:
            assert not listen.startswith(directory + "/"), \
                f"{listen} is under RuntimeDirectory {directory}, deleted on every stop"


def test_model_pair_matches_the_packaged_templates() -> None:
    """app.* is what users copy; it must not drift from what the packages ship."""
    def normalised(path: Path) -> list[tuple[str, str, str]]:
        out = []
        for section, key, value in parse_unit(path):
            value = value.replace("corral@%i", "app").replace("/etc/corral/%i.yaml",
                                                              "/etc/corral/app.yaml")
            value = value.replace("corral/%i", "app").replace("/run/corral-%i.sock",
                                                              "/run/app.sock")
            if key in ("Description", "SocketGroup") or key.startswith("ListenStream"):
                continue
            out.append((section, key, value))
        return out
    for kind in ("service", "socket"):
        assert normalised(UNITS / f"app.{kind}") == normalised(UNITS / f"corral@.{kind}")


def corral_defaults():
    """corral's config defaults (graceful_timeout, boot_timeout), from its own loader."""
    from corral.config import load

    return load(None)
