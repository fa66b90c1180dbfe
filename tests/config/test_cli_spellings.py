"""The spellings gunicorn and uvicorn users type (issue 17, "Command line"), each tested.

Where the flag's effect can only be seen by serving (a port bound, root_path in the scope, an
env file's variable in the app, a factory called, a unix socket or an inherited fd served),
a real `corral run` serves a request through it; the rest is checked where the command line
becomes the config (parse_command_line + key_values + config.load), as test_key_table does.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
from pathlib import Path

import pytest

from corral.cli import (
    COMPAT_FLAGS,
    NOT_IN_CORRAL,
    build_parser,
    key_values,
    load_env_file,
    parse_command_line,
    serving_flags,
)
from corral.config import SUPERVISOR_KEYS, BindSpec, Config, ConfigError, all_keys, load
from util import CORRAL, Corral, free_port, wait_until

# An ASGI app that shows what reached it: its root_path, an environment variable, how it was made.
APP = '''
import logging, os

MADE_BY = "module"
log = logging.getLogger("spellings.app")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    log.warning("spellings app served %s", scope["path"])
    body = "|".join([MADE_BY, scope.get("root_path", ""), os.environ.get("SPELLINGS_VAR", "-"),
                     os.environ.get("SPELLINGS_QUOTED", "-")]).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def make():
    global MADE_BY
    MADE_BY = "factory"
    return app
'''


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "site"
    directory.mkdir()
    (directory / "spellings.py").write_text(APP)
    return directory


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "SPELLINGS_"))}


def _config(*argv: str) -> Config:
    """What `corral run ARGV` would run with (as cmd_run loads it, with an empty environment)."""
    args = parse_command_line(["run", *argv])
    return load(args.config, key_values(args), environ={})


def _run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=_clean_env())


class FlagCorral(Corral):
    """`corral run` whose listeners come from the flags under test: its config file has no
    bind (it names the control socket the harness polls); ``pass_fds`` are inherited."""

    def __init__(self, tmp_path: Path, app_dir: Path, args: list[str], port: int,
                 pass_fds: tuple[int, ...] = ()) -> None:
        super().__init__(tmp_path, "spellings:app", app_dir, workers=1, args=args)
        del self.config["bind"]
        self.env = _clean_env()
        self.port = port  # where get() asks
        self.pass_fds = pass_fds

    def start(self, wait: bool = True) -> Corral:
        self.write_config()
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen([CORRAL, "run", "--config", str(self.config_path), *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, pass_fds=self.pass_fds)
        if wait:
            self.wait_ready()
        return self


def _get_unix(path: str, target: str = "/") -> tuple[int, bytes]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    conn = http.client.HTTPConnection("localhost")
    conn.sock = sock
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- served through the flag


def test_uvicorns_first_command_serves_host_port_root_path_and_env_file(tmp_path, app_dir):
    """`corral run --host 127.0.0.1 --port P APP` (the command that used to fail), with
    --root-path and --env-file: the port is bound, the prefix is in the scope, the variables
    of the .env file (python-dotenv: quotes, export) reach the app in its worker."""
    port = free_port()
    env_file = tmp_path / "app.env"
    env_file.write_text('# a comment\nexport SPELLINGS_VAR=from-env-file\nSPELLINGS_QUOTED="two words"\n')
    args = ["--host", "127.0.0.1", "--port", str(port), "--root-path", "/api", "--env-file", str(env_file),
            "spellings:app"]
    with FlagCorral(tmp_path, app_dir, args, port=port) as corral:
        status, body, _ = corral.get("/api/items")
        assert (status, body) == (200, b"module|/api|from-env-file|two words")


def test_env_file_does_not_override_a_variable_already_set(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SPELLINGS_VAR=file\nSPELLINGS_NEW=new\nBARE_NAME\n")
    environ = {"SPELLINGS_VAR": "set"}
    added = load_env_file(str(env_file), environ)
    assert added == {"SPELLINGS_NEW": "new"}
    assert environ == {"SPELLINGS_VAR": "set", "SPELLINGS_NEW": "new"}


def test_env_file_missing_is_a_clear_error(tmp_path, app_dir):
    out = _run("check", "--env-file", str(tmp_path / "nope.env"), "spellings:app", cwd=app_dir)
    assert out.returncode == 2, out.stderr
    assert f"--env-file '{tmp_path / 'nope.env'}' does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_env_file_can_set_config_keys(tmp_path, app_dir):
    """Read before the config: a CORRAL_* variable in it is a config key, as in the environment."""
    env_file = tmp_path / "app.env"
    env_file.write_text("CORRAL_MAX_REQUESTS=lots\n")
    out = _run("check", "--env-file", str(env_file), "spellings:app", cwd=app_dir)
    assert out.returncode == 2
    assert "config key 'max_requests' (from environment variable CORRAL_MAX_REQUESTS)" in out.stderr


def test_uds_fd_and_factory_serve(tmp_path, app_dir):
    """--uds PATH and --fd N (a listening socket this test made and passed down) both serve,
    and --factory calls MODULE:FUNC to get the app."""
    uds = str(tmp_path / "app.sock")
    inherited = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inherited.bind(("127.0.0.1", 0))
    inherited.listen(16)
    fd_port = inherited.getsockname()[1]
    args = ["--uds", uds, "--fd", str(inherited.fileno()), "--factory", "spellings:make"]
    corral = FlagCorral(tmp_path, app_dir, args, port=fd_port, pass_fds=(inherited.fileno(),))
    try:
        corral.start(wait=False)
    finally:
        inherited.close()  # corral holds its copy now
    with corral:
        corral.wait_ready()
        assert _get_unix(uds, "/x") == (200, b"factory||-|-")
        status, body, _ = corral.get("/y")
        assert (status, body) == (200, b"factory||-|-")


WSGI_APP = '''
import threading


def app(environ, start_response):
    body = threading.current_thread().name.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def test_gunicorns_command_serves_a_wsgi_app_on_threads(tmp_path, app_dir):
    """gunicorn's usual command line, unchanged: -b, -w, --threads (the WSGI app runs on a pool
    thread, not on the event loop's), -t, --graceful-timeout, --max-requests[-jitter], -n."""
    (app_dir / "wsgiapp.py").write_text(WSGI_APP)
    port = free_port()
    args = ["-b", f"127.0.0.1:{port}", "-w", "2", "--threads", "4", "-t", "60", "--graceful-timeout", "5",
            "--max-requests", "1000", "--max-requests-jitter", "50", "-n", "gunicorn-style", "wsgiapp:app"]
    with FlagCorral(tmp_path, app_dir, args, port=port) as corral:  # its file says workers: 1
        corral.wait_ready(2, exact=True)
        status, body, _ = corral.get("/")
        assert status == 200 and body.startswith(b"corral-wsgi-"), body  # a pool thread


