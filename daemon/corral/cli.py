"""The ``corral`` command line.

    corral run    [--config FILE] [-n/--name NAME] [-b/--bind ADDR]... [-w/--workers N]
                  [--interface auto|asgi|wsgi] [--KEY VALUE]... [APP]
    corral check  (the same options)   validate the config and import the app, then exit
    corral status [--config FILE] [-n/--name NAME] [--control-socket PATH] [--json]
    corral reload [--config FILE] [-n/--name NAME] [--control-socket PATH]

``APP`` is ``MODULE:ATTR`` or ``MODULE:FUNC()`` (a factory); it may also come
from the config's ``app:`` key. Every config key is a flag of ``run`` and ``check``,
built from the key table (``corral.config``): ``max_requests`` is ``--max-requests``,
a boolean ``access_log`` is ``--access-log``/``--no-access-log``, a list key is
repeated (``-b A -b B``). Flags override the config file and ``CORRAL_*``
environment variables; their values are checked by the key's own kind, so a bad
one gets the message a bad YAML value gets, naming the flag.

The spellings of gunicorn and uvicorn work too (docs/coming-from.md): a key's other
spellings are its ``KeySpec.aliases`` (``--proc-name``, ``--timeout-keep-alive``, ``-t``),
the few that combine into a key are the compatibility flags below (``--host``/``--port``,
``--uds``, ``--fd``, ``--factory``, ``--env-file``), and a flag corral does not have gets an
answer naming corral's way (``NOT_IN_CORRAL``) or the nearest flag it has.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import subprocess
import sys
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from corral import __version__
from corral.config import (
    GUNICORN_CONFIG_HINT,
    SUPERVISOR_KEYS,
    BoolKind,
    Config,
    ConfigError,
    Group,
    KeySpec,
    SequenceKind,
    check_app_dir,
    default_control_socket,
    default_name,
    engine_keys,
    load,
    read_file,
    runtime_dir,
)
from corral.logs import print_error

EXIT_USAGE = 2


class _Section(Protocol):
    """An argparse argument group (argparse names its class privately)."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def _config_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", default=os.environ.get("CORRAL_CONFIG"),
                        help="YAML config file (default: $CORRAL_CONFIG, else none)")


def config_keys() -> list[KeySpec]:
    """Every config key, each of which is a flag of `corral run` and `corral check`."""
    return [*SUPERVISOR_KEYS.values(), *engine_keys().values()]


def _serving_options(parser: argparse.ArgumentParser) -> None:
    """The config file, then one flag per config key, grouped as conf/corral.yaml groups the keys."""
    _config_file(parser)
    keys = config_keys()
    for group in Group:
        section = parser.add_argument_group(f"{group.value} (config keys)")
        for spec in keys:
            if spec.group is group:
                _add_key(section, spec)
    compat = parser.add_argument_group("compatibility flags (uvicorn, gunicorn)",
                                       "spellings that combine into the keys above (docs/coming-from.md)")
    for flag in COMPAT_FLAGS:
        if flag.metavar is None:
            compat.add_argument(*flag.names, dest=flag.dest, action="store_true", help=flag.help)
        else:
            compat.add_argument(*flag.names, dest=flag.dest, metavar=flag.metavar, type=flag.type, help=flag.help)


def _add_key(section: _Section, spec: KeySpec) -> None:
    """The flag of one config key. The value stays as typed: load() checks it with the key's
    kind, as it checks the file's (so the error names the key, the flag and what is accepted)."""
    help_text = _help(spec)
    if spec.positional:
        section.add_argument(spec.name, nargs="?", metavar=spec.value_name, help=help_text)
        return
    names = spec.flags
    if isinstance(spec.kind, BoolKind):
        section.add_argument(*names, dest=spec.name, action=argparse.BooleanOptionalAction, default=None,
                             help=help_text)
    elif isinstance(spec.kind, SequenceKind):
        section.add_argument(*names, dest=spec.name, action="append", metavar=spec.value_name,
                             help=f"{help_text}; repeat the flag for each item")
    else:
        section.add_argument(*names, dest=spec.name, metavar=spec.value_name, help=help_text)


