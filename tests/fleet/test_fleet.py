"""Four rolling deploys across three real hosts (systemd + corral from the .deb) behind HAProxy,
under one load through HAProxy for all of them, as Ansible's `serial: 1` drives them (issue 18):

a. `systemctl reload` to a new app version, host by host;
b. `systemctl restart` (to the next app version), host by host;
c. a package upgrade: `apt install ./corral_<newer>.deb`, host by host;
d. a bad deploy: the next release fails to import on host 2 (its venv lacks a new dependency),
   its `systemctl reload` fails and it keeps serving the old version; the rollout stops there,
   host 3 is never touched, and hosts 1 and 3 keep serving.

HAProxy checks `GET /readyz` on each host's metrics port and asks its agent port
(fleet.CHECK), and the hosts say they are leaving `drain_delay` before they stop serving.

Counted and asserted: 0 failed requests and 0 connection errors through HAProxy across all four;
from HAProxy's stats socket (sampled all along): each host leaves the pool and comes back around
its stop (restart, upgrade), never marked DOWN by a check. Per rollout the requests sent, the
failed ones and each host's time out of the pool go to /tmp/fleet-summary.json
(CORRAL_FLEET_SUMMARY overrides) and to the test's output."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet import DEPENDENCY, DRAIN_DELAY, Fleet, Host, Step, rolling, rollout_report

# Building two .deb versions (~20 s each with the wheels cached, more on a loaded machine),
# four namespaces, three installs, four rollouts.
pytestmark = pytest.mark.timeout(900)

SUMMARY = Path(os.environ.get("CORRAL_FLEET_SUMMARY", "/tmp/fleet-summary.json"))


def served_by(fleet: Fleet, host: Host) -> tuple[str, int]:
    """(version, pid) of ``host``'s app, asked through HAProxy."""
    server, body = fleet.via_haproxy(host.name)
    assert server == host.name, f"asked HAProxy for {host.name}, {server!r} answered {body!r}"
    version, pid = body.split()
    return version, int(pid)


def systemctl(host: Host, verb: str) -> None:
    """``systemctl VERB corral@app.service`` on ``host``; raises (ending the rollout, as a failed
    Ansible task does) with systemd's own words when it fails."""
    proc = host.systemctl(verb, "corral@app.service", check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{host.name}: systemctl {verb} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()}")


# What corral logs when it starts telling the load balancers it is leaving (drain_delay).
DRAIN_ANNOUNCED = "telling load balancers this host drains"


def left_pool_after_announcing(fleet: Fleet, steps: list[Step], report: dict) -> None:
    """For each host of a rollout that stops it (restart, upgrade): how long after corral
    announced its drain HAProxy stopped sending it new requests, into ``report``; it must be
    within drain_delay, while corral still took every request."""
    assert fleet.recorder is not None
    for step in steps:
        announced = [t for t in step.host.logged_at(DRAIN_ANNOUNCED) if step.started <= t <= step.ended]
        assert len(announced) == 1, f"{step.host.name}: expected one drain announcement, saw {announced}"
        left = next((c for c in fleet.recorder.history(step.host.name)
                     if c.at >= announced[0] and not c.stat.in_pool), None)
        assert left is not None, f"{report['rollout']}: HAProxy never took {step.host.name} out of the pool"
        lag = left.at - announced[0]
        report["hosts"][step.host.name]["left_pool_s_after_drain_announced"] = round(lag, 2)
        assert lag < DRAIN_DELAY, \
            f"{report['rollout']}: HAProxy took {step.host.name} out {lag:.2f}s after corral announced " \
            f"its drain, later than drain_delay ({DRAIN_DELAY}s): {left.stat}"


