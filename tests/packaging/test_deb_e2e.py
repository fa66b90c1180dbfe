"""End to end under a real systemd (overlay namespace, so dpkg never touches the host):
install the .deb, deploy a demo app from its own virtualenv as the README's walk-through
does (state directory, ReadWritePaths=, LoadCredential=, the socket drop-in for nginx's
group), serve it through corral@demo.socket, reload, upgrade under load with 0 failed
requests, stop and purge: the package leaves nothing behind but the app's data, which purge
must never delete. And run a probe inside the packaged unit's sandbox."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pkgns import (
    APP,
    DPKG_ENV,
    SERVICE,
    SOCKET,
    boot,
    check_demo_app_writes_and_reads_its_secret,
    demo_load,
    deploy_demo_app,
    enablement_links,
    exists,
    notes_in_state_dir,
    processes,
    request,
    start_demo_app,
    write,
)
from scenario import PROBE, PROBE_DROPIN

from harness.systemd import SystemdNamespace

# Two package builds (~1 min on a loaded machine) and the whole scenario.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def ns(systemd_ns) -> SystemdNamespace:
    ns = boot(systemd_ns)
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


def test_install_serve_reload_upgrade_under_load_and_purge(ns: SystemdNamespace, deb,
                                                           deb_newer) -> None:
    # 1. Install: the user exists, the templates are known, nothing was started or enabled.
    install(ns, deb.path)
    assert ns.run(["id", "-u", "corral"]).returncode == 0
    listed = ns.systemctl("list-unit-files", "corral@*").stdout
    assert "corral@.service" in listed and "corral@.socket" in listed
    assert "corral@" not in ns.systemctl("list-units", "--all", "--plain", "corral@*").stdout
    package_files = ns.run(["dpkg", "-L", "corral"]).stdout.split()

    # 2. The walk-through: the app's venv, config, secret, drop-ins and migrate; then start
    # the socket: the first request activates the service and gets 200.
    digest = deploy_demo_app(ns)
    main_pid = start_demo_app(ns)
    check_demo_app_writes_and_reads_its_secret(ns, digest)

    # Load from here on, through the reload and the upgrade.
    load = demo_load(ns)

    # 3. Reload: synchronous, succeeds, still 200, same main process.
    proc = ns.systemctl("reload", SERVICE, timeout=180, check=False)
    assert proc.returncode == 0, f"systemctl reload failed:\n{proc.stderr}"
    assert request(ns)[0] == 200
    assert ns.show(SERVICE, "MainPID") == main_pid

    # 4. Install a newer build over it while the load runs.
    install(ns, deb_newer.path)
    assert ns.run(["dpkg-query", "-W", "-f", "${Version}", "corral"]).stdout == \
        deb_newer.path.name.split("_")[1]
    load.wait_for_more(50)
    stats = load.stop()
    print(f"load across reload + upgrade: {stats}")
    assert stats["failed"] == 0, f"failed requests: {stats}"
    assert stats["ok"] > 100
    # The upgrade reloaded the running instance (not a restart: same PID, no restarts).
    reloads = ns.journal(SERVICE).count(f"Reloaded {SERVICE}")
    assert reloads >= 2, f"expected the manual and the upgrade's reload, saw {reloads}"
    assert ns.show(SERVICE, "ActiveState") == "active"
    assert ns.show(SERVICE, "MainPID") == main_pid
    assert ns.show(SERVICE, "NRestarts") == "0"
    # The new code still has the app's data and secret.
    assert request(ns, "/notes", method="POST", data="third") == (201, "3")
    assert request(ns, "/secret") == (200, digest)

    # 5. Stop, purge: nothing left running, no file of the package left behind, and the
    # app's data untouched: its state directory is the only place the unit lets it write.
    ns.systemctl("stop", SOCKET, SERVICE, timeout=120)
    proc = ns.run(["dpkg", "--purge", "corral"], env=DPKG_ENV, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert notes_in_state_dir(ns) == ["first", "second", "third"]
    assert exists(ns, f"/srv/{APP}/media/upload.txt")
    assert f"kept /var/lib/corral/{APP}:" in proc.stderr, \
        f"purge must name the data it kept:\n{proc.stderr}"
    units = ns.systemctl("list-units", "--all", "--plain", "--no-legend", "corral@*").stdout
    assert " active " not in units, units
    assert enablement_links(ns) == []
    uid = int(ns.run(["id", "-u", "corral"]).stdout)
    left = [p for p in processes(ns) if p[2] == uid or "/usr/lib/corral/" in p[3]]
    assert left == [], f"processes left running: {left}"
    leftovers = ns.run(["sh", "-c", 'for f; do [ -e "$f" ] && [ ! -d "$f" ] && echo "$f"; done; '
                        "true", "sh", *package_files]).stdout.split()
    assert leftovers == [], f"package files left after purge: {leftovers}"
    for gone in ("/usr/lib/corral", "/lib/systemd/system/corral@.service",
                 # The app's cache and logs directories were empty: those go.
                 "/var/cache/corral", "/var/log/corral"):
        assert not exists(ns, gone), f"{gone} left"


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