def test_log_config_formats_the_apps_log_lines(tmp_path, app_dir):
    log_config = tmp_path / "logging.yaml"
    log_config.write_text(
        "version: 1\n"
        "formatters:\n  marked: {format: 'LOGCONFIG-MARK %(name)s %(message)s'}\n"
        "handlers:\n  out: {class: logging.StreamHandler, formatter: marked, stream: ext://sys.stderr}\n"
        "loggers:\n  spellings: {handlers: [out], level: INFO, propagate: false}\n")
    port = free_port()
    args = ["--port", str(port), "--log-config", str(log_config), "spellings:app"]
    with FlagCorral(tmp_path, app_dir, args, port=port) as corral:
        assert corral.get("/logged")[0] == 200
        wait_until(lambda: "LOGCONFIG-MARK spellings.app spellings app served /logged" in corral.log(), 30,
                   what="the log-config formatter's line")


# --------------------------------------------------------------------------- refused once, clearly


def test_an_app_without_a_colon_is_refused_once_before_any_worker(tmp_path, app_dir):
    (app_dir / "envapp.py").write_text("app = None\n")
    for command in ("run", "check"):
        out = _run(command, "--port", str(free_port()), "envapp", cwd=app_dir, timeout=60)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        message = "'envapp' names a module but not the app in it; write e.g. 'envapp:app'"
        assert out.stderr.count(message) == 1, out.stderr
        assert "Traceback" not in out.stderr and "worker" not in out.stderr.lower()
    path = tmp_path / "app.yaml"
    path.write_text("app: envapp\n")
    with pytest.raises(ConfigError, match=r"config key 'app' \(in .*app.yaml\).*write e.g. 'envapp:app'"):
        load(path, environ={})


