"""One source per config key (issue 14): the key table in corral.config gives the Config
fields, the CLI flags, the JSON the workers get back as a typed Config, and what a re-exec
loads again. Each test is parametrised over the table, so a new key that misses a piece fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.cli import build_parser, config_keys, key_values
from corral.config import (
    SUPERVISOR_KEYS,
    BindSpec,
    BoolKind,
    ChoiceKind,
    Config,
    ConfigError,
    DurationKind,
    FloatKind,
    Group,
    IntKind,
    KeySpec,
    OptionalKind,
    SizeKind,
    all_keys,
    load,
    load_again,
)
from util import CORRAL, REPO

APPS = REPO / "tests" / "supervisor" / "apps"
PYTHON = str(Path(CORRAL).parent / "python")

# Keys whose flag value cannot be made up from the kind alone: the command line after the
# flag, and the value the Config must then hold (None: the value the key's kind makes of it).
EXPLICIT: dict[str, tuple[list[str], Any]] = {
    "app": (["probe:app"], "probe:app"),
    "app_dir": (["--app-dir", str(APPS)], str(APPS)),
    "name": (["-n", "sample"], "sample"),
    "bind": (["-b", "127.0.0.1:9001", "-b", "unix:/run/sample.sock"],
             (BindSpec("127.0.0.1:9001"), BindSpec("unix:/run/sample.sock"))),
    "metrics_bind": (["--metrics-bind", "127.0.0.1:9102"], (BindSpec("127.0.0.1:9102"),)),
    "health_bind": (["--health-bind", "127.0.0.1:9103"], (BindSpec("127.0.0.1:9103"),)),
    "agent_bind": (["--agent-bind", "127.0.0.1:9104"], (BindSpec("127.0.0.1:9104"),)),
    "workers": (["-w", "3"], 3),
    "python": (["--python", sys.executable], sys.executable),
    "virtualenv": (["--virtualenv", str(Path(sys.executable).parent.parent)], str(Path(sys.executable).parent.parent)),
    "environment": (["--environment", "{SAMPLE: one, LEVEL: 2}"], {"SAMPLE": "one", "LEVEL": "2"}),
    "health_check": (["--health-check", "{path: /healthz}"],
                     {"path": "/healthz", "expect_status": 200, "timeout": 10.0, "host": "localhost"}),
    "warmup": (["--warmup", "false"], None),
    "control_socket": (["--control-socket", "/tmp/sample-control.sock"], "/tmp/sample-control.sock"),
    "lifespan": (["--lifespan", "on"], "on"),
    "root_path": (["--root-path", "/api"], "/api"),
    "server_header": (["--server-header", "sample"], "sample"),
    "access_log_format": (["--access-log-format", "json"], "json"),
    "forwarded_allow_ips": (["--forwarded-allow-ips", "10.0.0.0/8", "--forwarded-allow-ips", "unix"],
                            ("10.0.0.0/8", "unix")),
    "forwarded_headers": (["--forwarded-headers", "forwarded"], ("forwarded",)),
    "ssl_minimum_version": (["--ssl-minimum-version", "TLSv1.3"], "TLSv1.3"),
    "ssl_ciphers": (["--ssl-ciphers", "ECDHE+AESGCM"], "ECDHE+AESGCM"),
    # `corral run --reload` (corral.supervisor.devreload): uvicorn's spellings, repeated.
    "reload_dirs": (["--reload-dir", "src", "--reload-dir", "lib"], ["src", "lib"]),
    "reload_includes": (["--reload-include", "*.html"], ["*.html"]),
    "reload_excludes": (["--reload-exclude", "tests", "--reload-excludes", "*.tmp"], ["tests", "*.tmp"]),
}


def _tls(certs: Any) -> dict[str, tuple[list[str], Any]]:
    """The TLS keys that need real files: each with the certificate that switches TLS on."""
    on = ["--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key)]
    return {
        "ssl_certfile": (on, str(certs.server_cert)),
        "ssl_keyfile": (on, str(certs.server_key)),
        "ssl_keyfile_password_file": (["--ssl-certfile", str(certs.server_cert), "--ssl-keyfile",
                                       str(certs.encrypted_key), "--ssl-keyfile-password-file",
                                       str(certs.password_file)], str(certs.password_file)),
        "ssl_ca_certs": ([*on, "--ssl-ca-certs", str(certs.ca)], str(certs.ca)),
        "ssl_cert_reqs": ([*on, "--ssl-ca-certs", str(certs.ca), "--ssl-cert-reqs", "required"], "required"),
        "ssl_listeners": ([*on, "--ssl-listeners", ":8443"], (":8443",)),
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from engine.certs import make_certs  # tests/engine/certs.py: a CA, server and client certificates

    return make_certs(tmp_path_factory.mktemp("certs"))


def _sample(spec: KeySpec, request: pytest.FixtureRequest) -> tuple[list[str], Any]:
    """A command line that sets ``spec``'s key to a value other than its default, and that value."""
    if spec.name in EXPLICIT:
        return EXPLICIT[spec.name]
    if spec.name == "log_config":  # the file must exist and hold a dictConfig mapping
        path = request.getfixturevalue("tmp_path") / "logging.json"
        path.write_text('{"version": 1}')
        return (["--log-config", str(path)], str(path))
    if spec.name.startswith("ssl_"):
        tls = _tls(request.getfixturevalue("certs"))
        if spec.name in tls:
            return tls[spec.name]
    kind = spec.kind.inner if isinstance(spec.kind, OptionalKind) else spec.kind
    if isinstance(kind, BoolKind):
        return ([("--no-" if spec.default else "--") + spec.name.replace("_", "-")], not spec.default)
    if isinstance(kind, IntKind):
        value = max(spec.default or 0, kind.minimum or 0) + 3
        return ([spec.flag, str(value)], value)
    if isinstance(kind, (DurationKind, FloatKind)):
        number = (spec.default or 0.0) + 7.5
        return ([spec.flag, str(number)], number)
    if isinstance(kind, SizeKind):
        return ([spec.flag, "3MiB"], 3 * 1024 * 1024)
    if isinstance(kind, ChoiceKind):
        choice = next(c for c in kind.choices if c != spec.default)
        return ([spec.flag, str(choice)], choice)
    raise AssertionError(f"config key {spec.name!r}: add a sample command line for it to EXPLICIT in {__file__}")


