"""Rolling deploys across three real hosts (systemd + corral from the .deb) behind HAProxy,
under load through HAProxy, as Ansible's `serial: 1` drives them (issue 18).

What is counted for each rollout: the requests the load generator sent through HAProxy, the
failed ones and the connection errors, and how long each host was out of HAProxy's pool."""

from __future__ import annotations

import time

import pytest

from fleet import Fleet, Host, rolling
from util import wait_until

# Building the .deb (~20 s with the wheels cached, more on a loaded machine), four namespaces,
# three installs, the rollout.
pytestmark = pytest.mark.timeout(600)


def test_rolling_reload_to_a_new_version_through_haproxy(fleet: Fleet) -> None:
    load = fleet.start_load()
    assert fleet.recorder is not None
    reloaded_at: dict[str, float] = {}

    def reload_to_v2(host: Host) -> None:
        host.deploy("v2")
        proc = host.systemctl("reload", "corral@app.service", check=False)
        assert proc.returncode == 0, f"{host.name}: systemctl reload failed: {proc.stderr}"
        reloaded_at[host.name] = time.monotonic()
        # The new version serves through HAProxy: ask this host through it.
        served_by, body = fleet.via_haproxy(host.name)
        assert served_by == host.name and body.startswith("v2 "), \
            f"{host.name} through HAProxy answered {body!r} (served by {served_by!r})"
        # ... and in the load generator's own traffic.
        wait_until(lambda: load.stats()["served"].get(host.name, {}).get("v2", {}).get("count", 0) > 0,
                   timeout=60, what=f"load through HAProxy reaching v2 on {host.name}")
        load.wait_for_more(30)

    since = time.monotonic()
    steps = rolling(fleet.hosts, reload_to_v2)
    until = time.monotonic()
    stats = load.stop()

    report = {s.host.name: {"ok": s.ok, "seconds": round(s.ended - s.started, 1),
                            "out_of_pool_s": round(fleet.recorder.out_of_pool(s.host.name, since, until), 2),
                            "marked_down": len(fleet.recorder.marked_down(s.host.name, since, until))}
              for s in steps}
    print(f"rolling reload: requests ok {stats['ok']}, failed {stats['failed']}, connect errors "
          f"{stats['connect_errors']}, stale keep-alive retries {stats['retried_stale_keepalive']}; "
          f"per host {report}; fleet built in {fleet.timings}")

    assert [s.ok for s in steps] == [True] * 3, [s.error for s in steps]
    assert all(h.local_version() == "v2" for h in fleet.hosts)
    # Every request sent after a host's reload returned was answered by the new code.
    for name, at in reloaded_at.items():
        old = stats["served"].get(name, {}).get("v1")
        assert old is None or old["last_sent"] < at, \
            f"{name} answered v1 to a request sent {old['last_sent'] - at:.3f}s after its reload returned"
    assert stats["ok"] > 200
    # A reload is invisible to HAProxy: no host left the pool, none was marked down.
    assert all(r["marked_down"] == 0 for r in report.values()), report
    assert stats["failed"] == 0 and stats["connect_errors"] == 0, \
        f"failed requests through HAProxy: {stats['failed']}, connect errors " \
        f"{stats['connect_errors']}: {stats['errors']}"