def test_a_gunicorn_python_config_gets_told_what_to_do(tmp_path, app_dir):
    """Told so, with the file's plain settings already written as corral's YAML."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text('import multiprocessing\nbind = "0.0.0.0:8000"\nworkers = multiprocessing.cpu_count() * 2\n'
                    'threads = 4\ntimeout = 60\nkeepalive = 5\nraw_env = ["A=1"]\nspew = False\n')
    for flag in ("-c", "--config"):
        out = _run("run", flag, str(conf), "spellings:app", cwd=app_dir, timeout=60)
        assert out.returncode == 2
        assert f"config file '{conf}' is a gunicorn config file (Python); corral reads YAML" in out.stderr
        assert "docs/coming-from.md" in out.stderr
        assert ("the same settings as corral's YAML:\n\nbind:\n- 0.0.0.0:8000\nthreads: 4\ntimeout: 60\n"
                "keepalive_timeout: 5\nenvironment:\n  A: '1'\n") in out.stderr
        assert "not carried over (see docs/coming-from.md): workers, spew" in out.stderr
        assert "Traceback" not in out.stderr
    env = {**_clean_env(), "CORRAL_CONFIG": str(conf)}  # the file named by the environment: the same answer
    out = subprocess.run([CORRAL, "check", "spellings:app"], capture_output=True, text=True, timeout=60,
                         cwd=app_dir, env=env)
    assert out.returncode == 2 and "is a gunicorn config file (Python)" in out.stderr


def test_a_bad_log_config_is_an_error_naming_the_file(tmp_path, app_dir):
    cases = {
        "missing.yaml": (None, "does not exist"),
        "broken.json": ("{not json", "is not valid JSON"),
        "noversion.yaml": ("handlers: {}\n", "is not a logging.dictConfig mapping: it needs 'version: 1'"),
        "broken.yaml": ("version: 1\nhandlers: [\n", "is neither YAML nor JSON"),
    }
    for name, (text, problem) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        out = _run("check", "--log-config", str(path), "spellings:app", cwd=app_dir, timeout=60)
        assert out.returncode == 2, (name, out.stderr)
        assert f"log_config file '{path}' {problem}" in out.stderr, out.stderr


def test_log_config_reads_yaml_and_json(tmp_path):
    from corral.config import read_log_config

    (tmp_path / "a.json").write_text('{"version": 1, "root": {"level": "INFO"}}')
    (tmp_path / "a.yaml").write_text("version: 1\nroot: {level: INFO}\ndisable_existing_loggers: true\n")
    assert read_log_config(str(tmp_path / "a.json")) == {"version": 1, "root": {"level": "INFO"},
                                                        "disable_existing_loggers": False}
    assert read_log_config(str(tmp_path / "a.yaml"))["disable_existing_loggers"] is True
    config = _config("--log-config", str(tmp_path / "a.json"))
    assert config.log_config == str(tmp_path / "a.json") and "log_config" in config.explicit


# --------------------------------------------------------------------------- did you mean


@pytest.mark.parametrize("flag, answer", [
    ("-k", "there are no worker classes: corral tells ASGI from WSGI itself (the interface key"),
    ("--worker-class", "there are no worker classes"),
    ("--workers-class", "there are no worker classes"),
    ("--daemon", "systemd runs it in the background"),
    ("--pid", "systemctl show -p MainPID"),
    ("--access-logfile", "--access-log writes the access log to stderr"),
    ("--limit-concurrency", "--max-connections N"),
])
def test_a_flag_corral_does_not_have_names_corrals_way(flag, answer, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_command_line(["run", flag, "uvicorn.workers.UvicornWorker", "spellings:app"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"corral run: error: corral has no {flag}: ") and answer in err
    assert "docs/coming-from.md" in err


def test_preload_is_gunicorns_with_a_zygote():
    if "preload" not in all_keys():
        pytest.skip("no preload key in this tree (helper E's)")
    config = _config("--preload", "--worker-start", "zygote", "spellings:app")
    assert (config.preload, config.worker_start) == (True, "zygote")


@pytest.mark.parametrize("typed, suggested", [
    ("--max-request", "--max-requests"),
    ("--wokers", "--workers"),
    ("--graceful-timout", "--graceful-timeout"),
    ("--hots", "--host"),
])
def test_an_unknown_flag_gets_the_nearest_one(typed, suggested, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_command_line(["run", typed, "3", "spellings:app"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown flag {typed}: did you mean " in err and suggested in err.split("did you mean")[1]


def test_no_abbreviations_so_a_foreign_flag_is_never_taken_for_a_near_one(capsys):
    """gunicorn's --header must not become --header-timeout, nor --env --environment."""
    for flag in ("--header", "--env"):
        with pytest.raises(SystemExit):
            parse_command_line(["run", flag, "x", "spellings:app"])
        assert f"corral has no {flag}" in capsys.readouterr().err


