"""Configuration: YAML < CORRAL_* environment < command line, validation, errors, the documented defaults."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from util import CORRAL, REPO

from corral.config import SUPERVISOR_KEYS, BindSpec, ConfigError, all_keys, default_name, engine_keys, load

CONF = REPO / "conf" / "corral.yaml"
APPS = REPO / "tests" / "supervisor" / "apps"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    return path


def test_defaults():
    config = load(None, environ={})
    assert config.bind == (BindSpec("127.0.0.1:8000"),)
    assert config.workers >= 1 and config.interface == "auto" and config.backlog == 2048
    assert config.graceful_timeout == 30.0 and config.timeout == 30.0
    assert config.engine == {} and config.python == sys.executable
    assert config.name == default_name(None, config.app_dir)  # the app directory's name (no config file)


def test_file_then_environment_then_command_line(tmp_path):
    path = _write(tmp_path, "workers: 3\nbackoff: 1\n".replace("backoff: 1\n", "") +
                  "graceful_timeout: 10m\nmax_memory: 512MiB\nkeepalive_timeout: 5\napp: a:b\n")
    config = load(path, environ={})
    assert (config.workers, config.graceful_timeout, config.max_memory) == (3, 600.0, 512 * 1048576)
    assert config.engine == {"keepalive_timeout": 5.0} and config.app == "a:b" and config.name == "app"
    config = load(path, environ={"CORRAL_WORKERS": "5", "CORRAL_BIND": "127.0.0.1:1, [::1]:2",
                                 "CORRAL_ACCESS_LOG": "yes", "CORRAL_FORWARDED_ALLOW_IPS": "10.0.0.0/8,unix"})
    assert config.workers == 5
    assert config.bind == (BindSpec("127.0.0.1:1"), BindSpec("[::1]:2"))
    assert config.engine["access_log"] is True
    assert config.engine["forwarded_allow_ips"] == ("10.0.0.0/8", "unix")
    config = load(path, {"workers": "2", "bind": ["unix:/run/x.sock"], "app": "c:d()"}, environ={"CORRAL_WORKERS": "5"})
    assert (config.workers, config.bind, config.app) == (2, (BindSpec("unix:/run/x.sock"),), "c:d()")


def test_unknown_key_suggests_the_nearest_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'worker' \(in .*app.yaml\); did you mean 'workers'\?"):
        load(_write(tmp_path, "worker: 2\n"), environ={})
    with pytest.raises(ConfigError, match=r"did you mean 'keepalive_timeout'\?"):
        load(_write(tmp_path, "keep_alive_timeout: 2\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown environment variable CORRAL_WORKRES; did you mean 'CORRAL_WORKERS'"):
        load(None, environ={"CORRAL_WORKRES": "2"})


@pytest.mark.parametrize("text, message", [
    ("workers: four", r"config key 'workers' \(in .*\): expected a number of workers >= 1, or 'auto'.*got 'four'"),
    ("workers: 0", r"'workers'.*>= 1"),
    ("graceful_timeout: soon", r"'graceful_timeout'.*expected a duration in seconds"),
    ("max_memory: lots", r"'max_memory'.*expected a size in bytes"),
    ("bind: 8000", r"'bind'.*expected a list of"),
    ("bind: ['localhost']", r"'bind'.*has no port"),
    ("reuse_port: maybe", r"'reuse_port'.*expected a boolean"),
    ("memory_metric: vms", r"'memory_metric'.*expected one of 'uss', 'pss', 'rss'"),
    # engine keys, typed from EngineSettings' annotations
    ("max_body_size: big", r"'max_body_size'.*expected an integer, or null"),
    ("keepalive_timeout: [1]", r"'keepalive_timeout'.*expected a number"),
    ("forwarded_allow_ips: 7", r"'forwarded_allow_ips'.*expected a list of"),
    ("access_log: 3", r"'access_log'.*expected a boolean"),
])
def test_wrong_type_names_the_key_and_the_expected_type(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load(_write(tmp_path, text + "\n"), environ={})


def test_not_yaml_or_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load(_write(tmp_path, "workers: [\n"), environ={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(_write(tmp_path, "- workers\n"), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.yaml", environ={})


def test_unix_bind_with_mode_and_owner(tmp_path):
    config = load(_write(tmp_path, "bind:\n  - {address: 'unix:/run/app.sock', mode: '0660', group: www-data}\n"
                                    "  - 127.0.0.1:8000\n"), environ={})
    assert config.bind == (BindSpec("unix:/run/app.sock", 0o660, None, "www-data"), BindSpec("127.0.0.1:8000"))
    with pytest.raises(ConfigError, match="mode/owner/group only for unix"):
        load(_write(tmp_path, "bind: [{address: '127.0.0.1:1', mode: 0o600}]\n"), environ={})


def test_interpreter_and_virtualenv(tmp_path):
    with pytest.raises(ConfigError, match="either 'python' or 'virtualenv', not both"):
        load(_write(tmp_path, f"python: {sys.executable}\nvirtualenv: {tmp_path}\n"), environ={})
    with pytest.raises(ConfigError, match=r"bin/python does not exist; point it at a virtualenv"):
        load(_write(tmp_path, f"virtualenv: {tmp_path}\n"), environ={})
    assert load(_write(tmp_path, f"virtualenv: {Path(sys.executable).parent.parent}\n"), environ={}).python \
        == str(Path(sys.executable).parent / "python")


def _documented() -> dict[str, object]:
    documented = {}
    for line in CONF.read_text().splitlines():
        match = re.match(r"^#([a-z_]+): (.*)$", line)
        if match:
            documented[match.group(1)] = yaml.safe_load(match.group(2))
    return documented


def test_conf_documents_every_key_with_its_default():
    documented = _documented()
    keys = all_keys()
    assert set(documented) == set(keys), {"undocumented": set(keys) - set(documented),
                                           "unknown": set(documented) - set(keys)}
    for name, spec in keys.items():
        value = spec.kind.coerce(documented[name]) if documented[name] is not None else None
        assert value == spec.default, f"conf/corral.yaml: {name}: {documented[name]!r} != default {spec.default!r}"


def test_engine_keys_come_from_engine_settings():
    from corral.engine.settings import EngineSettings
    import dataclasses

    assert set(engine_keys()) == {f.name for f in dataclasses.fields(EngineSettings)}
    assert not set(engine_keys()) & set(SUPERVISOR_KEYS)


def test_shipped_conf_is_valid_and_sets_nothing():
    config = load(CONF, environ={})
    assert config.explicit == frozenset()


def _check(*args: str, cwd: Path = APPS) -> subprocess.CompletedProcess:
    return subprocess.run([CORRAL, "check", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_validates_and_imports_the_app():
    out = _check("probe:app")
    assert out.returncode == 0, out.stderr
    assert "app ok: probe:app (asgi)" in out.stdout


def test_check_fails_with_the_apps_own_error():
    out = _check("broken:app")
    assert out.returncode == 1
    assert "DATABASE_URL is not set" in out.stderr and "cannot load the app 'broken:app'" in out.stderr
    out = _check("probe:nothing")
    assert out.returncode == 1 and "has no attribute 'nothing'" in out.stderr
    out = _check("not_a_module_at_all:app")
    assert out.returncode == 1 and "no module named 'not_a_module_at_all'" in out.stderr


def test_check_fails_on_config_errors(tmp_path):
    out = _check("--config", str(_write(tmp_path, "workerz: 2\n")), "probe:app")
    assert out.returncode == 2 and "did you mean 'workers'" in out.stderr
    out = _check("--config", str(_write(tmp_path, "max_connections: 0\n")), "probe:app")
    assert out.returncode == 2 and "max_connections must be a positive integer" in out.stderr


def test_check_with_the_apps_own_virtualenv(tmp_path):
    """The app's virtualenv has a package corral's lacks; corral's worker deps come from corral's env."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "only_in_app_venv.py").write_text("async def app(scope, receive, send):\n    pass\n")
    out = _check("--config", str(_write(tmp_path, f"virtualenv: {venv}\n")), "only_in_app_venv:app", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"with {venv}/bin/python" in out.stdout
    # Without the virtualenv the module is not found: the check really used the app's interpreter.
    assert _check("only_in_app_venv:app", cwd=tmp_path).returncode == 1