def _help(spec: KeySpec) -> str:
    shown = _as_yaml(spec.default)
    text = f"{spec.doc} (default: {shown})" if spec.doc else f"default: {shown}"
    return text.replace("%", "%%")  # argparse formats help with %


def _as_yaml(value: Any) -> str:
    """A default as the config file would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def key_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command line gave, by key name (for config.load's overrides),
    with the compatibility flags folded into the keys they stand for."""
    values = {spec.name: getattr(args, spec.name) for spec in config_keys()
              if getattr(args, spec.name, None) is not None}
    addresses = compat_addresses(args)
    if addresses:
        values["bind"] = [*(values.get("bind") or []), *addresses]
    if getattr(args, "factory", False):
        app = values.get("app")
        if not app:
            raise ConfigError("--factory calls the APP given on the command line: corral run --factory "
                              "MODULE:FUNC (in a config file, write app: 'MODULE:FUNC()')")
        values["app"] = app if app.endswith("()") else f"{app}()"
    return values


# --------------------------------------------------------------------------- gunicorn's and uvicorn's spellings


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0 to 65535)")
    return port


def _fd(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file descriptor number")
    return int(text)


@dataclass(frozen=True)
class CompatFlag:
    """A flag of uvicorn's or gunicorn's that is no config key of its own but combines into
    one (``--host`` and ``--port`` into a ``bind`` address): ``key_values`` folds it in. A
    flag that is only another spelling of a key is that key's ``KeySpec.aliases`` instead.
    ``metavar`` None: a switch."""

    names: tuple[str, ...]
    dest: str
    metavar: str | None
    help: str
    type: Any = str


DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000

COMPAT_FLAGS = (
    CompatFlag(("--host",), "host", "HOST",
               f"uvicorn's: listen on HOST (with --port, default {DEFAULT_PORT}): HOST:PORT joins the -b "
               "addresses, which replace the config file's bind; an IPv6 address is bracketed for you"),
    CompatFlag(("--port",), "port", "PORT",
               f"uvicorn's: listen on PORT (with --host, default {DEFAULT_HOST}): HOST:PORT joins the -b addresses",
               _port),
    CompatFlag(("--uds",), "uds", "PATH", "uvicorn's: listen on the unix socket PATH: unix:PATH joins the -b addresses"),
    CompatFlag(("--fd",), "fd", "N",
               "uvicorn's: serve the listening socket on file descriptor N: fd:N joins the -b addresses", _fd),
    CompatFlag(("--factory",), "factory", None,
               "uvicorn's: APP is a factory: call it to get the app (APP MODULE:FUNC becomes MODULE:FUNC())"),
    CompatFlag(("--env-file",), "env_file", "FILE",
               "uvicorn's: read environment variables from a .env FILE (python-dotenv) into corral's "
               "environment, which the workers inherit; a variable already set wins, and CORRAL_* ones "
               "set config keys"),
)


def compat_addresses(args: argparse.Namespace) -> list[str]:
    """The bind addresses --host/--port, --uds and --fd stand for, in that order."""
    addresses = []
    host, port = getattr(args, "host", None), getattr(args, "port", None)
    if host is not None or port is not None:
        host = DEFAULT_HOST if host is None else host.strip()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address: HOST:PORT would be ambiguous
        addresses.append(f"{host}:{DEFAULT_PORT if port is None else port}")
    if getattr(args, "uds", None):
        addresses.append(f"unix:{args.uds}")
    if getattr(args, "fd", None) is not None:
        addresses.append(f"fd:{args.fd}")
    return addresses


def load_env_file(path: str, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Read a .env file (python-dotenv's parser: quotes, ``export``, ``${VAR}`` expansion) into
    ``environ`` (corral's own environment: the workers inherit it, and CORRAL_* variables in it
    set config keys). A variable already set keeps its value, as with uvicorn's --env-file.
    Returns the variables it set; a missing or unreadable file is a ConfigError naming it."""
    environ = os.environ if environ is None else environ
    if not os.path.exists(path):
        raise ConfigError(f"--env-file {path!r} does not exist; give the path of a .env file (NAME=value lines)")
    if not os.path.isfile(path):
        raise ConfigError(f"--env-file {path!r} is not a file; give the path of a .env file (NAME=value lines)")
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --env-file {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    added = {}
    for name, value in values.items():
        if value is not None and name not in environ:  # a bare NAME line sets nothing
            environ[name] = added[name] = value
    return added


# Flags of gunicorn's and uvicorn's that corral does not have, each with what corral does instead.
_NO_WORKER_CLASSES = ("there are no worker classes: corral tells ASGI from WSGI itself (the interface key: "
                      "--interface auto|asgi|wsgi to override the guess) and serves both on its own uvloop "
                      "engine; a WSGI app that blocks gets a thread pool with --threads N")
_SYSTEMD_LOGS = ("corral logs to stderr, which systemd sends to the journal (journalctl -u UNIT); "
                 "--log-config FILE sends it elsewhere")
NOT_IN_CORRAL: dict[str, str] = {
    "--worker-class": _NO_WORKER_CLASSES,
    "--workers-class": _NO_WORKER_CLASSES,
    "-k": _NO_WORKER_CLASSES,
    "--daemon": "corral runs in the foreground: systemd runs it in the background (a service unit)",
    "-D": "corral runs in the foreground: systemd runs it in the background (a service unit)",
    "--pid": "corral writes no pid file: systemd knows the supervisor's pid (systemctl show -p MainPID UNIT)",
    "-p": "corral writes no pid file: systemd knows the supervisor's pid (systemctl show -p MainPID UNIT)",
    "--user": "set User= in the systemd unit", "-u": "set User= in the systemd unit",
    "--group": "set Group= in the systemd unit", "-g": "set Group= in the systemd unit",
    "--umask": "set UMask= in the systemd unit", "-m": "set UMask= in the systemd unit",
    "--access-logfile": "--access-log writes the access log to stderr (the journal under systemd); "
                        "--access-log-format common|combined|json",
    "--access-logformat": "--access-log-format common|combined|json",
    "--error-logfile": _SYSTEMD_LOGS, "--log-file": _SYSTEMD_LOGS, "--capture-output": _SYSTEMD_LOGS,
    "--enable-stdio-inheritance": "the workers' stdout and stderr already reach corral's (the journal)",
    "--statsd-host": "corral serves Prometheus metrics instead: --metrics-bind 127.0.0.1:9100",
    "--statsd-prefix": "corral serves Prometheus metrics instead: --metrics-bind 127.0.0.1:9100",
    "--check-config": "run `corral check` (it imports the app too)",
    "--proxy-headers": "corral believes X-Forwarded-* only from --forwarded-allow-ips peers (default "
                       "127.0.0.1, ::1, unix), always; --forwarded-headers picks which headers",
    "--no-proxy-headers": "--forwarded-allow-ips '' believes no proxy (corral reads X-Forwarded-* only "
                          "from --forwarded-allow-ips peers)",
    "--proxy-allow-from": "--forwarded-allow-ips ADDR (repeat it)",
    "--loop": "corral always runs uvloop", "--http": "corral has its own HTTP/1.1 engine (httptools)",
    "--ssl-keyfile-password": "--ssl-keyfile-password-file FILE: a password on the command line shows in ps",
    "--keyfile-password": "--ssl-keyfile-password-file FILE: a password on the command line shows in ps",
    "--ssl-version": "--ssl-minimum-version TLSv1.2|TLSv1.3",
    "--cert-reqs": "--ssl-cert-reqs none|optional|required (gunicorn's 0, 1, 2)",
    "--limit-concurrency": "--max-connections N: per worker; at the limit the worker stops accepting "
                           "(connections wait in the listen queue instead of getting a 503)",
    "--limit-request-field_size": "--max-header-size BYTES (corral limits all the headers of a request together)",
    "--limit-request-field-size": "--max-header-size BYTES (corral limits all the headers of a request together)",
    "--h11-max-incomplete-event-size": "--max-header-size BYTES",
    "--no-server-header": "--server-header null",
    "--header": "corral adds no response headers of its own choosing: set them in the app",
    "-H": "corral adds no response headers of its own choosing: set them in the app",
    "--use-colors": "corral's logs are plain (journal-friendly)",
    "--no-use-colors": "corral's logs are plain (journal-friendly)",
    "--env": "--environment '{NAME: value}', or --env-file FILE",
    "-e": "--environment '{NAME: value}', or --env-file FILE",
    "--paste": "give the WSGI app itself as MODULE:ATTR, or a factory that builds it: MODULE:FUNC()",
    "--worker-tmp-dir": "corral's workers send heartbeats over a socket, not through a temp file",
    "--pythonpath": "--app-dir DIR is put first on the app's sys.path; for more, PYTHONPATH in --environment",
    "--print-config": "run `corral check`: it prints the resolved config's essentials and imports the app",
    "--timeout-worker-healthcheck": "workers send a heartbeat every second; --timeout SECONDS declares a silent "
                                    "one hung (killed and replaced)",
    "--http2": "corral speaks HTTP/1.1: put an HTTP/2 proxy (nginx, HAProxy) in front",
    "--no-sendfile": "there is no sendfile to switch off: the engine writes responses itself",
    "--log-syslog": _SYSTEMD_LOGS, "--log-syslog-to": _SYSTEMD_LOGS,
    "--proxy-protocol": "corral does not read the PROXY protocol: let the proxy send X-Forwarded-For, and "
                        "trust it with --forwarded-allow-ips",
    "--initgroups": "set SupplementaryGroups= (or User=) in the systemd unit",
    "--logger-class": "--log-config FILE (a logging.dictConfig in YAML or JSON)",
    "--spew": "no tracing switch: `corral status` and py-spy show what workers do",
}


def unknown_flag_message(command: str, extras: Sequence[str], known: Sequence[str]) -> str:
    """What to say about arguments argparse did not take: the first unknown flag, with corral's
    way when corral does it differently, else the nearest flag it has."""
    flags = [arg for arg in extras if arg.startswith("-") and arg != "-"]
    if not flags:
        return (f"unexpected argument {extras[0]!r}: corral {command} takes one APP; if a flag before it takes a "
                "value elsewhere, corral's may not (see corral run --help)")
    flag = flags[0].split("=", 1)[0]
    if not flag.startswith("--") and len(flag) > 2:
        flag = flag[:2]  # -k4 is -k 4
    known_here = [name for name in known if name not in NOT_IN_CORRAL]
    if flag in NOT_IN_CORRAL:
        return f"corral has no {flag}: {NOT_IN_CORRAL[flag]} (docs/coming-from.md)"
    close = difflib.get_close_matches(flag, known_here, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else f"corral {command} --help lists every flag"
    return f"unknown flag {flag}: {hint} (docs/coming-from.md maps gunicorn's and uvicorn's flags to corral's)"


def serving_flags() -> list[str]:
    """Every option string of `corral run` and `corral check`."""
    names = ["-h", "--help", "-c", "--config"]
    for spec in config_keys():
        if spec.positional:
            continue
        names += spec.flags
        if isinstance(spec.kind, BoolKind):
            names += ["--no-" + name[2:] for name in spec.flags if name.startswith("--")]
    for flag in COMPAT_FLAGS:
        names += flag.names
    return names


# gunicorn.conf.py settings and the corral keys they become (docs/coming-from.md has the whole table).
GUNICORN_SETTINGS = {
    "wsgi_app": "app", "bind": "bind", "backlog": "backlog", "workers": "workers", "threads": "threads",
    "worker_connections": "max_connections", "max_requests": "max_requests",
    "max_requests_jitter": "max_requests_jitter", "timeout": "timeout", "graceful_timeout": "graceful_timeout",
    "keepalive": "keepalive_timeout", "limit_request_line": "max_request_line",
    "limit_request_fields": "max_header_count", "chdir": "app_dir", "proc_name": "name", "loglevel": "log_level",
    "forwarded_allow_ips": "forwarded_allow_ips", "reuse_port": "reuse_port", "certfile": "ssl_certfile",
    "keyfile": "ssl_keyfile", "ca_certs": "ssl_ca_certs", "ciphers": "ssl_ciphers", "reload": "reload",
    "raw_env": "environment", "accesslog": "access_log", "preload_app": "preload",
}


def gunicorn_config_message(path: str) -> str:
    """What to say to `corral run -c gunicorn.conf.py`: what to do, and the file's plain settings
    (``name = literal`` lines) already written as corral's YAML."""
    message = f"config file {path!r} is a gunicorn config file (Python); {GUNICORN_CONFIG_HINT}"
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return message
    keys: dict[str, Any] = {}
    left: list[str] = []
    corral_keys = {spec.name for spec in config_keys()}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        try:
            value = ast.literal_eval(node.value)
        except ValueError:  # computed (multiprocessing.cpu_count() * 2 + 1): not carried over
            left.append(name)
            continue
        key = GUNICORN_SETTINGS.get(name)
        if key is None or key not in corral_keys:
            left.append(name)
        elif name == "raw_env":
            keys[key] = dict(item.split("=", 1) for item in value if "=" in item)
        elif name == "preload_app" and "worker_start" in corral_keys:
            keys[key] = bool(value)
            if value:
                keys["worker_start"] = "zygote"  # corral preloads only into a zygote
        elif name == "accesslog":
            if value:
                keys[key] = True  # corral writes it to stderr: the journal
        elif key in ("bind", "forwarded_allow_ips") and isinstance(value, str):
            keys[key] = [part.strip() for part in value.split(",") if part.strip()]
        else:
            keys[key] = value
    if keys:
        import yaml

        message += "; the same settings as corral's YAML:\n\n" + yaml.safe_dump(keys, sort_keys=False)
    if left:
        message += f"\nnot carried over (see docs/coming-from.md): {', '.join(left)}"
    return message.rstrip()


_CONTROL_FLAGS = ["-h", "--help", "-c", "--config", "-n", "--name", "--control-socket"]
_COMMAND_FLAGS = {"status": [*_CONTROL_FLAGS, "--json"], "reload": [*_CONTROL_FLAGS, "--timeout"]}


def _control_options(parser: argparse.ArgumentParser) -> None:
    _config_file(parser)
    parser.add_argument("-n", "--name", metavar="NAME",
                        help="instance name, which names the control socket (default: the config file's "
                             "name, else the app directory's: two apps on one machine get two names)")
    parser.add_argument("--control-socket", metavar="PATH", help="the supervisor's control socket")


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: gunicorn's --header would otherwise be taken for --header-timeout, and an
    # unknown flag must get its answer (parse_command_line), not a silent near match.
    parser = argparse.ArgumentParser(prog="corral", description="A systemd-native application server "
                                     "for ASGI and WSGI Python web apps.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _serving_options(sub.add_parser("run", help="serve an app (the supervisor systemd starts)", allow_abbrev=False))
    _serving_options(sub.add_parser("check", help="validate the config and import the app", allow_abbrev=False))
    status = sub.add_parser("status", help="show the workers of a running corral", allow_abbrev=False)
    _control_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    reload = sub.add_parser("reload", help="deploy new code with zero downtime; waits for the outcome",
                            allow_abbrev=False)
    _control_options(reload)
    reload.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    return parser


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, parsed; an unknown flag exits 2 with an answer naming corral's way."""
    args, extras = build_parser().parse_known_args(argv)
    if extras:
        command = args.command
        known = serving_flags() if command in ("run", "check") else _COMMAND_FLAGS.get(command, [])
        print(f"corral {command}: error: {unknown_flag_message(command, extras, known)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; ``argv`` None: this process's own (``sys.argv``)."""
    from corral.supervisor import launch

    if argv is None and launch.pending():
        # `corral run` re-executed a command that enters here rather than through corral.entry
        # (`python -c "from corral.cli import main; main()"`, an older console script): this image
        # is the supervisor's, and parsing the command line again would exec once more.
        return launch.serve()
    args = parse_command_line(argv)
    args.argv = None if argv is None else list(argv)  # what `corral run` re-executes (launch)
    try:
        if args.command in ("run", "check") and args.config and args.config.endswith(".py"):
            raise ConfigError(gunicorn_config_message(args.config))
        if getattr(args, "env_file", None):
            load_env_file(args.env_file)  # before the config: its CORRAL_* variables are config keys
        if args.command == "run":
            return cmd_run(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "reload":
            return cmd_reload(args)
    except ConfigError as exc:
        print_error(f"corral: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `corral status --json | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return EXIT_USAGE


def cmd_run(args: argparse.Namespace) -> int:
    """Load the config, then become the supervisor (corral.supervisor.launch): returns only on failure."""
    from corral.supervisor import launch
    from corral.supervisor.listeners import secure_standard_fds
    from corral.supervisor.reaper import prepare_pid1

    secure_standard_fds()  # before anything opens a file: `corral run <&-` must not put a socket on fd 0
    prepare_pid1()  # a container's PID 1: logs to stdout, SIGTERM honoured while starting
    config: Config | None
    try:
        config = load(args.config, key_values(args))
    except ConfigError as exc:
        from corral.supervisor import reexec

        # An in-place re-exec must not die on a config file broken since its preflight (its
        # workers would be orphaned): it goes on with the config it ran with, which the
        # supervisor's image reads from the re-exec state. A normal start fails.
        if not reexec.state_pending():
            raise
        print(f"corral: {exc}; re-executed in place: keeping the running config", file=sys.stderr, flush=True)
        config = None
    try:
        launch.exec_supervisor(config, args.argv)
    except launch.LaunchError as exc:
        print_error(f"corral: {exc}")
    return 1


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args.config, key_values(args))
    if not config.app:
        print("corral: no app given: pass MODULE:ATTR or set app: in the config", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_app_dir(config)  # else subprocess blames the python binary for the missing cwd
    except ConfigError as exc:
        print_error(f"corral: {exc}")
        return 1  # as `corral run` exits: the config is valid, the machine is not ready for it
    print(f"config ok{f' ({config.source})' if config.source else ''}: {config.workers} workers, "
          f"bind {', '.join(map(str, config.bind))}, python {config.python}")
    from corral.supervisor.spawn import worker_argv, worker_env

    argv = worker_argv(config.python, ["--check"])
    try:
        proc = subprocess.run(argv, input=json.dumps(config.to_json()), text=True, cwd=config.app_dir,
                              env=worker_env(os.environ, config.environment), timeout=config.boot_timeout)
    except subprocess.TimeoutExpired:
        print(f"corral: importing {config.app} took longer than boot_timeout={config.boot_timeout:g}s",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"corral: cannot run {config.python}: {exc.strerror}", file=sys.stderr)
        return 1
    return proc.returncode


def _control_path(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """Where the control socket may be, most specific first, and the instance name (None
    when a control socket path was given). Resolved as `corral run` resolves it, with the
    same precedence: flags, then CORRAL_* variables, then the config file.

    Read leniently: `corral reload` must reach the supervisor even when the config
    on disk is broken (the supervisor then reports the error and keeps serving), and
    `corral status` must work whatever the file says.
    """
    if args.control_socket:
        return [args.control_socket], None
    raw: dict[str, Any] = {}
    if args.config:
        try:
            raw = read_file(args.config)
        except ConfigError:
            raw = {}

    def setting(key: str) -> str | None:
        value = os.environ.get(f"CORRAL_{key.upper()}") or raw.get(key)
        return value if isinstance(value, str) and value else None

    explicit = setting("control_socket")
    if explicit:
        return [explicit], None
    name = args.name or setting("name") or default_name(args.config,
                                                        os.path.abspath(setting("app_dir") or os.getcwd()))
    paths = [default_control_socket(name)]
    if not os.environ.get("RUNTIME_DIRECTORY"):
        # The model unit's RuntimeDirectory=NAME gives /run/NAME rather than /run/corral/NAME.
        paths.append(f"/run/{name}/control.sock")
    return paths, name


def _running_names(name: str) -> list[str]:
    """Names of the corrals whose control sockets are beside ``name``'s default one."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return []
    parent = os.path.dirname(runtime_dir(name))
    try:
        return sorted(entry for entry in os.listdir(parent)
                      if os.path.exists(os.path.join(parent, entry, "control.sock")))
    except OSError:
        return []


def _request(args: argparse.Namespace, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    from corral.supervisor.control import ControlError, request

    paths, name = _control_path(args)
    error: ControlError | None = None
    for path in paths:
        if len(paths) > 1 and not os.path.exists(path):
            continue
        try:
            return request(path, message, timeout)
        except ControlError as exc:
            error = exc
    if error is not None:
        raise error
    others = [n for n in _running_names(name) if n != name] if name else []
    if others:
        raise ControlError(f"no corral named {name!r} is running (no control socket at {' or '.join(paths)}); "
                           f"running here: {', '.join(others)}; pick one with -n NAME")
    raise ControlError(f"no control socket at {' or '.join(paths)}: is corral running? "
                       "(check `systemctl status`, or pass --config / -n NAME / --control-socket)")


def cmd_status(args: argparse.Namespace) -> int:
    from corral.supervisor.control import ControlError
    from corral.supervisor.status import render_table

    try:
        data = _request(args, {"cmd": "status"}, timeout=10.0)
    except ControlError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 1
    if not data.get("ok"):
        print(f"corral: {data.get('error', 'status failed')}", file=sys.stderr)
        return 1
    data.pop("ok", None)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    try:
        table = render_table(data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        # The reply passed check_reply, but this table reads a field it does not check
        # (a corral of another version): an error, not a traceback.
        print(f"corral: unexpected reply from the control socket: cannot show {exc!r}; try --json",
              file=sys.stderr)
        return 1
    print(table)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Synchronous reload, fit for ExecReload=: RELOADING=1, BARRIER, ask, wait, report."""
    from corral.supervisor.control import ControlError
    from corral.supervisor.notify import Notifier, barrier

    notifier = Notifier()
    notified = False
    if notifier.enabled:
        # As an ExecReload= process (NotifyAccess=exec), announce the reload ourselves and wait
        # until PID 1 has seen it, so that `systemctl reload` waits for the supervisor's READY=1.
        notifier.reloading()
        path = notifier.socket_path
        notified = barrier(path) if path else False
    try:
        reply = _request(args, {"cmd": "reload", "notified": notified}, timeout=args.timeout)
    except BaseException as exc:
        if notifier.enabled:
            notifier.ready()  # nobody else will answer our RELOADING=1: never leave systemd hanging
        if not isinstance(exc, ControlError):
            raise
        print(f"corral: reload failed: {exc}", file=sys.stderr)
        return 1
    if reply.get("ok"):
        print(f"corral: reload ok: {reply.get('message')} ({reply.get('duration', 0):.2f}s)")
        return 0
    print(f"corral: reload failed: {reply.get('message') or reply.get('error')}", file=sys.stderr)
    return 1