def test_the_real_command_exits_2_with_the_answer(app_dir):
    out = _run("run", "-k", "uvicorn.workers.UvicornWorker", "spellings:app", cwd=app_dir, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("corral run: error: corral has no -k: there are no worker classes")
    assert "Traceback" not in out.stderr


def test_every_answer_is_for_a_flag_corral_lacks_and_names_a_way():
    known = set(serving_flags())
    for flag, answer in NOT_IN_CORRAL.items():
        if flag in known:  # corral has it now (a key added since): argparse takes it first
            continue
        assert answer and not answer.startswith("corral has no"), flag


# --------------------------------------------------------------------------- where the flag lands


@pytest.mark.parametrize("argv, bind", [
    (["--host", "127.0.0.1", "--port", "8123"], ["127.0.0.1:8123"]),
    (["--host", "0.0.0.0"], ["0.0.0.0:8000"]),
    (["--port", "8124"], ["127.0.0.1:8124"]),
    (["--host", "::1", "--port", "8125"], ["[::1]:8125"]),
    (["--host", "[::]", "--port", "8126"], ["[::]:8126"]),
    (["--uds", "/run/app.sock"], ["unix:/run/app.sock"]),
    (["--fd", "3"], ["fd:3"]),
    (["-b", "127.0.0.1:8127", "--port", "8128"], ["127.0.0.1:8127", "127.0.0.1:8128"]),
    (["--bind", "unix:/run/a.sock", "-b", "127.0.0.1:8129"], ["unix:/run/a.sock", "127.0.0.1:8129"]),
])
def test_host_port_uds_fd_and_b_make_the_bind_list(argv, bind):
    assert _config(*argv, "spellings:app").bind == tuple(BindSpec(a) for a in bind)


@pytest.mark.parametrize("port", ["http", "-1", "70000"])
def test_a_bad_port_is_refused_by_the_parser(port, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_command_line(["run", "--port", port, "spellings:app"])
    assert exit_.value.code == 2
    assert f"argument --port: {port!r} is not a TCP port (0 to 65535)" in capsys.readouterr().err


def test_factory_marks_the_command_lines_app_as_a_factory():
    assert _config("--factory", "spellings:make").app == "spellings:make()"
    assert _config("--factory", "spellings:make()").app == "spellings:make()"
    assert _config("spellings:make").app == "spellings:make"
    with pytest.raises(ConfigError, match=r"--factory calls the APP given on the command line"):
        _config("--factory")


# gunicorn's spellings: (command line, key, value the Config holds).
GUNICORN = [
    (["-w", "3"], "workers", 3),
    (["--workers", "5"], "workers", 5),
    (["--threads", "8"], "threads", 8),
    (["-t", "45"], "timeout", 45.0),
    (["--timeout", "50"], "timeout", 50.0),
    (["--graceful-timeout", "12"], "graceful_timeout", 12.0),
    (["--max-requests", "1000"], "max_requests", 1000),
    (["--max-requests-jitter", "50"], "max_requests_jitter", 50),
    (["-n", "shop"], "name", "shop"),
    (["--name", "shop2"], "name", "shop2"),
    (["--proc-name", "shop3"], "name", "shop3"),
    (["--keep-alive", "5"], "keepalive_timeout", 5.0),
    (["--worker-connections", "200"], "max_connections", 200),
    (["--limit-request-line", "4096"], "max_request_line", 4096),
    (["--limit-request-fields", "50"], "max_header_count", 50),
    (["--forwarded-allow-ips", "10.0.0.0/8"], "forwarded_allow_ips", ("10.0.0.0/8",)),
    (["--backlog", "64"], "backlog", 64),
    (["--reuse-port"], "reuse_port", True),
    (["--log-level", "debug"], "log_level", "debug"),
]
# uvicorn's spellings.
UVICORN = [
    (["--workers", "2"], "workers", 2),
    (["--root-path", "/api"], "root_path", "/api"),
    (["--timeout-keep-alive", "7"], "keepalive_timeout", 7.0),
    (["--timeout-graceful-shutdown", "9"], "graceful_timeout", 9.0),
    (["--limit-max-requests", "500"], "max_requests", 500),
    (["--ws-max-size", "1048576"], "ws_max_message_size", 1048576),
    (["--ws-ping-interval", "5"], "ws_ping_interval", 5.0),
    (["--ws-ping-timeout", "6"], "ws_ping_timeout", 6.0),
    (["--no-access-log"], "access_log", False),
    (["--access-log"], "access_log", True),
    (["--no-date-header"], "date_header", False),
    (["--lifespan", "off"], "lifespan", "off"),
    (["--interface", "wsgi"], "interface", "wsgi"),
    (["--app-dir", "/srv/app"], "app_dir", "/srv/app"),
    (["--chdir", "/srv/app2"], "app_dir", "/srv/app2"),
    (["--forwarded-allow-ips", "*"], "forwarded_allow_ips", ("*",)),
]


@pytest.mark.parametrize("argv, key, value", GUNICORN + UVICORN,
                         ids=[" ".join(argv) for argv, _, _ in GUNICORN + UVICORN])
def test_the_spellings_people_know_set_corrals_key(argv, key, value):
    config = _config(*argv, "spellings:app")
    got = getattr(config, key) if key in SUPERVISOR_KEYS else config.engine[key]
    assert got == value
    assert key in config.explicit


def test_tls_spellings_of_gunicorn_are_the_ssl_keys():
    args = build_parser().parse_args(["run", "--certfile", "c.pem", "--keyfile", "k.pem", "--ca-certs", "ca.pem",
                                      "--ciphers", "ECDHE+AESGCM", "spellings:app"])
    assert key_values(args) == {"ssl_certfile": "c.pem", "ssl_keyfile": "k.pem", "ssl_ca_certs": "ca.pem",
                                "ssl_ciphers": "ECDHE+AESGCM", "app": "spellings:app"}


def test_c_reads_a_corral_yaml_and_flags_win(tmp_path):
    path = tmp_path / "corral.yaml"
    path.write_text("workers: 4\nmax_requests: 100\nbind: ['127.0.0.1:8200']\n")
    config = _config("-c", str(path), "-w", "2", "--port", "8201", "spellings:app")
    assert (config.workers, config.max_requests, config.source) == (2, 100, str(path))
    assert config.bind == (BindSpec("127.0.0.1:8201"),)


def test_aliases_are_declared_in_the_key_table():
    """One source: each other spelling is its key's KeySpec.aliases, so --help, the parser and
    docs/coming-from.md see the same; no spelling names two keys or a compatibility flag."""
    keys = all_keys()
    assert "--proc-name" in keys["name"].aliases and "-t" in keys["timeout"].aliases
    assert "--timeout-keep-alive" in keys["keepalive_timeout"].aliases
    spellings = [flag for spec in keys.values() if not spec.positional for flag in spec.flags]
    spellings += [name for flag in COMPAT_FLAGS for name in flag.names]
    assert len(spellings) == len(set(spellings))
    docs = (Path(__file__).resolve().parents[2] / "docs" / "coming-from.md").read_text()
    for spec in keys.values():
        for alias in spec.aliases:
            assert f"`{alias}" in docs, f"docs/coming-from.md does not mention {alias}"
    for flag in COMPAT_FLAGS:
        assert f"`{flag.names[0]}" in docs


def test_help_says_what_t_timeout_is_and_lists_the_compatibility_flags(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    assert "compatibility flags (uvicorn, gunicorn):" in text
    for flag in COMPAT_FLAGS:
        assert flag.names[0] in text
    line = next(line for line in text.splitlines() if "--timeout SECONDS, -t SECONDS" in line)
    assert "gunicorn's -t/--timeout; a per-request deadline is --request-timeout" in " ".join(
        text[text.index(line):].split())[:400]


def test_status_and_reload_get_did_you_mean_too(capsys):
    with pytest.raises(SystemExit):
        parse_command_line(["status", "--jsn"])
    assert "unknown flag --jsn: did you mean --json?" in capsys.readouterr().err
