"""Accept balance: connections spread evenly over the workers under wrk -c256."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from supervisor_util import Corral

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make sysdeps)")


def _spread(corral: Corral) -> list[int]:
    out = subprocess.run(["wrk", "-t2", "-c256", "-d3s", f"http://127.0.0.1:{corral.port}/"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    accepted = [w["connections_accepted"] for w in corral.status()["workers"]]
    mean = sum(accepted) / len(accepted)
    print(f"connections accepted per worker: {accepted}, max/mean {max(accepted) / mean:.2f}")
    return accepted


def test_shared_socket_no_worker_gets_more_than_1_5x_the_mean(tmp_path):
    with Corral(tmp_path, workers=4) as corral:
        accepted = _spread(corral)
        assert sum(accepted) >= 256
        assert max(accepted) <= 1.5 * sum(accepted) / len(accepted), accepted


def test_reuse_port_gives_each_slot_its_own_socket(tmp_path):
    with Corral(tmp_path, workers=4, reuse_port=True) as corral:
        listeners = corral.status()["listeners"]
        assert len(listeners) == 4 and len({item["group"] for item in listeners}) == 4
        accepted = _spread(corral)
        assert max(accepted) <= 1.5 * sum(accepted) / len(accepted), accepted
        # A slot's socket is never paused: nobody else would drain its queue.
        assert not any(w["stats"].get("accept_pauses") for w in corral.status()["workers"])
