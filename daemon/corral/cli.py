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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from corral import __version__
from corral.config import (
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


def _add_key(section: _Section, spec: KeySpec) -> None:
    """The flag of one config key. The value stays as typed: load() checks it with the key's
    kind, as it checks the file's (so the error names the key, the flag and what is accepted)."""
    help_text = _help(spec)
    if spec.positional:
        section.add_argument(spec.name, nargs="?", metavar=spec.value_name, help=help_text)
        return
    names = [spec.short, spec.flag] if spec.short else [spec.flag]
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
    """The config keys the command line gave, by key name (for config.load's overrides)."""
    return {spec.name: getattr(args, spec.name) for spec in config_keys()
            if getattr(args, spec.name, None) is not None}


def _control_options(parser: argparse.ArgumentParser) -> None:
    _config_file(parser)
    parser.add_argument("-n", "--name", metavar="NAME",
                        help="instance name, which names the control socket (default: the config file's "
                             "name, else the app directory's: two apps on one machine get two names)")
    parser.add_argument("--control-socket", metavar="PATH", help="the supervisor's control socket")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="A systemd-native application server "
                                     "for ASGI and WSGI Python web apps.")
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _serving_options(sub.add_parser("run", help="serve an app (the supervisor systemd starts)"))
    _serving_options(sub.add_parser("check", help="validate the config and import the app"))
    status = sub.add_parser("status", help="show the workers of a running corral")
    _control_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    reload = sub.add_parser("reload", help="deploy new code with zero downtime; waits for the outcome")
    _control_options(reload)
    reload.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
    from corral.supervisor.listeners import secure_standard_fds

    secure_standard_fds()  # before anything opens a file: `corral run <&-` must not put a socket on fd 0
    # The supervisor never speaks TLS, but asyncio imports ssl when it can, which maps
    # libssl and libcrypto: about 6 MiB of the supervisor's 25 MiB budget. Python
    # built without ssl is a supported asyncio configuration; this makes ours one.
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]
    overrides = key_values(args)
    try:
        config = load(args.config, overrides)
    except ConfigError as exc:
        config = _config_after_reexec(exc)
    from corral.supervisor import run

    # A reload re-reads the same file, environment and flags.
    return run(config, reload_config=lambda: load(args.config, overrides))


def _config_after_reexec(error: ConfigError) -> Config:
    """An in-place re-exec must not die on a config file broken since its preflight (its
    workers would be orphaned): it goes on with the config it ran with. A normal start fails."""
    from corral.supervisor import reexec

    state = reexec.take_state()
    if state is None:
        raise error
    print(f"corral: {error}; re-executed in place: keeping the running config", file=sys.stderr, flush=True)
    return reexec.config_from_json(state["config"])


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
    parent = runtime_dir(name).parent
    try:
        return sorted(entry.name for entry in parent.iterdir() if (entry / "control.sock").exists())
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
