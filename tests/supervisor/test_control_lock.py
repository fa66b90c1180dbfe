"""One control socket, one corral: a second instance with the same name is refused before it
binds anything, and it leaves the first one's control socket alone (issue 12, defect 2).

The claim is an flock()ed lock file beside the socket, held for the supervisor's whole life,
an in-place re-exec (self-upgrade) included.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from control_util import clean_env
from supervisor_util import Corral, Load
from util import CORRAL, REPO, free_port, wait_until


def _reload(control: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, "reload", "--control-socket", control], capture_output=True, text=True,
                          timeout=120, env=env)


def _locked(path: str) -> bool:
    """Whether some process holds the flock on ``path`` (we cannot take it without waiting)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_second_instance_is_refused_and_leaves_the_first_ones_control_socket(tmp_path):
    with Corral(tmp_path, workers=1) as first:
        second = subprocess.run([CORRAL, "run", "--config", str(first.config_path), "-b",
                                 f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        # The first instance still answers on its control socket: status, and a real reload.
        assert os.path.exists(first.control)
        assert first.status()["pid"] == first.proc.pid
        reload = _reload(first.control)
        assert reload.returncode == 0, reload.stderr
        assert "reload ok" in reload.stdout
        assert first.status()["generation"] == 2
        assert first.get("/")[0] == 200
        # The second one said why, who holds the name, and what to do.
        assert "another corral is running with control socket" in second.stderr
        assert f"pid {first.proc.pid}" in second.stderr
        assert "-n NAME" in second.stderr
        assert "Traceback" not in second.stderr


def test_the_same_config_run_by_hand_is_refused_before_it_binds(tmp_path):
    """An admin's `corral run --config <the service's file>`: with reuse_port it could bind the
    same port and take connections from the service; it must fail before binding anything."""
    with Corral(tmp_path, workers=2, reuse_port=True) as first:
        with Load(first.port, clients=4) as load:
            wait_until(lambda: load.ok() >= 50, 60, 0.05, "requests served")
            second = subprocess.run([CORRAL, "run", "--config", str(first.config_path)], capture_output=True,
                                    text=True, timeout=60)
            served = load.ok()
            wait_until(lambda: load.ok() >= served + 50, 60, 0.05, "more requests served")
        assert second.returncode == 1, second.stderr
        assert "another corral is running with control socket" in second.stderr
        assert "listening on" not in second.stderr  # it never bound the port
        assert load.failed() == 0, load.errors()[:5]
        assert first.status()["pid"] == first.proc.pid
        assert _reload(first.control).returncode == 0


def test_lock_file_is_held_while_running_and_removed_on_exit(tmp_path):
    corral = Corral(tmp_path, workers=1).start()
    lock = corral.control + ".lock"
    try:
        assert _locked(lock)
        assert Path(lock).read_text().strip() == str(corral.proc.pid)
    finally:
        assert corral.stop() == 0
    assert not os.path.exists(lock) and not os.path.exists(corral.control)


def test_a_stale_socket_and_lock_file_left_by_a_killed_corral_do_not_block_a_restart(tmp_path):
    corral = Corral(tmp_path, workers=1).start()
    corral.stop(sig=9)  # SIGKILL: nothing is cleaned up, the kernel drops the lock
    assert os.path.exists(corral.control) and os.path.exists(corral.control + ".lock")
    again = Corral(tmp_path, workers=1)  # the same tmp_path: the same control socket
    assert again.control == corral.control
    with again:
        assert again.status()["pid"] == again.proc.pid


def _upgrade(lib: Path, version: str) -> None:
    init = lib / "corral" / "__init__.py"
    text = init.read_text()
    start = text.index("__version__")
    init.write_text(text[:start] + f'__version__ = "{version}"' + text[text.index("\n", start):])


def test_the_claim_survives_an_in_place_reexec(tmp_path):
    """A reload that finds corral upgraded re-executes the supervisor (same pid): the new image
    must still hold the lock, so a second instance is still refused and the socket survives."""
    lib = tmp_path / "lib"
    shutil.copytree(REPO / "daemon" / "corral", lib / "corral", ignore=shutil.ignore_patterns("__pycache__"))
    env = clean_env(PYTHONPATH=str(lib))
    first = Corral(tmp_path, workers=1, env=env)
    first.write_config()
    # `python -m corral` from the private copy (the Corral helper runs the installed script).
    first._log = open(first.log_path, "wb")
    first.proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "--config", str(first.config_path)],
                                  stdout=first._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    lock = first.control + ".lock"
    try:
        first.wait_ready()
        _upgrade(lib, "9.9.9")
        reload = _reload(first.control, env)
        assert reload.returncode == 0, reload.stderr + first.log()
        data = first.status()
        assert data["pid"] == first.proc.pid
        assert data["supervisor"]["code"]["reexecs"] == 1, first.log()
        assert _locked(lock)
        second = subprocess.run([CORRAL, "run", "--config", str(first.config_path), "-b",
                                 f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
                                env=clean_env())
        assert second.returncode == 1 and "another corral is running" in second.stderr, second.stderr
        assert first.status()["pid"] == first.proc.pid
        assert first.get("/")[0] == 200
    finally:
        code = first.stop()
    assert code == 0, first.log()
    assert not os.path.exists(lock) and not os.path.exists(first.control)
