"""The control socket's directory (issue 13, item 3 and "Empty /run/corral dirs").

A user without XDG_RUNTIME_DIR gets /tmp/corral-<uid>/<name>. /tmp is everyone's: corral
makes that directory itself (mode 0700) and refuses one that another user made, a file or a
symlink in its place, or one that others may write, with a message naming the path and the
fix, as ssh-agent and tmux do. On a clean exit corral removes the directories it made.

The non-root cases run corral as an unnamed numeric uid, unique to the test (the tests run
as root), so /tmp/corral-<uid> belongs to this test alone.
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path
from typing import Iterator

import pytest

from control_util import Instance, corral, probe_args, probe_env, remove, unique
from util import free_port

# Other uids (and /run/corral) need root, as `make test` runs.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NAME = "app"


@pytest.fixture
def uid() -> Iterator[int]:
    """A uid no process and no file on this machine uses; /tmp/corral-<uid> removed afterwards."""
    while True:
        uid = random.randrange(600000, 700000)
        if not os.path.lexists(f"/tmp/corral-{uid}"):
            break
    yield uid
    remove(Path(f"/tmp/corral-{uid}"))


def _run_refused(uid: int) -> str:
    """`corral run` as ``uid`` must fail at start: returns its stderr."""
    out = corral("run", "-b", f"127.0.0.1:{free_port()}", "-w", "1", *probe_args(), env=probe_env(CORRAL_NAME=NAME),
                 cwd="/", uid=uid, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    return out.stderr


def test_a_user_without_runtime_dir_gets_a_private_directory_removed_on_exit(tmp_path, uid):
    base = Path(f"/tmp/corral-{uid}")
    with Instance(probe_args(), tmp_path / "corral.log", env=probe_env(CORRAL_NAME=NAME), cwd="/", uid=uid) as inst:
        data = inst.wait_running()
        assert data["pid"] == inst.proc.pid
        for path in (base, base / NAME):
            st = os.lstat(path)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == uid, path
            assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
        assert stat.S_IMODE(os.lstat(base / NAME / "control.sock").st_mode) == 0o600
        assert inst.stop() == 0
    assert not base.exists(), list(base.rglob("*"))


def test_a_directory_another_user_made_is_refused(uid):
    base = Path(f"/tmp/corral-{uid}")
    base.mkdir(mode=0o777)
    os.chmod(base, 0o777)
    os.chown(base, uid + 1, uid + 1)  # the attacker
    err = _run_refused(uid)
    assert str(base) in err and f"owned by uid {uid + 1}" in err
    assert "remove it" in err and "XDG_RUNTIME_DIR" in err
    assert not (base / NAME).exists()  # nothing of ours went into it


def test_a_file_in_place_of_the_directory_is_refused_clearly(uid):
    base = Path(f"/tmp/corral-{uid}")
    base.touch()
    os.chown(base, uid + 1, uid + 1)
    err = _run_refused(uid)
    assert str(base) in err and "not a directory" in err


def test_a_symlink_in_place_of_the_directory_is_refused(tmp_path, uid):
    target = Path(f"/tmp/corral-{uid}-target")
    target.mkdir(mode=0o700)
    try:
        os.chown(target, uid, uid)  # looks right, but the link is the attacker's to repoint
        Path(f"/tmp/corral-{uid}").symlink_to(target)
        err = _run_refused(uid)
        assert f"/tmp/corral-{uid}" in err and "symlink" in err
        assert not (target / NAME).exists()
    finally:
        remove(target)


def test_our_own_directory_that_others_may_write_is_refused_with_the_chmod_to_run(uid):
    base = Path(f"/tmp/corral-{uid}")
    base.mkdir()
    os.chown(base, uid, uid)
    os.chmod(base, 0o777)
    err = _run_refused(uid)
    assert f"chmod 700 {base}" in err


# --------------------------------------------------------------------------- directories left behind


def test_the_runtime_directory_corral_made_is_removed_on_exit(tmp_path):
    runtime = tmp_path / "run" / "app"
    env = probe_env(RUNTIME_DIRECTORY=str(runtime))
    with Instance(probe_args(), tmp_path / "corral.log", env=env) as inst:
        inst.wait_running()  # `corral status` finds $RUNTIME_DIRECTORY/control.sock
        assert (runtime / "control.sock").exists()
        assert inst.stop() == 0
    assert not (tmp_path / "run").exists()
    assert tmp_path.exists()


def test_a_runtime_directory_corral_did_not_make_is_kept(tmp_path):
    runtime = tmp_path / "systemd-made"
    runtime.mkdir()
    env = probe_env(RUNTIME_DIRECTORY=str(runtime))
    with Instance(probe_args(), tmp_path / "corral.log", env=env) as inst:
        inst.wait_running()
        assert inst.stop() == 0
    assert runtime.is_dir() and list(runtime.iterdir()) == []


def test_run_corral_name_is_removed_on_exit_and_after_a_failed_start(tmp_path):
    name = unique("rundir")
    with Instance(probe_args(name), tmp_path / "corral.log", env=probe_env()) as inst:
        inst.wait_running("-n", name)
        assert os.path.isdir(f"/run/corral/{name}")
        assert inst.stop() == 0
    assert not os.path.exists(f"/run/corral/{name}")
    # A start that fails after the directory was made (the port is taken) removes it too.
    with Instance(probe_args(name), tmp_path / "first.log", env=probe_env()) as inst:
        inst.wait_running("-n", name)
        other = unique("rundir")
        out = corral("run", "-b", f"127.0.0.1:{inst.port}", *probe_args(other), env=probe_env())
        assert out.returncode == 1, out.stderr
        assert not os.path.exists(f"/run/corral/{other}")
        assert os.path.exists(f"/run/corral/{name}/control.sock")


def test_a_directory_holding_other_files_is_kept(tmp_path):
    runtime = tmp_path / "run"
    env = probe_env(RUNTIME_DIRECTORY=str(runtime))
    with Instance(probe_args(), tmp_path / "corral.log", env=env) as inst:
        inst.wait_running()
        (runtime / "app.sock").write_text("someone else's")
        assert inst.stop() == 0
    assert sorted(p.name for p in runtime.iterdir()) == ["app.sock"]


# --------------------------------------------------------------------------- path length


def test_a_control_socket_path_over_the_unix_limit_says_so_and_what_to_do(tmp_path):
    long_name = "x" * 110
    out = corral("run", "-b", f"127.0.0.1:{free_port()}", *probe_args(), env=probe_env(CORRAL_NAME=long_name))
    assert out.returncode != 0
    assert "None" not in out.stderr and "Traceback" not in out.stderr
    assert "too long" in out.stderr and "107" in out.stderr
    assert "name" in out.stderr and "RUNTIME_DIRECTORY" in out.stderr
    assert not os.path.exists(f"/run/corral/{long_name}")

    deep = tmp_path / ("d" * 100) / "control.sock"
    out = corral("run", "-b", f"127.0.0.1:{free_port()}", "probe:app", env=probe_env(CORRAL_CONTROL_SOCKET=str(deep)))
    assert out.returncode != 0 and "too long" in out.stderr and "control_socket" in out.stderr, out.stderr

    out = corral("status", "--control-socket", str(deep))
    assert out.returncode == 1 and "too long" in out.stderr, out.stderr


def test_check_reports_a_control_socket_path_that_is_too_long():
    out = corral("check", *probe_args("y" * 110), env=probe_env())
    assert out.returncode == 2 and "too long" in out.stderr, out.stderr

