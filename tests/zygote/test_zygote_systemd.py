"""worker_start: zygote under a real systemd: `systemctl reload` builds a new zygote from the new
code, a zygote that cannot import the app fails the reload while the old code serves, and the
zygote and its workers stay out of sd_notify (MainPID and NOTIFY_SOCKET are the supervisor's)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reload"))

from harness.fixtures import require_systemd_namespace  # noqa: E402
from harness.systemd import SystemdNamespace  # noqa: E402
from reload_util import Load, Site, service_unit, socket_unit  # noqa: E402
from util import free_port, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    require_systemd_namespace()
    port = free_port()
    ns = SystemdNamespace({})
    ns.units["app.socket"] = socket_unit(port)
    ns.units["app.service"] = service_unit(ns.workdir / "app.service.json")
    with ns:
        try:
            yield Site(ns, port)
        finally:
            print(f"--- console ---\n{ns.console()[-10000:]}")


def _zygotes(site: Site) -> list[dict]:
    return site.status()["zygotes"]


def test_reload_builds_a_new_zygote_and_a_broken_one_fails_the_reload(site):
    data = site.fresh("v1", workers=2, worker_start="zygote", preload=True)
    [first] = _zygotes(site)
    assert first["generation"] == 1 and first["state"] == "ready" and first["preloaded"]
    main_pid = int(site.show("MainPID"))
    assert data["pid"] == main_pid
    environ = site.ns.run(["cat", f"/proc/{first['pid']}/environ"], timeout=30).stdout
    assert "NOTIFY_SOCKET" not in environ, "the zygote (and so its workers) must not reach sd_notify"
    with Load(site.port, clients=6) as load:
        load.wait_for_more(100)
        site.deploy("v2")
        proc, _started, _returned = site.reload()
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: [z["generation"] for z in _zygotes(site)] == [2], 30, 0.1, "only generation 2's zygote")
        load.wait_for_more(100)
        assert site.get("/").text.strip() == "v2"
        serving = {w["pid"] for w in site.status()["workers"]}
        site.deploy("v3", import_error="deploy 3 is broken: no DATABASE_URL")
        proc, _started, _returned = site.reload()
        assert proc.returncode != 0
        load.wait_for_more(100)
    assert load.failed() == 0, load.failures()[:5]
    status = site.status()
    assert status["generation"] == 2 and not status["last_reload"]["ok"]
    assert "deploy 3 is broken: no DATABASE_URL" in status["last_reload"]["message"]
    assert {w["pid"] for w in status["workers"] if w["generation"] == 2} == serving
    # The workers the broken zygote forked report its error and exit; the reply does not wait for them.
    wait_until(lambda: {w["pid"] for w in site.status()["workers"]} == serving, 30, 0.1, "only generation 2's workers")
    assert site.get("/").text.strip() == "v2"
    assert site.show("ActiveState") == "active" and int(site.show("MainPID")) == main_pid
    wait_until(lambda: [z["generation"] for z in _zygotes(site)] == [2], 30, 0.1, "the broken zygote gone")
