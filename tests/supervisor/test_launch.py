"""`corral run` in two images of one process (corral.supervisor.launch): the command line loads the
config and re-executes itself; the supervisor's image gets the config through a memfd and reads it
again for a reload in a child interpreter, so that it never imports PyYAML or argparse.

What the supervisor's image loads is checked on a running one in test_supervisor_run.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from corral import cli
from corral.config import Config, ConfigError, load, load_again
from corral.supervisor import launch, reexec
from util import Corral, free_port, stop_process, wait_until

APP_DIR = Path(__file__).parent / "apps"


def _config_file(tmp_path: Path, **values: object) -> Path:
    path = tmp_path / "corral.yaml"
    path.write_text(yaml.safe_dump({"app": "probe:app", "app_dir": str(APP_DIR), **values}))
    return path


# --------------------------------------------------------------------------- a reload's config


def test_a_reload_reads_the_file_again_keeping_the_command_lines_values(tmp_path):
    path = _config_file(tmp_path, workers=2, max_requests=100)
    config = load(path, {"max_requests": "7"}, environ={})
    path.write_text(path.read_text().replace("workers: 2", "workers: 3"))
    again = asyncio.run(launch.load_again(config.to_json()))
    assert again.workers == 3  # the file as it is now
    assert again.max_requests == 7  # the flag still wins over the file
    assert again == load_again(config.to_json())  # what the in-process loader makes of it


def test_a_config_broken_since_is_a_config_error_with_the_loaders_own_message(tmp_path):
    path = _config_file(tmp_path, workers=2)
    config = load(path, {}, environ={})
    path.write_text(path.read_text() + "max_reqests: 5\n")
    with pytest.raises(ConfigError) as in_process:
        load_again(config.to_json())
    with pytest.raises(ConfigError) as child:
        asyncio.run(launch.load_again(config.to_json()))
    assert str(child.value) == str(in_process.value)
    assert "max_reqests" in str(child.value) and "did you mean 'max_requests'" in str(child.value)


def test_a_loader_that_cannot_run_is_a_config_error(tmp_path, monkeypatch):
    config = load(_config_file(tmp_path), {}, environ={})
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(ConfigError, match="its loader failed"):
        asyncio.run(launch.load_again(config.to_json()))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(ConfigError, match="cannot run"):
        asyncio.run(launch.load_again(config.to_json()))


def test_a_loader_that_hangs_is_stopped(tmp_path, monkeypatch):
    config = load(_config_file(tmp_path), {}, environ={})
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(hang))
    with pytest.raises(ConfigError, match=r"did not answer within 0\.5s"):
        asyncio.run(launch.load_again(config.to_json(), timeout=0.5))


# --------------------------------------------------------------------------- the hand-over


def _hand_over(monkeypatch, data: object, env: str = launch.ENV) -> None:
    """What exec_supervisor leaves for the new image: a memfd holding ``data``, named by ``env``."""
    fd = os.memfd_create("test", 0)
    os.write(fd, json.dumps(data).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    monkeypatch.setenv(env, str(fd))


def test_the_supervisors_image_serves_the_config_the_command_line_loaded(tmp_path, monkeypatch):
    config = load(_config_file(tmp_path, workers=3), {"max_requests": "9"}, environ={})
    _hand_over(monkeypatch, config.to_json())
    assert launch.pending()
    assert launch.handed_config() == config
    assert not launch.pending()  # taken once: the workers never see the variable


def test_a_reexec_whose_config_broke_serves_the_config_it_ran_with(tmp_path, monkeypatch):
    config = load(_config_file(tmp_path, workers=3), {}, environ={})
    monkeypatch.setattr(reexec, "_taken", None)
    _hand_over(monkeypatch, {"version": max(reexec.ADOPTABLE), "config": config.to_json()}, reexec.ENV)
    _hand_over(monkeypatch, None)
    assert launch.handed_config() == config


def test_no_config_and_no_reexec_is_refused(monkeypatch):
    monkeypatch.setattr(reexec, "_taken", None)
    monkeypatch.delenv(reexec.ENV, raising=False)
    _hand_over(monkeypatch, None)
    with pytest.raises(launch.LaunchError, match="no config was handed over"):
        launch.handed_config()


def test_the_command_line_hands_over_what_it_loaded(tmp_path, monkeypatch):
    path = _config_file(tmp_path, workers=3)
    handed: list[tuple[Config | None, object]] = []
    monkeypatch.setattr(launch, "exec_supervisor", lambda config, argv: handed.append((config, argv)))
    for name in [name for name in os.environ if name.startswith("CORRAL_")]:
        monkeypatch.delenv(name)
    assert cli.main(["run", "--config", str(path), "--max-requests", "9"]) == 1  # exec_supervisor returned
    [(config, argv)] = handed
    assert config is not None and config.workers == 3 and config.max_requests == 9
    assert argv == ["run", "--config", str(path), "--max-requests", "9"]


def test_a_broken_config_stops_the_command_line_unless_a_reexec_is_pending(tmp_path, monkeypatch, capsys):
    path = _config_file(tmp_path, workers="many")
    handed: list[object] = []
    monkeypatch.setattr(launch, "exec_supervisor", lambda config, argv: handed.append(config))
    monkeypatch.delenv(reexec.ENV, raising=False)
    assert cli.main(["run", "--config", str(path)]) == cli.EXIT_USAGE
    assert handed == [] and "workers" in capsys.readouterr().err
    monkeypatch.setenv(reexec.ENV, "99")  # not read by the command line's image
    cli.main(["run", "--config", str(path)])
    assert handed == [None]
    assert "keeping the running config" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real process


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except OSError:
        return False


def test_corral_run_from_python_becomes_the_supervisor_in_the_same_process(tmp_path):
    # cli.main handed an argv re-executes `python -P -m corral ARGS`, not the program that called it.
    port = free_port()
    path = _config_file(tmp_path, workers=1, bind=[f"127.0.0.1:{port}"],
                        control_socket=str(tmp_path / "control.sock"))
    code = f"from corral.cli import main; raise SystemExit(main(['run', '--config', {str(path)!r}]))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until(lambda: _answers(port) or proc.poll() is not None, 60, 0.05, "an answer from its worker")
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert cmdline[1:] == [b"-P", b"-m", b"corral", b"run", b"--config", str(path).encode()]
    finally:
        assert stop_process(proc, signal.SIGTERM, 30) == 0


def test_a_command_that_enters_through_the_command_line_still_becomes_the_supervisor(tmp_path):
    # Started as `python -c "...corral.cli.main()"`, `corral run` re-executes that same command:
    # its second run must serve, not parse the command line and re-execute again.
    port = free_port()
    path = _config_file(tmp_path, workers=1, bind=[f"127.0.0.1:{port}"],
                        control_socket=str(tmp_path / "control.sock"))
    code = "import sys; from corral.cli import main; raise SystemExit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "run", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: _answers(port) or proc.poll() is not None, 60, 0.05, "an answer from its worker")
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[1] == b"-c"  # the same command
    finally:
        assert stop_process(proc, signal.SIGTERM, 30) == 0


def test_a_reload_reads_the_changed_file_and_the_supervisor_still_never_loads_pyyaml(tmp_path):
    with Corral(tmp_path, "probe:app", APP_DIR, workers=1) as corral:
        corral.wait_ready(1)
        corral.write_config(workers=2)  # what the reload must pick up
        done = corral.reload()
        assert done.returncode == 0, done.stdout + done.stderr
        corral.wait_ready(2, exact=True)
        status = corral.status()
        assert status["generation"] == 2
        assert not {"yaml", "argparse"} & set(status["supervisor"]["modules"]), status["supervisor"]["modules"]
        corral.write_config(workers="many")  # a broken file: the loader's message, the old config kept
        failed = corral.reload()
        assert failed.returncode != 0
        assert "config error: config key 'workers'" in failed.stdout + failed.stderr, failed.stdout + failed.stderr
        assert corral.status()["generation"] == 2 and len(corral.ready_workers()) == 2