def _value(config: Config, name: str) -> Any:
    return getattr(config, name) if name in SUPERVISOR_KEYS else config.engine[name]


def _from_flags(*argv: str, config_file: Path | None = None) -> Config:
    args = build_parser().parse_args(["run", *argv])
    return load(config_file, key_values(args), environ={})


KEYS = sorted(all_keys())


def test_the_table_is_the_config_fields_and_the_engine_settings():
    from dataclasses import fields

    from corral.engine.settings import EngineSettings

    keyed = {f.name for f in fields(Config)} - {"engine", "source", "explicit", "overrides"}
    assert set(SUPERVISOR_KEYS) == keyed
    assert set(all_keys()) == keyed | {f.name for f in fields(EngineSettings)}
    assert {spec.name for spec in config_keys()} == set(all_keys())


@pytest.mark.parametrize("name", KEYS)
def test_every_key_is_a_flag_whose_value_reaches_config(name, request):
    spec = all_keys()[name]
    argv, expected = _sample(spec, request)
    config = _from_flags(*argv)
    assert _value(config, name) == expected
    assert expected != spec.default, "the sample must change the key, or the test proves nothing"
    assert name in config.explicit


@pytest.mark.parametrize("name", KEYS)
def test_from_json_round_trips_every_key(name, request):
    argv, _ = _sample(all_keys()[name], request)
    config = _from_flags(*argv)
    again = Config.from_json(json.loads(json.dumps(config.to_json())))
    assert again == config
    assert type(_value(again, name)) is type(_value(config, name))  # tuple stays tuple, BindSpec stays BindSpec


def test_from_json_gives_defaults_for_keys_the_sender_did_not_know():
    data = load(None, environ={}).to_json()
    del data["drain_linger"], data["virtualenv"]
    config = Config.from_json(data)
    assert (config.drain_linger, config.virtualenv) == (1.0, None)


def test_from_json_refuses_a_value_its_key_refuses():
    data = load(None, environ={}).to_json()
    data["graceful_timeout"] = "soon"
    with pytest.raises(ConfigError, match=r"config key 'graceful_timeout'.*expected a duration"):
        Config.from_json(data)


