"""A rolling reload that fails after its first batch brings the old code back on every slot.

The old code is gone from disk by then, so the old workers a batch replaces are parked
(``reload_rollback: full``, the default): they take no new connections but keep the old code
loaded, and come back if a later batch fails. Each test runs under closed-loop load and counts
every failed request. `corral run` runs as a plain child process (``LocalCorral``).
"""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import pytest

from reload_util import Load, LocalCorral
from util import wait_until

BREAK_AT_IMPORT = '''\
import os as _os
import time as _time
_n = 1
while True:  # this import's number: the first marker file it creates (O_EXCL: two imports never share one)
    try:
        _os.close(_os.open({prefix!r} + str(_n), _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY))
        break
    except FileExistsError:
        _n += 1
if _n >= {fail_from}:
    if {hang!r}:
        _time.sleep(3600)  # never ready: reload_timeout decides
    raise RuntimeError("import {{}} of the new code fails".format(_n))
'''


def deploy_breaking(corral: LocalCorral, version: str, fail_from: int, hang: bool = False) -> None:
    """Deploy new code that imports fine ``fail_from - 1`` times, then breaks (say, a migration it
    runs at import, or a resource only the first workers get): the first batches boot, a later one
    cannot."""
    corral.deploy(version)
    path = corral.app_dir / "deployapp.py"
    prefix = str(corral.tmp / f"import-of-{version}-")
    path.write_text(BREAK_AT_IMPORT.format(prefix=prefix, fail_from=fail_from, hang=hang)
                    + path.read_text())


def _ready(data: dict) -> dict[int, int]:
    """pid -> generation of the workers that serve."""
    return {w["pid"]: w["generation"] for w in data["workers"] if w["state"] == "ready"}


def _version(port: int) -> str:
    # A fresh connection each time: whichever worker accepts it answers.
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=30, headers={"connection": "close"}).headers[
        "x-app-version"]


@pytest.mark.parametrize("workers, batch, fail_from, hang, parked", [
    (3, 1, 2, False, 1),  # batch 2/3 cannot import: the one replaced worker comes back
    (3, 1, 3, False, 2),  # batch 3/3: two come back
    (4, 2, 3, False, 2),  # batches of 2; batch 2/2 fails
    (3, 1, 2, True, 1),  # batch 2/3 never gets ready: reload_timeout rolls it back
])
def test_a_rolling_reload_failing_after_the_first_batch_brings_the_old_code_back_on_every_slot(
        tmp_path, workers, batch, fail_from, hang, parked):
    config = {"workers": workers, "reload_strategy": "rolling", "reload_batch": batch}
    if hang:
        config["reload_timeout"] = 4
    with LocalCorral(tmp_path, **config).start("v1") as corral:
        before = _ready(corral.status())
        assert sorted(before.values()) == [1] * workers
        with Load(corral.port, clients=6) as load:
            load.wait_for_more(100)
            deploy_breaking(corral, "v2", fail_from, hang)
            proc = corral.reload()
            returned = time.monotonic()
            assert proc.returncode == 1, (proc.stdout, proc.stderr)
            batches = -(-workers // batch)
            failed_batch = (fail_from - 1) // batch + 1
            assert (f"gen 2 rolled back at batch {failed_batch}/{batches}, gen 1 serves on every slot again "
                    f"({parked} parked worker{'s' if parked != 1 else ''} back)") in proc.stderr, proc.stderr
            if hang:
                assert "not ready within reload_timeout=4s" in proc.stderr, proc.stderr
            else:  # the first of the failing batch to exit is the one reported
                failed = re.search(r"import (\d+) of the new code fails", proc.stderr)
                assert failed and fail_from <= int(failed.group(1)) < fail_from + batch, proc.stderr
            # The very processes that served before are back, every one of them ready.
            data = corral.status()
            assert data["generation"] == 1 and data["workers_ready"] == data["workers_wanted"] == workers
            assert _ready(data) == before, data["workers"]
            load.wait_for_more(200)
            wait_until(lambda: set(_ready(corral.status())) == set(before) and
                       {w["pid"] for w in corral.status()["workers"]} == set(before), 60, 0.1,
                       "the new workers drained and gone")
        assert not load.failures(), (load.summary(), load.failures()[:5])
        late = [r.version for r in load.done() if r.sent > returned]
        assert len(late) >= 200 and set(late) == {"v1"}, sorted(set(late))
        assert {_version(corral.port) for _ in range(20)} == {"v1"}
        log = corral.log()
        assert log.count("parked: it keeps the old code loaded") == parked, log[-4000:]
        assert "unparked: the reload rolled back" in log, log[-4000:]


def test_a_rolling_reload_that_succeeds_drains_the_parked_workers_at_cutover(tmp_path):
    with LocalCorral(tmp_path, workers=3, reload_strategy="rolling", reload_batch=1).start("s1") as corral:
        before = _ready(corral.status())
        with Load(corral.port, clients=6) as load:
            load.wait_for_more(100)
            corral.deploy("s2")
            proc = corral.reload()
            returned = time.monotonic()
            assert proc.returncode == 0, proc.stderr
            load.wait_for_more(200)
            data = corral.status()
            assert data["generation"] == 2 and sorted(_ready(data).values()) == [2, 2, 2]
            wait_until(lambda: not {w["pid"] for w in corral.status()["workers"]} & set(before), 60, 0.1,
                       "every old worker gone")
        assert not load.failures(), (load.summary(), load.failures()[:5])
        late = [r.version for r in load.done() if r.sent > returned]
        assert late and set(late) == {"s2"}, sorted(set(late))
        log = corral.log()
        assert log.count("parked: it keeps the old code loaded") == 2, log[-4000:]  # batches 1 and 2, not 3
        assert "replaced workers parked until the last batch is ready" in log


def test_a_parked_worker_that_dies_leaves_its_slot_on_the_new_code_and_the_reload_says_so(tmp_path):
    with LocalCorral(tmp_path, workers=2, reload_strategy="rolling", reload_batch=1,
                     reload_timeout=10).start("d1") as corral:
        deploy_breaking(corral, "d2", fail_from=2, hang=True)
        reloading = corral.reload_async()
        # Batch 1 is up and its old worker parked; batch 2 hangs in its import.
        parked = wait_until(lambda: next((w for w in corral.status()["workers"] if w["generation"] == 1
                                          and "parked" in _worker_log(corral, w["pid"])), None),
                            60, 0.1, "a parked worker")
        os.kill(parked["pid"], signal.SIGKILL)
        out, err = reloading.communicate(timeout=120)
        assert reloading.returncode == 1
        assert "rolling reload stopped at batch 2/2" in err and "1 of 2 workers run gen 2" in err, err
        assert "their parked old workers are gone" in err, err
        data = corral.status()
        assert data["workers_ready"] == data["workers_wanted"] == 2
        assert sorted(_ready(data).values()) == [1, 2]


def _worker_log(corral: LocalCorral, pid: int) -> str:
    return "\n".join(line for line in corral.log().splitlines() if f"pid {pid}," in line)
