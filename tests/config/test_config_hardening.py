"""Operator input that used to be accepted or explained badly (issue 13, "Operator input").

NaN and infinite durations, a missing app_dir, an empty bind list, metrics_bind
overlapping bind, and engine settings whose value is wrong: each is refused with
a message that names the key and the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from util import CORRAL, REPO, free_port

from corral.config import ConfigError, load

APPS = REPO / "tests" / "supervisor" / "apps"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    return path


def _corral(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run([CORRAL, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


# --------------------------------------------------------------------------- NaN and infinity


DURATION_KEYS = ["timeout", "boot_timeout", "graceful_timeout", "drain_linger", "reload_timeout",
                 "max_lifetime", "max_lifetime_jitter", "policy_interval"]
ENGINE_FLOAT_KEYS = ["header_timeout", "keepalive_timeout", "body_timeout", "write_timeout", "request_timeout"]


@pytest.mark.parametrize("key", DURATION_KEYS + ENGINE_FLOAT_KEYS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e999"])
def test_nan_and_infinite_durations_are_refused_in_the_file(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"config key '{key}' \(in .*app.yaml\): expected .*finite"):
        load(_write(tmp_path, f"{key}: {value}\n"), environ={})


@pytest.mark.parametrize("key", ["timeout", "policy_interval", "keepalive_timeout", "request_timeout"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "1e999"])
def test_nan_and_infinite_durations_are_refused_from_environment_and_flags(key, value):
    env_name = "CORRAL_" + key.upper()
    with pytest.raises(ConfigError, match=rf"config key '{key}' \(from environment variable {env_name}\)"):
        load(None, environ={env_name: value})
    flag = "--" + key.replace("_", "-")
    with pytest.raises(ConfigError, match=rf"config key '{key}' \(from the command line, {flag}\)"):
        load(None, {key: value}, environ={})
    with pytest.raises(ConfigError, match=rf"config key '{key}' \(from the command line, {flag}\)"):
        load(None, {key: float(value.replace("1e999", "inf"))}, environ={})


def test_the_health_checks_timeout_refuses_nan_too(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'health_check'.*timeout"):
        load(_write(tmp_path, "health_check: {path: /healthz, timeout: .nan}\n"), environ={})


def test_finite_durations_still_load(tmp_path):
    config = load(_write(tmp_path, "timeout: 2.5\npolicy_interval: 500ms\nkeepalive_timeout: 1e3\n"
                                   "request_timeout: 600\n"), environ={})
    assert (config.timeout, config.policy_interval) == (2.5, 0.5)
    assert config.engine == {"keepalive_timeout": 1000.0, "request_timeout": 600.0}


def test_nan_timeout_refused_by_corral_run(tmp_path):
    config = _write(tmp_path, f"app: probe:app\napp_dir: {APPS}\ntimeout: .nan\nbind: ['127.0.0.1:{free_port()}']\n")
    result = _corral("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "config key 'timeout'" in result.stderr and "finite" in result.stderr


# --------------------------------------------------------------------------- app_dir


def test_corral_run_with_a_missing_app_dir_exits_1_at_once(tmp_path):
    missing = tmp_path / "nonexistent"
    config = _write(tmp_path, f"app: probe:app\napp_dir: {missing}\nworkers: 2\n"
                              f"bind: ['127.0.0.1:{free_port()}']\ncontrol_socket: {tmp_path / 'c.sock'}\n")
    result = _corral("run", "--config", str(config), cwd=tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"app_dir {missing} does not exist" in result.stderr, result.stderr
    assert "retrying" not in result.stderr


def test_corral_run_with_an_app_dir_that_is_a_file_exits_1(tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("")
    config = _write(tmp_path, f"app: probe:app\napp_dir: {not_a_dir}\nbind: ['127.0.0.1:{free_port()}']\n"
                              f"control_socket: {tmp_path / 'c.sock'}\n")
    result = _corral("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1 and f"app_dir {not_a_dir} is not a directory" in result.stderr, result.stderr


def test_corral_check_says_the_app_dir_is_missing_not_the_python(tmp_path):
    missing = tmp_path / "nonexistent"
    config = _write(tmp_path, f"app: probe:app\napp_dir: {missing}\n")
    result = _corral("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert f"app_dir {missing} does not exist" in result.stderr, result.stderr
    assert "cannot run" not in result.stderr


# --------------------------------------------------------------------------- bind lists


def test_an_empty_bind_list_says_so(tmp_path):
    config = _write(tmp_path, f"app: probe:app\napp_dir: {APPS}\nbind: []\ncontrol_socket: {tmp_path / 'c.sock'}\n")
    result = _corral("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "bind list is empty" in result.stderr, result.stderr
    assert "systemd" not in result.stderr.split("bind list is empty")[0]
    assert "only other sockets" not in result.stderr


@pytest.mark.parametrize("bind, metrics", [
    ("127.0.0.1:{port}", "127.0.0.1:{port}"),
    ("0.0.0.0:{port}", "127.0.0.1:{port}"),
    ("localhost:{port}", "127.0.0.1:{port}"),
    ("[::]:{port}", "[::1]:{port}"),
    ("unix:/tmp/x.sock", "unix:/tmp/x.sock"),
])
def test_metrics_bind_overlapping_bind_is_a_config_error(tmp_path, bind, metrics):
    port = free_port()
    text = f"bind: ['{bind.format(port=port)}']\nmetrics_bind: ['{metrics.format(port=port)}']\n"
    with pytest.raises(ConfigError, match=r"'metrics_bind'.*overlaps.*'bind'.*same address"):
        load(_write(tmp_path, text), environ={})


def test_metrics_bind_on_the_default_bind_address_is_refused_at_start_without_blaming_a_pid(tmp_path):
    """With bind left at its default (only a fallback for when systemd passes no socket), the
    overlap is caught when corral binds the default address itself."""
    config = _write(tmp_path, f"app: probe:app\napp_dir: {APPS}\nmetrics_bind: ['127.0.0.1:8000']\n"
                              f"control_socket: {tmp_path / 'c.sock'}\n")
    assert load(config, environ={}).metrics_bind  # valid: a socket unit may pass the app's socket
    result = _corral("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "metrics_bind" in result.stderr and "same address" in result.stderr, result.stderr
    assert "in use by pid" not in result.stderr


def test_the_same_address_twice_in_bind_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'bind'.*'127.0.0.1:8001' is listed twice"):
        load(_write(tmp_path, "bind: ['127.0.0.1:8001', '127.0.0.1:8001']\n"), environ={})


def test_addresses_that_do_not_overlap_load(tmp_path):
    config = load(_write(tmp_path, "bind: ['0.0.0.0:8001', '[::]:8001']\nmetrics_bind: ['127.0.0.1:9100']\n"),
                  environ={})
    assert len(config.bind) == 2 and len(config.metrics_bind) == 1


def test_metrics_bind_equal_to_bind_refused_by_corral_run_without_blaming_a_pid(tmp_path):
    port = free_port()
    config = _write(tmp_path, f"app: probe:app\napp_dir: {APPS}\nbind: ['127.0.0.1:{port}']\n"
                              f"metrics_bind: ['127.0.0.1:{port}']\ncontrol_socket: {tmp_path / 'c.sock'}\n")
    result = _corral("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "metrics_bind" in result.stderr and "same address" in result.stderr
    assert "in use by pid" not in result.stderr


# --------------------------------------------------------------------------- engine settings


@pytest.mark.parametrize("text, key", [
    ("max_connections: 0", "max_connections"),
    ("header_timeout: 0", "header_timeout"),
    ("threads: 5000", "threads"),
    ("root_path: api/", "root_path"),
    ("lifespan: maybe", "lifespan"),
    ("forwarded_allow_ips: ['10.0.0.300']", "forwarded_allow_ips"),
    ("server_header: \"a\\r\\nb\"", "server_header"),
])
def test_bad_engine_values_are_config_errors_that_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=rf"config key '{key}' \(in .*app.yaml\)"):
        load(_write(tmp_path, text + "\n"), environ={})


def test_bad_engine_value_refused_by_corral_run_as_a_config_error_not_the_apps_fault(tmp_path):
    config = _write(tmp_path, f"app: probe:app\napp_dir: {APPS}\nmax_connections: 0\n"
                              f"bind: ['127.0.0.1:{free_port()}']\ncontrol_socket: {tmp_path / 'c.sock'}\n")
    result = _corral("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "config key 'max_connections'" in result.stderr
    assert "fix the app" not in result.stderr


def test_engine_validation_keeps_the_supervisor_free_of_the_engine(tmp_path):
    """Validating engine keys must not import the engine's server (uvloop, httptools) into the supervisor:
    config imports corral.engine.settings, and the package imports its server only when asked."""
    code = ("import json, sys; from corral.config import load; "
            f"load({str(_write(tmp_path, 'max_connections: 10' + chr(10) + 'forwarded_allow_ips: [unix]'))!r}, environ={{}}); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('uvloop', 'httptools') or m in ('corral.engine.server', 'corral.engine.protocol'))))")
    out = subprocess.run([str(Path(CORRAL).parent / "python"), "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []
