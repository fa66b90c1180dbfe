"""The configuration's documentation, generated from the key table so it can never drift from it.

Three files are written from one source, the key table (``corral.config.Config``'s fields with
their ``KeySpec``, the engine's ``EngineSettings`` fields with their metadata, each ``Group``'s
preamble) and the command line built from it (``corral.cli.build_parser``):

* ``conf/corral.yaml``: every key, commented out, with its default and what it means;
* ``docs/configuration.md``: the configuration reference;
* ``packaging/debian/corral.1``: the man page (shipped by the .deb and the RPM).

``python -m corral.keydoc --write`` (``make docs``) rewrites the three, ``--man`` the man page
alone, ``--check`` exits 1 naming each stale file. tests/config/test_docs_generated.py fails
when one is stale. To change what a key's documentation says, edit its ``doc`` / ``details``
in the key table, never the generated files.

This module sits above ``corral.cli`` (pyproject.toml's layers): nothing in corral imports it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral import __version__
from corral.cli import build_parser, config_keys
from corral.config import ENV_PREFIX, BindSpec, BoolKind, Group, KeySpec

ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout: daemon/corral/keydoc.py
CONF = Path("conf/corral.yaml")
REFERENCE = Path("docs/configuration.md")
MAN = Path("packaging/debian/corral.1")
COMMAND = "python -m corral.keydoc --write"
WIDTH = 80  # of conf/corral.yaml's comment lines

# --------------------------------------------------------------------------- the texts


def paragraphs(spec: KeySpec) -> list[str]:
    """What a key means, as paragraphs: its ``doc`` as a sentence, followed by its ``details``.

    A paragraph whose lines are indented (a list, an example) is kept as written."""
    head = spec.doc.strip()
    if head:
        head = head[0].upper() + head[1:]
        if not head.endswith((".", "!", "?")):
            head += "."
    rest = [p.strip("\n") for p in spec.details.split("\n\n") if p.strip()] if spec.details else []
    if rest and head and not _preformatted(rest[0]):
        return [f"{head} {rest[0]}", *rest[1:]]
    return [p for p in (head, *rest) if p]


def _preformatted(paragraph: str) -> bool:
    return paragraph.startswith(" ")


def yaml_value(value: Any) -> str:
    """A default as a YAML flow value, as conf/corral.yaml shows it after ``#key:``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, BindSpec):
        return json.dumps(value.address)
    if isinstance(value, str):
        return value if _plain(value) else json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(json.dumps(str(v)) if isinstance(v, (str, BindSpec)) else yaml_value(v)
                               for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no YAML spelling for the default {value!r}; teach corral.keydoc.yaml_value")


_YAML_WORDS = {"null", "true", "false", "yes", "no", "on", "off", "y", "n", "~"}


def _plain(text: str) -> bool:
    """A string YAML reads back as itself without quotes."""
    return bool(re.fullmatch(r"[A-Za-z/][A-Za-z0-9_./-]*", text)) and text.lower() not in _YAML_WORDS


def env_name(spec: KeySpec) -> str:
    return ENV_PREFIX + spec.name.upper()


def flag_text(spec: KeySpec) -> str:
    """The key's command-line spellings, with its value: ``-w/--workers N|auto``, ``--access-log/--no-access-log``."""
    if spec.positional:
        return f"{spec.value_name} (the last argument)"
    if isinstance(spec.kind, BoolKind):
        return "/".join(f"{flag}/--no-{flag[2:]}" if flag.startswith("--") else flag for flag in spec.flags)
    return f"{'/'.join(spec.flags)} {spec.value_name}"


def keys_by_group() -> list[tuple[Group, list[KeySpec]]]:
    keys = config_keys()
    return [(group, [spec for spec in keys if spec.group is group]) for group in Group]


# --------------------------------------------------------------------------- conf/corral.yaml

CONF_HEADER = """\
# corral configuration: every key, with its default.
#
# GENERATED from the key table by `{command}`
# (make docs): to change what a key's comment says, edit its doc/details in
# daemon/corral/config.py (engine keys: daemon/corral/engine/settings.py), then
# regenerate. docs/configuration.md is the same reference.
#
# Copy this file to /etc/corral/<app>.yaml (the packaged corral@<app> units read it)
# and uncomment what you change. A line "#key: value" shows a key and its default;
# lines starting with "# " explain it.
#
# Where a value comes from, last one wins:
#   defaults  <  this file  <  CORRAL_<KEY> environment variables  <  command-line flags
# e.g. CORRAL_WORKERS=4, CORRAL_MAX_MEMORY=512MiB, CORRAL_BIND=127.0.0.1:8000,[::1]:8000
# (lists are comma-separated in the environment), or `corral run -w 4 -b 0.0.0.0:8000`:
# every key is also a flag named after it (max_requests: --max-requests N,
# access_log: --access-log / --no-access-log, a list key repeated); `corral run --help`.
#
# `corral check --config FILE` validates this file and imports the app.
# An unknown key is an error that suggests the nearest valid one; a value of the
# wrong type names the key and the type expected.
#
# Durations are seconds, or a number with a unit: 500ms, 30s, 10m, 1h. NaN and
# infinity (.nan, .inf) are refused for every duration and number.
# Sizes are bytes, or a number with a unit: 512MiB, 1GiB, 300M (M = 10^6, MiB = 2^20).
"""


def _comment(text: str) -> list[str]:
    """One paragraph as comment lines: wrapped, or as written when preformatted."""
    if _preformatted(text):
        return [f"# {line}".rstrip() for line in text.splitlines()]
    return ["# " + line for line in textwrap.wrap(text, WIDTH - 2, break_on_hyphens=False,
                                                  break_long_words=False)]


def render_conf() -> str:
    out = [CONF_HEADER.format(command=COMMAND).rstrip("\n")]
    for group, specs in keys_by_group():
        out += ["", f"# {'=' * 76} {group.value}"]
        if group.preamble:
            out += _comment(group.preamble)
        for spec in specs:
            out.append("")
            for i, paragraph in enumerate(paragraphs(spec)):
                if i:
                    out.append("#")
                out += _comment(paragraph)
            out.append(f"#{spec.name}: {yaml_value(spec.default)}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- docs/configuration.md

REFERENCE_INTRO = """\
# Configuration

<!-- GENERATED by `{command}` (make docs) from the key table: daemon/corral/config.py
     (Config fields, KeySpec, Group) and daemon/corral/engine/settings.py (EngineSettings).
     Edit those, not this file; tests/config/test_docs_generated.py fails when it is stale. -->

corral reads an optional YAML file (`--config FILE`). `conf/corral.yaml`
documents every key with its default (it is generated from the same table as
this page); copy it and uncomment what you change. Values are taken in this
order, last one wins:

    defaults  <  the YAML file  <  CORRAL_<KEY> environment variables  <  command-line flags

for example `CORRAL_WORKERS=4`, `CORRAL_MAX_MEMORY=512MiB` or
`CORRAL_BIND=127.0.0.1:8000,[::1]:8000` (lists are comma-separated). Every key,
the engine's included, is also a flag of `corral run` and `corral check`, named
after it: `--max-requests 1000`, `--keepalive-timeout 5`, `--access-log` /
`--no-access-log` for a boolean, a list key repeated (`-b ADDR -b ADDR`,
`--forwarded-allow-ips 10.0.0.0/8 --forwarded-allow-ips unix`), a mapping as
YAML (`--health-check '{{path: /healthz}}'`); `-b`, `-w`, `-n` and the app as the
last argument are the short spellings. `corral run --help` lists them in the
groups below (and so does the man page, corral(1)). A flag's value is checked as
the file's is, and a bad one gets the same message, naming the flag.

- An unknown key is an error that suggests the nearest valid key; a value of
  the wrong type names the key and the type expected.
- Durations accept `500ms`, `30s`, `10m`, `1h`; sizes accept `512MiB`, `1GiB`,
  `300M` (M = 10^6, MiB = 2^20). NaN and infinite numbers (`.nan`, `.inf`,
  `inf` from the environment) are refused for every duration and number.
- Engine settings are checked as the workers will build them, so
  `max_connections: 0` is a config error naming its key, not a boot failure.
- An address listed twice, or a `metrics_bind` address that overlaps a `bind`
  address, is refused.
- `app_dir` must exist when corral starts (else exit 1 naming the directory;
  `corral check` says the same).

`corral check --config FILE` validates the file and imports the app (with the
app's own interpreter) and exits non-zero with a clear message if either fails.

The keys, in the groups of `conf/corral.yaml` and `corral run --help`:

"""


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _markdown(text: str) -> str:
    """Prose from the key table as Markdown: '<' and '*' escaped outside code spans."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else p.replace("<", r"\<").replace("*", r"\*") for p in parts)


def _markdown_paragraph(text: str) -> str:
    if not _preformatted(text):
        return _markdown(" ".join(text.split()))
    body = textwrap.dedent(text)
    if re.match(r"(\d+\.|-) ", body):  # a list: Markdown reads it as written
        return _markdown(body)
    return f"```\n{body}\n```"


def _code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render_reference() -> str:
    out = [REFERENCE_INTRO.format(command=COMMAND)]
    groups = keys_by_group()
    for group, specs in groups:
        title = group.value[0].upper() + group.value[1:]
        out.append(f"- [{title}](#{_anchor(title)}): "
                   + ", ".join(f"[`{s.name}`](#{_anchor(s.name)})" for s in specs) + "\n")
    for group, specs in groups:
        title = group.value[0].upper() + group.value[1:]
        out.append(f"\n## {title}\n")
        if group.preamble:
            out.append(_markdown(group.preamble) + "\n")
        for spec in specs:
            out.append(f"\n### {spec.name}\n")
            for paragraph in paragraphs(spec):
                out.append(_markdown_paragraph(paragraph) + "\n")
            out.append(f"**Default** {_code(yaml_value(spec.default))} · **value** {_markdown(spec.kind.expected)}"
                       f" · **flag** {_code(flag_text(spec))} · **environment** `{env_name(spec)}`\n")
    return "\n".join(out).replace("\n\n\n", "\n\n").rstrip("\n") + "\n"


# --------------------------------------------------------------------------- the man page

MAN_DESCRIPTION = """\
.B corral run
is the supervisor: it takes its listening sockets from systemd (or binds the
addresses of the config), starts worker processes that serve the app, replaces
unhealthy ones, and keeps systemd informed through sd_notify.
.PP
.B corral check
validates the config and imports the app, exiting non-zero with the reason.
.PP
.B corral status
prints the workers of a running supervisor, read from its control socket.
.PP
.B corral reload
deploys new code without dropping a request: a new generation of workers must
come up and pass its health check before the old one drains. It waits for the
outcome and exits non-zero when the new code did not come up (the old code keeps
serving). It is the unit's ExecReload=, so
.B systemctl reload
does the same.
"""

MAN_CONFIG = """\
Most options of
.B run
and
.B check
are config keys (each says so): a config key is a key of the YAML file (its
name with '_', for example
.BR max_requests ),
an environment variable
.RB ( CORRAL_MAX_REQUESTS )
and a flag
.RB ( \\-\\-max\\-requests ).
Values are taken in this order, last one wins: the defaults, the YAML file,
the CORRAL_<KEY> environment variables, the command-line flags. Lists are
comma-separated in the environment and repeated flags on the command line;
a boolean key is
.BI \\-\\- KEY
or
.BI \\-\\-no\\- KEY\\fR.
Durations are seconds or a number with a unit (500ms, 30s, 10m, 1h); sizes are
bytes or a number with a unit (512MiB, 1GiB, 300M).
.I /usr/share/doc/corral/examples/corral.yaml
documents every key with its default.
"""

MAN_FILES = """\
.TP
.I /etc/corral/APP.yaml
the config of the app served by
.BR corral@APP.service .
.TP
.I /lib/systemd/system/corral@.socket, /lib/systemd/system/corral@.service
the unit templates; enable an app with
.BR "systemctl enable \\-\\-now corral@APP.socket" .
.TP
.I /usr/share/doc/corral/examples/corral.yaml
every config key with its default.
"""

MAN_SEE_ALSO = """\
.BR systemctl (1),
.BR systemd.socket (5),
/usr/share/doc/corral/README.md
"""


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


@dataclass(frozen=True)
class _Option:
    """One argument of a subcommand, as the man page shows it."""

    names: str
    value: str | None
    help: str


@dataclass(frozen=True)
class _Section:
    title: str
    options: tuple[_Option, ...]


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    sections: tuple[_Section, ...]


def _commands(parser: argparse.ArgumentParser, keys: dict[str, KeySpec]) -> list[_Command]:
    """The subcommands of corral's parser with their options, grouped as --help groups them.

    argparse has no public way to walk a parser, so this reads its documented-in-source
    attributes (_actions, _action_groups, _group_actions, _choices_actions): the parser is
    corral's own, and the stale test regenerates the page on every run, so a change of
    argparse shows up there."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in subparsers._choices_actions}
    commands = []
    for name, sub in subparsers.choices.items():
        sections = []
        for group in sub._action_groups:
            options = tuple(_option(action, keys) for action in group._group_actions
                            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction))
            if options:
                sections.append(_Section(group.title or "", options))
        commands.append(_Command(name, helps.get(name, ""), tuple(sections)))
    return commands


def _option(action: argparse.Action, keys: dict[str, KeySpec]) -> _Option:
    if action.option_strings:
        names = ", ".join(action.option_strings)
        value = None if action.nargs == 0 else str(action.metavar or action.dest.upper())
    else:
        names = str(action.metavar or action.dest)
        value = None
    text = action.help or ""
    try:
        text = text % {"default": action.default, "prog": "corral", "dest": action.dest}
    except (KeyError, TypeError, ValueError):
        text = text.replace("%%", "%")
    spec = keys.get(action.dest)
    if spec is not None and not (spec.doc and (action.help or "").startswith(spec.doc.replace("%", "%%"))):
        spec = None  # a flag of the same name that is not the key's (`corral reload --timeout`)
    if spec is not None and spec.details:  # --help's line is the doc: the details follow it
        text += "\n\n" + spec.details.strip("\n")
    if spec is not None:
        text += f"\n\nConfig key {spec.name}, environment variable {env_name(spec)}."
    return _Option(names, value, text)


def _man_paragraphs(text: str) -> list[str]:
    out: list[str] = []
    for i, paragraph in enumerate(p for p in text.split("\n\n") if p.strip()):
        if i:
            out.append(".IP")
        if _preformatted(paragraph):
            out += [".nf", _roff(textwrap.dedent(paragraph)), ".fi"]
        else:
            out.append(_roff(" ".join(paragraph.split())))
    return out


def _man_option(option: _Option) -> list[str]:
    names = ", ".join(f"\\fB{_roff(n)}\\fR" for n in option.names.split(", "))
    if option.value:
        names += f" \\fI{_roff(option.value)}\\fR"
    return [".TP", names, *_man_paragraphs(option.help)]


def _synopsis(command: _Command) -> list[str]:
    positional = [o for s in command.sections for o in s.options if not o.names.startswith("-")]
    line = f".B corral {command.name}\n.RI [ OPTIONS ]"
    for option in positional:
        line += f"\n.RI [ {_roff(option.names)} ]"
    return [line, ".br"]


def render_man() -> str:
    commands = _commands(build_parser(), {spec.name: spec for spec in config_keys()})
    out = [f'.TH CORRAL 1 "" "corral {__version__}" "User Commands"',
           ".nh", ".ad l",  # no hyphenation, ragged right: option names and paths stay whole
           ".SH NAME",
           "corral \\- systemd\\-native application server for ASGI and WSGI Python web apps",
           ".SH SYNOPSIS"]
    for command in commands:
        out += _synopsis(command)
    out.append(".B corral \\-\\-version")
    out += [".SH DESCRIPTION", MAN_DESCRIPTION.rstrip("\n"), ".SH CONFIGURATION", MAN_CONFIG.rstrip("\n"),
            ".SH OPTIONS"]
    shown: dict[tuple[_Section, ...], str] = {}
    for command in commands:
        out.append(f".SS corral {command.name}")
        if command.help:
            out.append(_roff(command.help[0].upper() + command.help[1:] + "."))
        if command.sections in shown:
            out += [".PP", f"Takes the options of \\fBcorral {shown[command.sections]}\\fR."]
            continue
        shown[command.sections] = command.name
        for section in command.sections:
            out += [".PP", f"\\fI{_roff(section.title)}\\fR:"]
            for option in section.options:
                out += _man_option(option)
    out += [".SH ENVIRONMENT",
            ".TP", "\\fBCORRAL_CONFIG\\fR", "the config file, when \\fB\\-\\-config\\fR is not given.",
            ".TP", "\\fBCORRAL_\\fIKEY\\fR", "the config key \\fIkey\\fR (see CONFIGURATION and OPTIONS).",
            ".SH FILES", MAN_FILES.rstrip("\n"),
            ".SH SEE ALSO", MAN_SEE_ALSO.rstrip("\n")]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the command


def generated(root: Path = ROOT) -> dict[Path, str]:
    """Each generated file's path under ``root`` and the text it must hold."""
    return {root / CONF: render_conf(), root / REFERENCE: render_reference(), root / MAN: render_man()}


def stale(root: Path = ROOT) -> list[Path]:
    """The generated files whose text is not what the key table gives now."""
    return [path for path, text in generated(root).items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def _write(files: Iterable[tuple[Path, str]]) -> None:
    for path, text in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.keydoc", description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", action="store_true",
                      help=f"rewrite {CONF}, {REFERENCE} and {MAN} from the key table")
    what.add_argument("--man", action="store_true", help=f"rewrite the man page ({MAN}) only")
    what.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: %(default)s)")
    args = parser.parse_args(argv)
    files = generated(args.root)
    if args.check:
        old = stale(args.root)
        for path in old:
            print(f"{path} is stale: run `{COMMAND}` (make docs)", file=sys.stderr)
        return 1 if old else 0
    if args.man:
        _write([(args.root / MAN, files[args.root / MAN])])
    else:
        _write(files.items())
    return 0


if __name__ == "__main__":
    sys.exit(main())