def test_an_absent_flag_leaves_the_file_and_environment_alone(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("access_log: true\nworkers: 4\nreuse_port: true\n")
    config = _from_flags(config_file=path)
    assert (config.engine["access_log"], config.workers, config.reuse_port) == (True, 4, True)
    config = _from_flags("--no-access-log", "--no-reuse-port", "-w", "2", config_file=path)
    assert (config.engine["access_log"], config.workers, config.reuse_port) == (False, 2, False)
    assert key_values(build_parser().parse_args(["run"])) == {}


def test_the_older_spellings_still_work():
    config = _from_flags("-b", "127.0.0.1:9003", "--bind", "127.0.0.1:9004", "-w", "2", "-n", "old",
                         "--interface", "wsgi", "--log-level", "debug", "probe:app")
    assert config.bind == (BindSpec("127.0.0.1:9003"), BindSpec("127.0.0.1:9004"))
    assert (config.workers, config.name, config.interface, config.log_level, config.app) == \
        (2, "old", "wsgi", "debug", "probe:app")
    args = build_parser().parse_args(["check", "-c", "x.yaml", "probe:app"])
    assert args.config == "x.yaml" and args.app == "probe:app"


def test_help_groups_the_flags_as_the_config_file_groups_the_keys(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    titles = [f"{group.value} (config keys):" for group in Group]
    starts = [text.index(title) for title in titles]
    assert starts == sorted(starts), "the sections follow conf/corral.yaml"
    ends = [*starts[1:], len(text)]
    for spec in all_keys().values():
        i = list(Group).index(spec.group)
        shown = spec.value_name if spec.positional else spec.flag
        assert shown in text[starts[i]:ends[i]], f"{spec.flag} is not under {spec.group.value!r}"


def _corral(*args: str, cwd: Path = APPS) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run([CORRAL, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_a_bad_flag_value_gets_the_message_a_bad_yaml_value_gets(tmp_path):
    flag = _corral("check", "--max-requests", "lots", "probe:app")
    path = tmp_path / "app.yaml"
    path.write_text("max_requests: lots\n")
    yaml = _corral("check", "--config", str(path), "probe:app")
    assert flag.returncode == yaml.returncode == 2
    assert "config key 'max_requests' (from the command line, --max-requests): expected an integer >= 0, " \
           "got 'lots'" in flag.stderr
    assert flag.stderr.split("): ", 1)[1] == yaml.stderr.split("): ", 1)[1]
    engine = _corral("check", "--keepalive-timeout", "nan", "probe:app")
    assert engine.returncode == 2
    assert "config key 'keepalive_timeout' (from the command line, --keepalive-timeout): expected" in engine.stderr


@pytest.mark.parametrize("text, key, fix", [
    ("max_request_line: 0", "max_request_line", "must be a positive integer"),
    ("ws_max_queue: 0", "ws_max_queue", "must be a positive integer"),
    ("root_path: api/", "root_path", "must start with '/'"),
])
def test_check_refuses_bad_engine_values_before_any_worker_starts(tmp_path, text, key, fix):
    path = tmp_path / "app.yaml"
    path.write_text(f"app: probe:app\n{text}\n")
    out = _corral("check", "--config", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"config key '{key}' (in {path})" in out.stderr and fix in out.stderr
    # Refused by the config, before the worker half of the check (`app ok`) or anything else ran.
    assert "config ok" not in out.stdout and "app ok" not in out.stdout
    flag = _corral("check", "--" + key.replace("_", "-"), text.split(": ")[1], "probe:app")
    assert flag.returncode == 2 and f"config key '{key}' (from the command line" in flag.stderr


def test_a_worker_reads_its_config_without_pyyaml(tmp_path):
    """The worker runs under the app's interpreter, which may lack PyYAML: corral.config must
    import, and Config.from_json work, without it."""
    config = _from_flags("-w", "2", "--health-check", "{path: /healthz}", "--forwarded-allow-ips", "unix")
    code = ("import json, sys; sys.modules['yaml'] = None; from corral.config import Config; "
            "print(json.dumps(Config.from_json(json.load(sys.stdin)).to_json()))")
    out = subprocess.run([PYTHON, "-c", code], input=json.dumps(config.to_json()), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Config.from_json(json.loads(out.stdout)) == config


def test_load_again_loads_the_same_file_and_flags(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("max_requests: 100\nkeepalive_timeout: 5\n")
    config = _from_flags("-w", "3", "-b", "127.0.0.1:9005", "--no-access-log", "probe:app", config_file=path)
    again = load_again(json.loads(json.dumps(config.to_json())))
    assert again == config
    assert again.overrides == {"workers": "3", "bind": ["127.0.0.1:9005"], "access_log": False, "app": "probe:app"}


def _preflight(tmp_path: Path, config: Config) -> subprocess.CompletedProcess[str]:
    """The re-exec preflight child, as the running supervisor starts it (corral.supervisor.reexec)."""
    from corral.supervisor.reexec import STATE_VERSION

    payload = {"argv": ["run"], "state": {"version": STATE_VERSION, "config": config.to_json()}}
    code = "from corral.supervisor.reexec import _preflight_main; raise SystemExit(_preflight_main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run([PYTHON, "-P", "-c", code], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)


def test_the_reexec_preflight_loads_the_running_config_with_the_new_code(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("max_requests: 100\n")
    config = _from_flags("-w", "2", "probe:app", config_file=path)
    ok = _preflight(tmp_path, config)
    assert ok.returncode == 0, ok.stderr
    path.write_text("max_requests: many\n")  # the file broke since the service started
    broken = _preflight(tmp_path, config)
    assert broken.returncode == 1
    assert "config key 'max_requests'" in broken.stderr