def test_four_rollouts_through_haproxy_with_zero_failed_requests(fleet: Fleet) -> None:
    recorder, newer_deb = fleet.recorder, fleet.newer_deb
    assert recorder is not None and newer_deb is not None
    load = fleet.start_load()
    reports: list[dict] = []
    began = time.monotonic()

    def write_summary(**extra: object) -> None:
        SUMMARY.write_text(json.dumps({"drain_delay_s": DRAIN_DELAY, "rollouts": reports,
                                       "fleet_built_s": {k: round(v, 1) for k, v in fleet.timings.items()},
                                       **extra}, indent=2))

    def rollout(name: str, action: Callable[[Host], None]) -> tuple[list[Step], dict]:
        fleet.wait_in_pool()
        before, since = load.stats(), time.monotonic()
        steps = rolling(fleet.hosts, action)
        # Every host that still serves is back in the pool, and the load goes on past it.
        fleet.wait_in_pool()
        load.wait_for_more(30)
        report = rollout_report(name, steps, recorder, fleet.hosts, before, load.stats(), since,
                                time.monotonic())
        reports.append(report)
        write_summary()
        print(json.dumps(report))
        return steps, report

    # -- a. reload to v2 -------------------------------------------------------------------------
    reloaded_at: dict[str, float] = {}

    def reload_to_v2(host: Host) -> None:
        host.deploy("v2")
        systemctl(host, "reload")
        reloaded_at[host.name] = time.monotonic()
        host.wait_ready()
        assert served_by(fleet, host)[0] == "v2"
        load.wait_for_more(30)

    steps, reload_report = rollout("reload to v2", reload_to_v2)
    assert [s.ok for s in steps] == [True] * 3, [s.error for s in steps]
    # Every request sent after a host's reload returned was answered by the new code.
    served = load.stats()["served"]
    for name, at in reloaded_at.items():
        assert served.get(name, {}).get("v2", {}).get("count", 0) > 0, f"no load reached v2 on {name}"
        old = served.get(name, {}).get("v1")
        assert old is None or old["last_sent"] < at, \
            f"{name} answered v1 to a request sent {old['last_sent'] - at:.3f}s after its reload returned"

    # -- b. restart to v3 ------------------------------------------------------------------------
    def restart_to_v3(host: Host) -> None:
        host.deploy("v3")
        _, old_pid = served_by(fleet, host)
        systemctl(host, "restart")
        host.wait_ready()  # what the playbook waits for before the next host
        fleet.wait_in_pool(host.name)
        version, pid = served_by(fleet, host)
        assert (version, pid != old_pid) == ("v3", True), (version, pid, old_pid)

    steps, restart_report = rollout("restart to v3", restart_to_v3)
    assert [s.ok for s in steps] == [True] * 3, [s.error for s in steps]
    left_pool_after_announcing(fleet, steps, restart_report)

    # -- c. package upgrade ----------------------------------------------------------------------
    newer_version = newer_deb.name.split("_")[1]
    newer_upstream = newer_version.rpartition("-")[0]

    def upgrade(host: Host) -> None:
        assert host.package_version() != newer_version
        started = time.monotonic()
        proc = host.install_package(newer_deb)
        assert proc.returncode == 0, f"{host.name}: apt install failed:\n{proc.stdout}\n{proc.stderr}"
        assert host.package_version() == newer_version
        # The postinst's reload ran the new corral: the supervisor re-executed itself in place.
        reexecs = [t for t in host.logged_at("re-executed in place", f"corral {newer_upstream} (")
                   if t >= started]
        assert len(reexecs) == 1, f"{host.name}: no in-place re-exec into corral {newer_upstream}"
        host.wait_ready()
        fleet.wait_in_pool(host.name)
        # What answers through HAProxy now runs the new package's code: nothing it maps under
        # /usr/lib/corral is a file the upgrade replaced.
        version, pid = served_by(fleet, host)
        assert version == "v3"
        mapped = host.corral_code_mapped(pid)
        assert mapped, f"{host.name}: worker {pid} maps nothing under /usr/lib/corral"
        assert not any(mapped.values()), \
            f"{host.name}: worker {pid} still runs replaced code: {[f for f, gone in mapped.items() if gone]}"

    steps, upgrade_report = rollout(f"apt install ./{newer_deb.name}", upgrade)
    assert [s.ok for s in steps] == [True] * 3, [s.error for s in steps]
    left_pool_after_announcing(fleet, steps, upgrade_report)
    write_summary()

    # -- d. a bad deploy: v4 needs a dependency host 2 lacks -------------------------------------
    for host in fleet.hosts:
        if host.name != "h2":
            host.provide(DEPENDENCY)

    def reload_to_v4(host: Host) -> None:
        host.deploy("v4", needs=DEPENDENCY)
        systemctl(host, "reload")
        host.wait_ready()
        assert served_by(fleet, host)[0] == "v4"

    steps, bad_report = rollout("bad deploy of v4", reload_to_v4)
    assert [(s.host.name, s.ok) for s in steps] == [("h1", True), ("h2", False)], \
        [s.error for s in steps]
    assert "systemctl reload failed" in steps[1].error
    h1, h2, h3 = fleet.hosts
    assert DEPENDENCY in h2.journal(), "host 2's journal does not say why v4 failed"
    # Host 2 kept serving the old version (its workers never stopped), host 3 was never touched.
    assert [served_by(fleet, h)[0] for h in (h1, h2, h3)] == ["v4", "v3", "v3"]
    assert h2.local_version() == "v3" and h2.probe("/readyz")[0] == 200

    # -- the whole test --------------------------------------------------------------------------
    total = load.stop()
    ended = time.monotonic()
    down_marks = {h.name: recorder.marked_down(h.name, began, ended) for h in fleet.hosts}
    write_summary(total={"requests_ok": total["ok"], "failed": total["failed"],
                         "connect_errors": total["connect_errors"],
                         "stale_keepalive_retries": total["retried_stale_keepalive"],
                         "seconds": round(ended - began, 1)},
                  stats_socket_errors=recorder.errors)
    print(f"fleet summary ({SUMMARY}):\n{SUMMARY.read_text()}")

    assert total["failed"] == 0 and total["connect_errors"] == 0, \
        f"through HAProxy: {total['failed']} failed requests, {total['connect_errors']} connect " \
        f"errors: {total['errors']}"
    assert total["retried_stale_keepalive"] == 0, total["errors"]
    assert total["ok"] > 1000, total
    # Planned events never look like failures to HAProxy.
    assert all(not marks for marks in down_marks.values()), down_marks
    # A reload (surge) keeps the host in the pool; a stop takes it out and it comes back.
    assert all(h["out_of_pool_s"] == 0 for h in reload_report["hosts"].values()), reload_report
    for report in (restart_report, upgrade_report):
        for name, host_report in report["hosts"].items():
            assert host_report["out_of_pool_s"] > 0, f"{report['rollout']}: {name} never left the pool"
            assert host_report["states_while_out"], report
    assert all(h["out_of_pool_s"] == 0 for h in bad_report["hosts"].values()), bad_report
