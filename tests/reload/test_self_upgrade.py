"""(g) corral's own code replaced on disk, then `systemctl reload`: the supervisor re-executes
itself in place (same PID), adopts its workers, deploys a new generation; no request fails.

The unit runs a private copy of the corral package (``PYTHONPATH=<workdir>/lib``), which
the test edits as a package upgrade would. A copy that cannot even be imported is
refused by the preflight: the reload fails and the old supervisor keeps serving.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

from harness.fixtures import require_systemd_namespace
from harness.systemd import SystemdNamespace
from reload_util import Load, Site, service_unit, socket_unit
from util import REPO, free_port, wait_until

PYTHON = sys.executable


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    require_systemd_namespace()
    port = free_port()
    ns = SystemdNamespace({})
    lib = ns.workdir / "lib"
    shutil.copytree(REPO / "daemon" / "corral", lib / "corral",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    ns.units["app.socket"] = socket_unit(port)
    corral = f"{PYTHON} -m corral"
    ns.units["app.service"] = service_unit(ns.workdir / "app.service.json", runtime="upgradetest", corral=corral,
                                           extra=f"Environment=PYTHONPATH={lib}")
    with ns:
        try:
            yield Site(ns, port, control="/run/upgradetest/control.sock", corral=(PYTHON, "-m", "corral"),
                       env={"PYTHONPATH": str(lib)})
        finally:
            print(f"--- console ---\n{ns.console()[-10000:]}")


def _upgrade(lib: Path, version: str) -> None:
    """What a package upgrade does: new files in place (here a new version string)."""
    init = lib / "corral" / "__init__.py"
    text = init.read_text()
    start = text.index("__version__")
    end = text.index("\n", start)
    init.write_text(text[:start] + f'__version__ = "{version}"' + text[end:])


def _upgrade_and_reload(site: Site, load: Load, before: dict, version: str, app_version: str) -> float:
    """Upgrade corral on disk to ``version``, deploy ``app_version`` and reload under ``load``: the
    supervisor re-executes in place (same MainPID, one more re-exec, the next generation) and its
    adopted workers drain. Returns when the reload command returned (time.monotonic())."""
    main_pid = site.show("MainPID")
    old_workers = {w["pid"] for w in before["workers"]}
    _upgrade(site.ns.workdir / "lib", version)
    site.deploy(app_version)
    proc, _, returned = site.reload()
    assert proc.returncode == 0, proc.stderr + site.ns.console()[-3000:]
    load.wait_for_more(200)
    data = site.status()
    assert site.show("MainPID") == main_pid
    assert data["pid"] == int(main_pid)
    assert data["supervisor"]["code"]["version"] == version
    assert data["supervisor"]["code"]["reexecs"] == before["supervisor"]["code"]["reexecs"] + 1
    assert data["generation"] == before["generation"] + 1
    # The adopted old workers were drained; every worker now is new.
    wait_until(lambda: not {w["pid"] for w in site.status()["workers"]} & old_workers, 60, 0.1,
               "the adopted workers drained")
    return returned


def test_g_corral_upgraded_on_disk_reload_reexecs_in_place_without_failing_a_request(site):
    lib = site.ns.workdir / "lib"
    before = site.fresh("u1", workers=2)
    assert before["supervisor"]["code"]["path"] == str(lib / "corral")
    assert before["supervisor"]["code"]["reexecs"] == 0
    main_pid = site.show("MainPID")
    with Load(site.port, clients=8) as load:
        load.wait_for_more(200)
        _upgrade_and_reload(site, load, before, "9.9.9", "u2")

        # A reload without a code change does not re-execute.
        site.deploy("u3")
        proc, _, _ = site.reload()
        assert proc.returncode == 0, proc.stderr
        assert site.status()["supervisor"]["code"]["reexecs"] == 1

        # An upgrade that cannot load is refused before the exec; the old supervisor serves on.
        broken = lib / "corral" / "supervisor" / "reload.py"
        good_text = broken.read_text()
        broken.write_text(good_text + "\ndef broken(:\n")
        try:
            proc, _, _ = site.reload()
            assert proc.returncode != 0
            status_text = site.show("StatusText")
            assert "self-upgrade refused" in status_text and "SyntaxError" in status_text, status_text
            assert site.show("MainPID") == main_pid
            load.wait_for_more(100)
        finally:
            broken.write_text(good_text)
        proc, _, returned = site.reload()
        assert proc.returncode == 0, proc.stderr
        load.wait_for_more(100)
    summary = load.summary()
    print(f"(g) self-upgrade: sent {summary['sent']}, failed {summary['failed']}, reset {summary['reset']}")
    assert summary["failed"] == 0, load.failures()[:5]
    assert site.show("MainPID") == main_pid
    assert {r.version for r in load.done() if r.sent > returned} == {"u3"}


def test_g_a_self_upgrade_with_zygote_workers_forks_the_new_generation_from_a_new_zygote(site):
    # worker_start: zygote with preload: the adopted workers (forks of the old image's zygote)
    # keep serving through the re-exec; the old zygote goes with the old image (its request
    # channel closes); the new generation is forked from a zygote of the new code.
    before = site.fresh("z1", workers=2, worker_start="zygote", preload=True)
    [old_zygote] = before["zygotes"]
    assert old_zygote["state"] == "ready" and old_zygote["preloaded"] and old_zygote["generation"] == 1
    with Load(site.port, clients=8) as load:
        load.wait_for_more(200)
        returned = _upgrade_and_reload(site, load, before, "9.9.10", "z2")
        zygotes = wait_until(lambda: (lambda z: z if [x["generation"] for x in z] == [2] else None)(
            site.status()["zygotes"]), 60, 0.1, "only the new generation's zygote")
        assert zygotes[0]["state"] == "ready" and zygotes[0]["pid"] != old_zygote["pid"]
        assert zygotes[0]["forks"] == 2
    summary = load.summary()
    print(f"(g) self-upgrade with zygote workers: sent {summary['sent']}, failed {summary['failed']}")
    assert summary["failed"] == 0, load.failures()[:5]
    assert {r.version for r in load.done() if r.sent > returned} == {"z2"}
