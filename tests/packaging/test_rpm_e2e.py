"""The RPM end to end under a real systemd (overlay namespace, so rpm never touches the host):
install it with its scriptlets (`rpm -i --nodeps`: Debian's rpmdb knows none of the
dependencies), deploy the demo app as the README's walk-through does, serve it through
corral@demo.socket, reload under load with 0 failed requests, and erase the package: its
%preun stops the instances, its files go, and the app's data stays.

Debian's rpm has no file triggers; on Fedora, systemd's own package runs `systemctl
daemon-reload` when unit files come or go. The spec's %posttrans does it after install; the
test does it after erase, as Fedora's trigger would."""

from __future__ import annotations

import shutil

import pytest
from pkgns import (
    SERVICE,
    SOCKET,
    boot,
    check_demo_app_writes_and_reads_its_secret,
    connect_error,
    demo_load,
    deploy_demo_app,
    enablement_links,
    exists,
    notes_in_state_dir,
    processes,
    request,
    start_demo_app,
)

from harness.systemd import SystemdNamespace

pytestmark = pytest.mark.timeout(900)


def test_install_serve_reload_and_erase(systemd_ns, rpm) -> None:
    built = rpm  # the package (fixture); _rpm() runs the command inside
    ns = boot(systemd_ns)

    # 1. Install with the scriptlets: %pre creates the user, %posttrans loads the templates;
    # nothing is enabled or started.
    target = ns.workdir / built.path.name
    shutil.copy(built.path, target)
    _rpm(ns, "-i", "--nodeps", str(target))
    assert _rpm(ns, "-q", "corral").strip() == built.path.name.removesuffix(".rpm")
    assert ns.run(["id", "-u", "corral"]).returncode == 0
    listed = ns.systemctl("list-unit-files", "corral@*").stdout
    assert "corral@.service" in listed and "corral@.socket" in listed
    assert "corral@" not in ns.systemctl("list-units", "--all", "--plain", "corral@*").stdout
    package_files = _rpm(ns, "-ql", "corral").split()
    assert "/usr/lib/systemd/system/corral@.service" in package_files

    # 2. Deploy as the README says, start the socket; the first request starts the service.
    digest = deploy_demo_app(ns)
    main_pid = start_demo_app(ns)
    check_demo_app_writes_and_reads_its_secret(ns, digest)

    # 3. Reload under load: synchronous, 0 failed requests, same main process.
    load = demo_load(ns)
    proc = ns.systemctl("reload", SERVICE, timeout=180, check=False)
    assert proc.returncode == 0, f"systemctl reload failed:\n{proc.stderr}"
    load.wait_for_more(50)
    stats = load.stop()
    print(f"load across the reload: {stats}")
    assert stats["failed"] == 0, f"failed requests: {stats}"
    assert stats["ok"] > 100
    assert ns.journal(SERVICE).count(f"Reloaded {SERVICE}") == 1
    assert ns.show(SERVICE, "MainPID") == main_pid
    assert ns.show(SERVICE, "NRestarts") == "0"
    assert request(ns, "/notes", method="POST", data="third") == (201, "3")

    # 4. Erase while the app runs: %preun stops it, the package's files go, its data stays.
    _rpm(ns, "-e", "--nodeps", "corral")
    assert ns.run(["rpm", "-q", "corral"], check=False).returncode != 0
    uid = int(ns.run(["id", "-u", "corral"]).stdout)
    left = [p for p in processes(ns) if p[2] == uid or "/usr/lib/corral/" in p[3]]
    assert left == [], f"processes left running: {left}"
    for unit in (SOCKET, SERVICE):  # still loaded: systemd has not re-read its unit path
        assert ns.show(unit, "ActiveState") == "inactive", unit
    assert connect_error(ns, "root") == "ECONNREFUSED"  # the socket is closed
    assert enablement_links(ns) == []  # %preun disables what it stops, as for any unit
    ns.daemon_reload()  # what Fedora's systemd file trigger does
    assert "corral@" not in ns.systemctl("list-unit-files", "corral@*", check=False).stdout
    leftovers = ns.run(["sh", "-c", 'for f; do [ -e "$f" ] && [ ! -d "$f" ] && echo "$f"; done; '
                        "true", "sh", *package_files]).stdout.split()
    assert leftovers == [], f"package files left after rpm -e: {leftovers}"
    assert not exists(ns, "/usr/lib/corral")
    assert notes_in_state_dir(ns) == ["first", "second", "third"]


def _rpm(ns: SystemdNamespace, *args: str) -> str:
    proc = ns.run(["rpm", *args], timeout=300, check=False)
    assert proc.returncode == 0, f"rpm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
