"""`systemctl restart` refuses no connection: with a socket unit, and with systemd's fd store.

* Socket activation: PID 1 owns the listener; during the restart connections wait
  in its queue and the new supervisor's workers take them.
* No socket unit: corral binds its socket and parks a copy in PID 1's fd store
  (FDSTORE=1, FileDescriptorStoreMax= in the unit); the restarted supervisor gets it
  back in LISTEN_FDS, so the socket never closes.

For contrast the last test restarts a service that binds its own socket without
FileDescriptorStoreMax=: the socket is bound anew, and the test prints how many connections
that refused (not asserted: a matter of timing).
"""

from __future__ import annotations

from typing import Iterator

import pytest

from harness.fixtures import require_systemd_namespace
from harness.systemd import SystemdNamespace
from reload_util import Load, Site, service_unit, socket_unit
from util import free_port


@pytest.fixture(scope="module")
def ns() -> Iterator[SystemdNamespace]:
    require_systemd_namespace()
    namespace = SystemdNamespace({})
    with namespace:
        try:
            yield namespace
        finally:
            print(f"--- console ---\n{namespace.console()[-10000:]}")


def _site(ns: SystemdNamespace, name: str, *, socket: bool, store: bool) -> Site:
    port = free_port()
    config = ns.workdir / f"{name}.service.json"
    units = {f"{name}.service": service_unit(config, socket=f"{name}.socket" if socket else None,
                                              runtime=name,
                                              extra="FileDescriptorStoreMax=16" if store else "")}
    if socket:
        units[f"{name}.socket"] = socket_unit(port)
    for unit, text in units.items():
        ns.write_unit(unit, text)
    ns.daemon_reload()
    return Site(ns, port, service=f"{name}.service", socket=f"{name}.socket" if socket else None,
                control=f"/run/{name}/control.sock")


def _restart_under_load(site: Site, name: str, restarts: int = 2) -> dict[str, int]:
    pids = []
    with Load(site.port, clients=8, fresh_every=2) as load:
        load.wait_for_more(200)
        for _ in range(restarts):
            pids.append(site.show("MainPID"))
            proc = site.ns.systemctl("restart", site.service, timeout=180, check=False)
            assert proc.returncode == 0, proc.stderr
            site.wait_serving()
            load.wait_for_more(200)
    summary = load.summary()
    print(f"{name}: {restarts} restarts: sent {summary['sent']}, failed {summary['failed']}, "
          f"refused {summary['refused']}, reset {summary['reset']}")
    assert len(set(pids + [site.show("MainPID")])) == restarts + 1  # really restarted
    return summary


def test_f_restart_with_socket_activation_refuses_nothing(ns):
    site = _site(ns, "sockact", socket=True, store=False)
    site.fresh("s1", workers=2)
    summary = _restart_under_load(site, "(f) socket activation")
    assert summary["refused"] == 0
    assert summary["failed"] == 0


def test_f_restart_with_fdstore_refuses_nothing(ns):
    site = _site(ns, "fdstore", socket=False, store=True)
    data = site.fresh("f1", workers=2, bind=[f"127.0.0.1:{site.port}"])
    assert [item["source"] for item in data["listeners"]] == ["bound"]
    assert site.show("NFileDescriptorStore") == "1"
    summary = _restart_under_load(site, "(f) fd store")
    assert summary["refused"] == 0
    assert summary["failed"] == 0
    data = site.status()
    # The restarted supervisor took the stored socket back instead of binding a new one.
    assert [item["source"] for item in data["listeners"]] == ["fdstore"]
    assert site.show("NFileDescriptorStore") == "1"
    # `systemctl stop` empties the store (systemd 252); the next start binds afresh.
    site.ns.systemctl("stop", site.service, timeout=120)
    assert site.show("NFileDescriptorStore") == "0"


def test_f_changed_bind_on_restart_replaces_the_stored_socket(ns):
    site = _site(ns, "rebind", socket=False, store=True)
    site.fresh("r1", workers=1, bind=[f"127.0.0.1:{site.port}"])
    other = free_port()
    site.configure(**{**site.config, "bind": [f"127.0.0.1:{other}"]})
    site.ns.systemctl("restart", site.service, timeout=120)
    data = site.wait_serving()
    assert [item["address"] for item in data["listeners"]] == [f"127.0.0.1:{other}"]
    assert site.show("NFileDescriptorStore") == "1"
    site.port = other
    assert site.get("/").status_code == 200
    site.ns.systemctl("stop", site.service, timeout=120)


def test_restart_without_fdstore_for_contrast(ns):
    site = _site(ns, "nostore", socket=False, store=False)
    site.fresh("n1", workers=2, bind=[f"127.0.0.1:{site.port}"])
    with Load(site.port, clients=8, fresh_every=2) as load:
        load.wait_for_more(200)
        site.ns.systemctl("restart", site.service, timeout=180)
        site.wait_serving()
        load.wait_for_more(200)
    summary = load.summary()
    print(f"contrast, restart without socket unit or fd store: sent {summary['sent']}, "
          f"failed {summary['failed']}, refused {summary['refused']}")
    # Without FileDescriptorStoreMax= systemd dropped the stored socket: it was bound anew.
    assert [item["source"] for item in site.status()["listeners"]] == ["bound"]
    assert site.show("NFileDescriptorStore") == "0"
    site.ns.systemctl("stop", site.service, timeout=120)
