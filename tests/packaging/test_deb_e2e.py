"""End to end under a real systemd (overlay namespace, so dpkg never touches the host):
install the .deb, serve a demo app from its own virtualenv through corral@demo.socket,
reload, upgrade under load with 0 failed requests, stop and purge without leftovers; and run
a probe inside the packaged unit's sandbox."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.systemd import SystemdNamespace
from scenario import DEMO_APP, DEMO_CONFIG, LOAD, PROBE, PROBE_DROPIN
from util import wait_until

SOCK = "/run/corral-demo.sock"
DPKG_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


@pytest.fixture
def ns(systemd_ns) -> SystemdNamespace:
    ns = systemd_ns({}, overlay=True, journald=True)
    # man-db's trigger rebuilds its index on every install; nothing here reads man pages.
    # A container image's policy-rc.d (exit 101) forbids maintainer scripts to act on
    # services; a real host has none, and the upgrade must reload the running app.
    ns.run(["rm", "-f", "/var/lib/man-db/auto-update", "/usr/sbin/policy-rc.d"])
    return ns


def install(ns: SystemdNamespace, deb: Path) -> str:
    target = ns.workdir / deb.name
    shutil.copy(deb, target)
    proc = ns.run(["dpkg", "-i", str(target)], env=DPKG_ENV, timeout=300, check=False)
    assert proc.returncode == 0, f"dpkg -i {deb.name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def get(ns: SystemdNamespace, sock: str = SOCK) -> tuple[int, str]:
    proc = ns.run(["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}", "--unix-socket",
                   sock, "http://localhost/"], check=False, timeout=90)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body + proc.stderr


def write(ns: SystemdNamespace, path: str, text: str) -> None:
    ns.run(["sh", "-c", f'mkdir -p "$(dirname {path})" && cat > {path}'], input=text)


# Processes inside the namespace as JSON [pid, ppid, uid, cmdline] (no procps needed).
PS = """
import json, os
out = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = open(f"/proc/{pid}/status").read()
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
    except OSError:
        continue
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    out.append([int(pid), int(fields["PPid"]), int(fields["Uid"].split()[0]), cmdline.strip()])
print(json.dumps(out))
"""


def processes(ns: SystemdNamespace) -> list[list]:
    return json.loads(ns.run(["/usr/bin/python3", "-c", PS]).stdout)


def load_stats(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"ok": 0, "failed": 0}


def test_install_serve_reload_upgrade_under_load_and_purge(ns: SystemdNamespace, deb,
                                                           deb_newer) -> None:
    # 1. Install: the user exists, the templates are known, nothing was started or enabled.
    install(ns, deb.path)
    assert ns.run(["id", "-u", "corral"]).returncode == 0
    listed = ns.systemctl("list-unit-files", "corral@*").stdout
    assert "corral@.service" in listed and "corral@.socket" in listed
    assert "corral@" not in ns.systemctl("list-units", "--all", "--plain", "corral@*").stdout
    package_files = ns.run(["dpkg", "-L", "corral"]).stdout.split()

    # The demo app in its own virtualenv, and its config.
    ns.run(["/usr/bin/python3.11", "-m", "venv", "--without-pip", "/srv/demo/venv"])
    write(ns, "/srv/demo/app/demoapp.py", DEMO_APP)
    write(ns, "/etc/corral/demo.yaml", DEMO_CONFIG)

    # 2. Start the socket; the first request activates the service and gets 200.
    ns.systemctl("start", "corral@demo.socket")
    assert get(ns)[0] == 200
    wait_until(lambda: ns.show("corral@demo.service", "ActiveState") == "active",
               timeout=90, what="corral@demo.service active")
    main_pid = ns.show("corral@demo.service", "MainPID")
    workers = [cmd for _, ppid, _, cmd in processes(ns) if ppid == int(main_pid)]
    assert len(workers) == 2 and all(w.startswith("/srv/demo/venv/bin/python ") for w in workers), \
        f"workers not running in the app's venv: {workers}"

    # Load from here on, through the reload and the upgrade.
    script, stop, result = ns.workdir / "load.py", ns.workdir / "load.stop", ns.workdir / "load.json"
    script.write_text(LOAD)
    progress = Path(str(result) + ".progress")
    load = ns.popen(["/usr/bin/python3", str(script), SOCK, str(stop), str(result)])
    wait_until(lambda: load_stats(progress)["ok"] >= 50, timeout=60, what="load running")

    # 3. Reload: synchronous, succeeds, still 200, same main process.
    proc = ns.systemctl("reload", "corral@demo.service", timeout=180, check=False)
    assert proc.returncode == 0, f"systemctl reload failed:\n{proc.stderr}"
    assert get(ns)[0] == 200
    assert ns.show("corral@demo.service", "MainPID") == main_pid

    # 4. Install a newer build over it while the load runs.
    before = load_stats(progress)["ok"]
    install(ns, deb_newer.path)
    assert ns.run(["dpkg-query", "-W", "-f", "${Version}", "corral"]).stdout == \
        deb_newer.path.name.split("_")[1]
    wait_until(lambda: load_stats(progress)["ok"] >= before + 50, timeout=60,
               what="load progressing after the upgrade")
    stop.touch()
    load.wait(120)
    stats = load_stats(result)
    print(f"load across reload + upgrade: {stats}")
    assert stats["failed"] == 0, f"failed requests: {stats}"
    assert stats["ok"] > 100
    # The upgrade reloaded the running instance (not a restart: same PID, no restarts).
    reloads = ns.journal("corral@demo.service").count("Reloaded corral@demo.service")
    assert reloads >= 2, f"expected the manual and the upgrade's reload, saw {reloads}"
    assert ns.show("corral@demo.service", "ActiveState") == "active"
    assert ns.show("corral@demo.service", "MainPID") == main_pid
    assert ns.show("corral@demo.service", "NRestarts") == "0"
    assert get(ns)[0] == 200

    # 5. Stop, purge: nothing left running, no file of the package left behind.
    ns.systemctl("stop", "corral@demo.socket", "corral@demo.service", timeout=120)
    proc = ns.run(["dpkg", "--purge", "corral"], env=DPKG_ENV, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    units = ns.systemctl("list-units", "--all", "--plain", "--no-legend", "corral@*").stdout
    assert " active " not in units, units
    uid = int(ns.run(["id", "-u", "corral"]).stdout)
    left = [p for p in processes(ns) if p[2] == uid or "/usr/lib/corral/" in p[3]]
    assert left == [], f"processes left running: {left}"
    leftovers = ns.run(["sh", "-c", 'for f; do [ -e "$f" ] && [ ! -d "$f" ] && echo "$f"; done; '
                        "true", "sh", *package_files]).stdout.split()
    assert leftovers == [], f"package files left after purge: {leftovers}"
    for gone in ("/usr/lib/corral", "/var/lib/corral", "/lib/systemd/system/corral@.service"):
        assert ns.run(["test", "-e", gone], check=False).returncode != 0, f"{gone} left"


def test_packaged_sandbox_keeps_the_runtime_working(ns: SystemdNamespace, deb) -> None:
    install(ns, deb.path)
    write(ns, "/srv/probe/probe.py", PROBE)
    write(ns, "/etc/corral/probe.yaml", "app: unused:app\n")
    write(ns, "/etc/systemd/system/corral@probe.service.d/probe.conf", PROBE_DROPIN)
    ns.daemon_reload()
    proc = ns.systemctl("start", "corral@probe.service", timeout=120, check=False)
    assert proc.returncode == 0, f"probe failed to run:\n{ns.journal('corral@probe.service')}"
    results = json.loads(ns.run(["cat", "/var/lib/corral/probe/probe.json"]).stdout)
    failed = {name: detail for name, (state, detail) in results.items() if state != "ok"}
    assert failed == {}, "inside the unit's sandbox:\n" + "\n".join(
        f"{name}: {detail}" for name, detail in failed.items())
    assert len(results) == 11
