"""corral's configuration: YAML file < ``CORRAL_*`` environment < command line.

Two families of keys share one flat namespace:

* the supervisor's own keys: each field of ``Config`` declared with ``_key(...)``
  (kind, default, meaning, group, command-line spelling) is one, and
  ``SUPERVISOR_KEYS`` is derived from them;
* the HTTP engine's keys: every field of ``corral.engine.settings.EngineSettings``
  is a config key of the same name, validated from the field's annotation, so an
  engine option never has to be declared twice.

Every key is also a ``CORRAL_<KEY>`` environment variable and a command-line flag
(``corral.cli`` builds them from the table). Every error names the key, where the
value came from and what would be accepted; an unknown key suggests the nearest one.

This module is imported by the supervisor, which must never import uvloop,
httptools or the app: ``corral.engine.settings`` is a plain dataclass, and the
engine package imports its server lazily. It is imported by the worker too, under
the app's interpreter, which may lack PyYAML: YAML is parsed only where text is read.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.engine.settings import EngineSettings

ENV_PREFIX = "CORRAL_"
DEFAULT_BIND = "127.0.0.1:8000"


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the fix."""


def _yaml(text: str) -> Any:
    """YAML text as data. Imported here, not at the top: the worker reads its config as JSON,
    under the app's interpreter, which may not have PyYAML."""
    import yaml

    return yaml.safe_load(text)


# --------------------------------------------------------------------------- value kinds


class Kind:
    """How one key's value is checked and normalised.

    ``coerce(value, text=False)`` returns the normalised value or raises
    ``ValueError`` whose message is the *expected* description. ``text=True`` means
    the value came from an environment variable or a command-line flag, so it is a
    string that may need parsing ("4" for an int, "a,b" for a list). ``metavar`` is how
    ``corral run --help`` shows the value of the key's flag.
    """

    expected = "a value"
    metavar = "VALUE"

    def coerce(self, value: Any, text: bool = False) -> Any:
        raise NotImplementedError

    def fail(self) -> typing.NoReturn:
        raise ValueError(self.expected)


class AnyKind(Kind):
    expected = "any value"
    metavar = "YAML"

    def coerce(self, value: Any, text: bool = False) -> Any:
        return _yaml(value) if text else value


class BoolKind(Kind):
    expected = "a boolean (true or false)"
    metavar = "BOOL"
    _TEXT: typing.ClassVar[dict[str, bool]] = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}

    def coerce(self, value: Any, text: bool = False) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in self._TEXT:
            return self._TEXT[value.strip().lower()]
        self.fail()


class IntKind(Kind):
    metavar = "N"

    def __init__(self, minimum: int | None = None) -> None:
        self.minimum = minimum
        self.expected = "an integer" if minimum is None else f"an integer >= {minimum}"

    def coerce(self, value: Any, text: bool = False) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""), 0)
            except ValueError:
                self.fail()
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail()
        if self.minimum is not None and value < self.minimum:
            self.fail()
        return value


class FloatKind(Kind):
    """A finite number: NaN compares false with every limit, so it would slip past each check."""

    metavar = "NUMBER"

    def __init__(self, minimum: float | None = None) -> None:
        self.minimum = minimum
        self.expected = "a number, finite" if minimum is None else f"a number >= {minimum:g}, finite"

    def coerce(self, value: Any, text: bool = False) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                self.fail()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail()
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            self.fail()
        if not math.isfinite(number) or (self.minimum is not None and number < self.minimum):
            self.fail()
        return number


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class DurationKind(Kind):
    """Seconds, as a number or with a unit: ``30``, ``2.5``, ``500ms``, ``10m``, ``1h``."""

    expected = "a duration in seconds (e.g. 30, 2.5, 500ms, 10m, 1h), finite and not negative"
    metavar = "SECONDS"

    def coerce(self, value: Any, text: bool = False) -> float:
        if isinstance(value, bool):
            self.fail()
        seconds: float | None = None
        if isinstance(value, (int, float)):
            try:
                seconds = float(value)
            except OverflowError:  # an int beyond float range
                self.fail()
        elif isinstance(value, str):
            match = _DURATION_RE.match(value)
            if match:
                seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        # NaN passes every "<= 0" check and an infinite deadline never fires: a NaN
        # timeout once left a SIGSTOPped worker "ready" forever. Refuse both.
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            self.fail()
        return seconds


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


class SizeKind(Kind):
    """Bytes, as a number or with a unit: ``536870912``, ``512MiB``, ``1G``, ``300M``."""

    expected = "a size in bytes (e.g. 536870912, 512MiB, 1GiB, 300M)"
    metavar = "BYTES"

    def coerce(self, value: Any, text: bool = False) -> int:
        if isinstance(value, bool):
            self.fail()
        if isinstance(value, int):
            if value < 0:
                self.fail()
            return value
        if isinstance(value, str):
            match = _SIZE_RE.match(value)
            if match:
                unit = (match.group(2) or "").lower().rstrip("b")
                size = float(match.group(1)) * _SIZE_UNITS[unit]
                if math.isfinite(size):
                    return int(size)
        self.fail()


class StrKind(Kind):
    expected = "a string"
    metavar = "TEXT"

    def coerce(self, value: Any, text: bool = False) -> str:
        if isinstance(value, str):
            return value
        self.fail()


class AppKind(Kind):
    """``MODULE:ATTR`` or ``MODULE:FUNC()``, checked by the supervisor (``corral.appload``'s own
    parser), so that a name such as ``envapp`` is refused once, before any worker starts."""

    expected = "an app as MODULE:ATTR, or MODULE:FUNC() for a factory (e.g. 'myproject.asgi:app')"
    metavar = "MODULE:ATTR"

    def coerce(self, value: Any, text: bool = False) -> str | None:
        if value is None or (text and isinstance(value, str) and value.strip().lower() in ("", "null", "~")):
            return None  # no app here: the supervisor asks for one (``app`` is optional in a file)
        if not isinstance(value, str):
            self.fail()
        from corral.appload import AppLoadError, parse_spec

        try:
            parse_spec(value)
        except AppLoadError:
            module, colon, _ = value.partition(":")
            if not colon and module.replace(".", "_").isidentifier():
                # The commonest slip: the module alone (uvicorn and gunicorn want the colon too).
                raise ValueError(f"an app as MODULE:ATTR, or MODULE:FUNC() for a factory: {value!r} names a "
                                 f"module but not the app in it; write e.g. '{value}:app'") from None
            self.fail()
        return value


class ChoiceKind(Kind):
    def __init__(self, *choices: Any) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(repr(c) for c in choices)
        self.metavar = "{" + ",".join(str(c) for c in choices) + "}"

    def coerce(self, value: Any, text: bool = False) -> Any:
        for choice in self.choices:
            if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
                return choice
        self.fail()


class OptionalKind(Kind):
    """``None`` (YAML ``null``/``~``, or an empty string from the environment) or the inner kind."""

    def __init__(self, inner: Kind) -> None:
        self.inner = inner
        self.expected = f"{inner.expected}, or null"
        self.metavar = inner.metavar

    def coerce(self, value: Any, text: bool = False) -> Any:
        if value is None or (text and value.strip().lower() in ("", "null", "none", "~")):
            return None
        try:
            return self.inner.coerce(value, text)
        except ValueError:
            self.fail()


class UnionKind(Kind):
    def __init__(self, *kinds: Kind) -> None:
        self.kinds = kinds
        self.expected = " or ".join(k.expected for k in kinds)
        self.metavar = "|".join(k.metavar for k in kinds)

    def coerce(self, value: Any, text: bool = False) -> Any:
        for kind in self.kinds:
            try:
                return kind.coerce(value, text)
            except ValueError:
                continue
        self.fail()


class SequenceKind(Kind):
    """A YAML list; from the environment or a flag, a comma-separated string."""

    def __init__(self, item: Kind, container: Callable[[Iterable[Any]], Any] = tuple,
                 expected: str | None = None) -> None:
        self.item = item
        self.container = container
        self.expected = expected or f"a list of {_plural(item.expected)}"
        self.metavar = item.metavar

    def coerce(self, value: Any, text: bool = False) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()] if text else [value]
        if not isinstance(value, (list, tuple, set, frozenset)):
            self.fail()
        items = []
        for v in value:
            try:
                items.append(self.item.coerce(v, text))
            except ValueError as exc:
                detail = str(exc)
                raise ValueError(f"{self.expected}, but item {v!r} is not: "
                                 + (detail if detail != self.item.expected else f"expected {detail}")) from None
        return self.container(items)


class MappingKind(Kind):
    """A mapping of strings to strings (e.g. extra environment variables)."""

    expected = "a mapping of names to strings"
    metavar = "YAML"

    def coerce(self, value: Any, text: bool = False) -> dict[str, str]:
        if text and isinstance(value, str):
            value = _yaml(value) if value.strip() else {}
        if not isinstance(value, Mapping):
            self.fail()
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or isinstance(v, (dict, list)) or v is None:
                self.fail()
            out[k] = v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
        return out


class WorkersKind(Kind):
    expected = "a number of workers >= 1, or 'auto' (one per CPU corral may use)"
    metavar = "N|auto"

    def coerce(self, value: Any, text: bool = False) -> int | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return IntKind(minimum=1).coerce(value, text)
        except ValueError:
            self.fail()


@dataclass(frozen=True)
class BindSpec:
    """One address to listen on: ``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH`` or ``fd:N``.

    ``mode``, ``owner`` and ``group`` apply to unix sockets only.
    """

    address: str
    mode: int | None = None
    owner: str | None = None
    group: str | None = None

    def __str__(self) -> str:
        return self.address


class BindKind(Kind):
    metavar = "ADDR"
    expected = ("an address such as '127.0.0.1:8000', '[::]:8000', 'unix:/run/app.sock' or 'fd:3', "
                "or a mapping {address: 'unix:/run/app.sock', mode: 0o660, owner: www-data, group: www-data}")

    def coerce(self, value: Any, text: bool = False) -> BindSpec:
        if isinstance(value, BindSpec):
            return value
        if isinstance(value, str):
            return BindSpec(self._address(value))
        if isinstance(value, Mapping):
            extra = set(value) - {"address", "mode", "owner", "group"}
            if extra or "address" not in value:
                self.fail()
            mode = value.get("mode")
            if isinstance(mode, str):
                try:
                    mode = int(mode, 0) if mode.lower().startswith("0o") else int(mode, 8)
                except ValueError:
                    self.fail()
            if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777):
                self.fail()
            for key in ("owner", "group"):
                if value.get(key) is not None and not isinstance(value[key], (str, int)):
                    self.fail()
            address = self._address(value["address"])
            if not address.startswith("unix:") and (mode is not None or value.get("owner") or value.get("group")):
                raise ValueError("mode/owner/group only for unix: addresses")
            return BindSpec(address, mode,
                            None if value.get("owner") is None else str(value["owner"]),
                            None if value.get("group") is None else str(value["group"]))
        self.fail()

    def _address(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail()
        address = value.strip()
        from corral.addresses import parse_address

        try:
            parse_address(address)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return address


class HealthCheckKind(Kind):
    """``{path: /healthz, expect_status: 200, timeout: 10, host: localhost}``; only ``path`` is required."""

    expected = ("a mapping {path: '/healthz', expect_status: 200, timeout: 10} (path required; "
                "expect_status defaults to 200, timeout to 10s, host to 'localhost'), or null")
    FIELDS = ("path", "expect_status", "timeout", "host")
    metavar = "YAML"

    def coerce(self, value: Any, text: bool = False) -> dict[str, Any] | None:
        if text and isinstance(value, str):
            value = _yaml(value) if value.strip() else None
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.fail()
        unknown = sorted(set(value) - set(self.FIELDS))
        if unknown:
            raise ValueError(f"{self.expected}; unknown field {unknown[0]!r}{_suggest(str(unknown[0]), self.FIELDS)}")
        path = value.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"{self.expected}; path must start with '/'")
        try:
            status = IntKind(minimum=100).coerce(value.get("expect_status", 200))
            if status > 599:
                raise ValueError
        except ValueError:
            raise ValueError(f"{self.expected}; expect_status must be an HTTP status (100-599)") from None
        try:
            timeout = DurationKind().coerce(value.get("timeout", 10.0))
        except ValueError:
            raise ValueError(f"{self.expected}; timeout must be {DurationKind.expected}") from None
        if timeout <= 0:
            raise ValueError(f"{self.expected}; timeout must be greater than 0")
        host = value.get("host", "localhost")
        if not isinstance(host, str) or not host or any(c in host for c in "\r\n "):
            raise ValueError(f"{self.expected}; host must be a host name for the Host header")
        return {"path": path, "expect_status": status, "timeout": timeout, "host": host}


class WarmupKind(Kind):
    """The warm-up request each new worker sends itself before it says ready (``corral.worker.probe``).

    ``{path: /, host: null, max_status: 499, timeout: 30}``, every field optional;
    ``false`` (or ``null``, ``off``) switches it off.
    """

    expected = ("a mapping {path: '/', host: null, max_status: 499, timeout: 30} (every field optional; "
                "host null: one the app accepts, from Django's ALLOWED_HOSTS, else 'localhost'), "
                "or false to switch the warm-up off")
    FIELDS = ("path", "host", "max_status", "timeout")
    metavar = "YAML|false"
    DEFAULT: typing.ClassVar[dict[str, Any]] = {"path": "/", "host": None, "max_status": 499, "timeout": 30.0}

    def coerce(self, value: Any, text: bool = False) -> dict[str, Any] | None:
        if text and isinstance(value, str):
            value = _yaml(value) if value.strip() else None
        if value is None or value is False:
            return None
        if value is True:
            return dict(self.DEFAULT)
        if not isinstance(value, Mapping):
            self.fail()
        unknown = sorted(set(value) - set(self.FIELDS))
        if unknown:
            raise ValueError(f"{self.expected}; unknown field {unknown[0]!r}{_suggest(str(unknown[0]), self.FIELDS)}")
        path = value.get("path", self.DEFAULT["path"])
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "\r\n \t"):
            raise ValueError(f"{self.expected}; path must start with '/' and hold no spaces")
        host = value.get("host")
        if host is not None and (not isinstance(host, str) or not host or any(c in host for c in "\r\n \t/")):
            raise ValueError(f"{self.expected}; host must be a host name (optionally :port) for the Host header")
        try:
            status = IntKind(minimum=100).coerce(value.get("max_status", self.DEFAULT["max_status"]))
            if status > 599:
                raise ValueError
        except ValueError:
            raise ValueError(f"{self.expected}; max_status must be an HTTP status (100-599): every status up "
                             "to it passes") from None
        try:
            timeout = DurationKind().coerce(value.get("timeout", self.DEFAULT["timeout"]))
        except ValueError:
            raise ValueError(f"{self.expected}; timeout must be {DurationKind.expected}") from None
        if timeout <= 0:
            raise ValueError(f"{self.expected}; timeout must be greater than 0 (to switch the warm-up off: "
                             "warmup: false)")
        return {"path": path, "host": host, "max_status": status, "timeout": timeout}


def _plural(expected: str) -> str:
    for article in ("an ", "a "):
        if expected.startswith(article):
            return expected[len(article):] + "s" if " " not in expected[len(article):] else expected[len(article):]
    return expected


def kind_from_annotation(annotation: Any) -> Kind:
    """Build a Kind from a dataclass field annotation (for the engine's settings)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return AnyKind()
    if annotation is bool:
        return BoolKind()
    if annotation is int:
        return IntKind()
    if annotation is float:
        return FloatKind()
    if annotation is str:
        return StrKind()
    if origin is typing.Literal:
        return ChoiceKind(*args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        kind = kind_from_annotation(inner[0]) if len(inner) == 1 else UnionKind(*map(kind_from_annotation, inner))
        return OptionalKind(kind) if type(None) in args else kind
    if origin in (tuple, list, set, frozenset):
        item = args[0] if args else Any
        return SequenceKind(kind_from_annotation(item), container=origin)
    if origin in (dict, Mapping) or annotation is dict:
        return MappingKind()
    if isinstance(annotation, type):
        return _InstanceKind(annotation)
    return AnyKind()


class _InstanceKind(Kind):
    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.expected = f"a {cls.__name__}"

    def coerce(self, value: Any, text: bool = False) -> Any:
        if isinstance(value, self.cls):
            return value
        self.fail()


# --------------------------------------------------------------------------- the key table


class Group(enum.Enum):
    """The sections of conf/corral.yaml: docs/configuration.md and `corral run --help` follow them."""

    APP = "the app"
    SOCKETS = "sockets"
    WORKERS = "workers"
    RELOAD = "reload (deploys)"
    POLICIES = "health policies"
    SUPERVISOR = "the supervisor"
    FLEET = "load balancers and probes"
    ENGINE = "the HTTP engine"
    DEVELOPMENT = "development (corral run --reload)"

    @property
    def preamble(self) -> str:
        """What the section says before its keys (conf/corral.yaml, docs/configuration.md)."""
        return _GROUP_PREAMBLES.get(self, "")


_GROUP_PREAMBLES = {
    Group.RELOAD: "`systemctl reload` / `corral reload` / SIGHUP start a new generation of workers (fresh "
                  "interpreters: new code); the old generation drains only once every new worker is ready, and "
                  "keeps serving if one is not (the reload then fails).",
    Group.POLICIES: "A policy that trips recycles the worker: its replacement boots first, then it drains; at "
                    "most one recycle runs at a time. Each reason is logged.",
    Group.FLEET: "What a load balancer or an orchestrator is told about this host: /livez and /readyz on the "
                 "metrics (or health) listener, HAProxy's agent-check on the agent listener, all answered by the "
                 "supervisor, never by the app (docs/fleet-probes.md).",
    Group.ENGINE: "Limits and options of the HTTP/1.1 engine in every worker (corral.engine.settings).",
    Group.DEVELOPMENT: "For development only: with reload on, a saved file reloads the app as `systemctl reload` "
                       "does (docs/dev-reload.md). Needs watchfiles: pip install 'corral[dev]'.",
}


@dataclass(frozen=True)
class KeySpec:
    """One config key: how its value is checked, its default, what it means, where it is shown.

    Every key is also a command-line flag, spelt from its name (``max_requests`` ->
    ``--max-requests``); ``short`` is a short spelling beside it (``-w``), and a
    ``positional`` key is the command line's bare argument instead (``APP``).
    ``group`` is its section in conf/corral.yaml and in ``corral run --help``. ``doc`` is one
    line (``--help``); ``details`` the rest of what docs/configuration.md and conf/corral.yaml say.
    """

    name: str
    kind: Kind
    default: Any
    doc: str
    group: Group
    short: str | None = None
    positional: bool = False
    metavar: str | None = None  # the flag's value in --help, when the kind's own says too little
    # What the config reference and conf/corral.yaml say after ``doc`` (``doc`` alone is --help's
    # one line): sentences that follow it; a blank line starts a paragraph, and a paragraph whose
    # lines are indented is kept as written (a list, an example). corral.keydoc renders it.
    details: str = ""
    # Other spellings of the flag, as other servers spell it (gunicorn's ``--proc-name`` for
    # ``--name``, uvicorn's ``--timeout-keep-alive`` for ``--keepalive-timeout``): same key, same
    # value, declared here so that the key table stays the one source (docs/coming-from.md).
    aliases: tuple[str, ...] = ()

    @property
    def value_name(self) -> str:
        return self.metavar or self.kind.metavar

    @property
    def flag(self) -> str:
        """The key on the command line: ``--max-requests``, or ``APP`` for the positional key."""
        return self.name.upper() if self.positional else "--" + self.name.replace("_", "-")

    @property
    def spelling(self) -> str:
        """How the command line spells the key in messages: ``-w/--workers`` (aliases left out)."""
        return f"{self.short}/{self.flag}" if self.short else self.flag

    @property
    def flags(self) -> list[str]:
        """The option strings of the key's flag: the short one, the flag, then the aliases."""
        return [*([self.short] if self.short else []), self.flag, *self.aliases]


_SPEC = "corral.config.key"  # the metadata entry that makes a Config field a config key


def _key(kind: Kind, default: Any, group: Group, doc: str, *, short: str | None = None,
         positional: bool = False, metavar: str | None = None, details: str = "",
         aliases: tuple[str, ...] = ()) -> dict[str, KeySpec]:
    """The metadata of a Config field that is a config key of the same name."""
    return {_SPEC: KeySpec("", kind, default, doc, group, short, positional, metavar, details, aliases)}


_BIND_LIST = "a list of addresses (e.g. ['127.0.0.1:8000', 'unix:/run/app.sock'])"
_METRICS_LIST = "a list of addresses (e.g. ['127.0.0.1:9100'])"


@dataclass(frozen=True)
class Config:
    """The resolved configuration, and the table of the supervisor's config keys.

    A field declared with ``_key(...)`` is a config key of the same name: its kind, default,
    meaning and command-line flag are declared once, here, and ``SUPERVISOR_KEYS``, the
    environment variables, the CLI flags and ``from_json`` all derive from it. A few keys are
    resolved on load, so the field holds more than the key's kind: ``app_dir`` (absolute),
    ``name`` and ``control_socket`` (their defaults filled in), ``workers`` (``auto`` counted),
    ``python`` (from ``virtualenv``, or found on PATH).

    Engine keys live in ``engine`` (only those set explicitly); ``source`` is the config
    file, ``explicit`` the keys set anywhere, ``overrides`` the command line's values as given
    (so that ``load_again`` loads the config as it was loaded).
    """

    app: str | None = field(metadata=_key(
        AppKind(), None, Group.APP,
        "the app: MODULE:ATTR, or MODULE:FUNC() for a factory (the command line's APP wins)", positional=True,
        metavar="MODULE:ATTR"))
    interface: str = field(metadata=_key(ChoiceKind("auto", "asgi", "wsgi"), "auto", Group.APP, "how to call the app",
        details=(
            "auto: detected from the app's signature (docs/wsgi.md says how), asgi or wsgi; set asgi or "
            "wsgi when the guess is wrong.")))
    app_dir: str = field(metadata=_key(
        OptionalKind(StrKind()), None, Group.APP,
        "directory put first on the app's sys.path and used as its working directory (null: corral's cwd)",
        metavar="DIR", aliases=("--chdir",),
        details=(
            "null: the directory corral was started from (systemd: WorkingDirectory=, else /). It must "
            "exist when corral starts: else `corral run` exits 1 naming it (`corral check` says the "
            "same).")))
    name: str = field(metadata=_key(
        OptionalKind(StrKind()), None, Group.SUPERVISOR,
        "instance name, used in the control socket path (null: the config file's stem, else the "
        "app directory's name: two apps on one machine get two names)", short="-n", metavar="NAME",
        aliases=("--proc-name",),
        details=(
            "Letters, digits, '_', '.', '@' and '-'. null: the config file's name without .yaml "
            "(/etc/corral/blog.yaml -> blog); with no config file, the app directory's name (~/src/blog "
            "-> blog). A second corral with a name in use is refused before it binds anything.")))
    bind: tuple[BindSpec, ...] = field(metadata=_key(
        SequenceKind(BindKind(), container=tuple, expected=_BIND_LIST), (BindSpec(DEFAULT_BIND),), Group.SOCKETS,
        "addresses to listen on when systemd passes no sockets: HOST:PORT, [V6]:PORT, unix:PATH, fd:N",
        short="-b",
        details=(
            "With socket activation the socket unit's ListenStream= lines are used and bind is ignored.\n"
            "\n"
            "  127.0.0.1:8000   0.0.0.0:8000   [::]:8000 (IPv6 only; list 0.0.0.0 too)\n"
            "  unix:/run/app.sock   fd:3 (an inherited listening fd)\n"
            "\n"
            "A unix socket may be a mapping: {address: unix:/run/app.sock, mode: 0660, owner: corral, "
            "group: www-data}. Ports below 1024 need root or CAP_NET_BIND_SERVICE: use a socket unit "
            "instead. An address listed twice is refused.")))
    metrics_bind: tuple[BindSpec, ...] = field(metadata=_key(
        SequenceKind(BindKind(), container=tuple, expected=_METRICS_LIST), (), Group.SOCKETS,
        "addresses for the Prometheus /metrics endpoint when systemd passes no 'metrics' socket",
        details=(
            "GET /metrics is served by the supervisor from the workers' heartbeats. Under systemd the "
            "socket is a ListenStream= in a socket unit with FileDescriptorName=metrics "
            "(docs/monitoring.md). []: off. It needs an address of its own: one that overlaps a bind "
            "address is a config error.")))
    health_bind: tuple[BindSpec, ...] = field(metadata=_key(
        SequenceKind(BindKind(), container=tuple, expected=_METRICS_LIST), (), Group.FLEET,
        "addresses for a listener that serves only /livez and /readyz, when systemd passes no 'health' socket",
        details=(
            "The probes are also served on the metrics listener (metrics_bind); a health listener of its "
            "own lets a load balancer or kubelet reach them without reaching /metrics. Under systemd: a "
            "ListenStream= with FileDescriptorName=health. []: off. It needs an address of its own.")))
    agent_bind: tuple[BindSpec, ...] = field(metadata=_key(
        SequenceKind(BindKind(), container=tuple, expected=_METRICS_LIST), (), Group.FLEET,
        "addresses for the HAProxy agent-check listener, when systemd passes no 'agent' socket",
        details=(
            "Each connection gets one line and is closed: 'up ready N%' (the weight follows free worker "
            "slots and connections), 'drain' (starting, draining for a stop, a reload that leaves no "
            "capacity) or 'down #no ready worker'. Use it with HAProxy's agent-check agent-port. Under "
            "systemd: a ListenStream= with FileDescriptorName=agent. []: off.")))
    drain_delay: float = field(metadata=_key(
        DurationKind(), 0.0, Group.FLEET,
        "on a graceful stop (systemctl stop/restart) or before an in-place self-upgrade, report not-ready "
        "(/readyz 503, agent drain) for this long while still serving, then drain and stop",
        details=(
            "During the delay every request is still answered, and keep-alive responses carry "
            "Connection: close, so clients move to other hosts. Choose at least twice the load balancer's "
            "check interval (HAProxy: inter), so that it sees the host leave before it stops. "
            "EXTEND_TIMEOUT_USEC keeps systemd from killing corral during the delay; keep TimeoutStopSec= "
            "above drain_delay + graceful_timeout. 0: stop at once (a laptop).")))
    backlog: int = field(metadata=_key(IntKind(minimum=1), 2048, Group.SOCKETS,
                                       "listen() backlog of sockets corral binds itself",
        details=(
            "A socket unit sets its own (Backlog=).")))
    reuse_port: bool = field(metadata=_key(
        BoolKind(), False, Group.SOCKETS, "bind one SO_REUSEPORT socket per worker slot instead of one shared socket",
        details=(
            "The kernel spreads connections by hash, and a slot's queue waits for its worker. With "
            "systemd, repeat the same ListenStream= once per worker with ReusePort=yes. Removing a "
            "worker (TTOU) closes its sockets: connections queued there are reset unless "
            "net.ipv4.tcp_migrate_req=1.")))
    workers: int = field(metadata=_key(WorkersKind(), "auto", Group.WORKERS,
                                       "number of worker processes, or 'auto' (one per CPU)", short="-w",
        details=(
            "auto: one per CPU corral may run on (its affinity mask).")))
    worker_start: str = field(metadata=_key(ChoiceKind("exec", "zygote"), "exec", Group.WORKERS,
                                            "how a worker process is made: a fresh interpreter, or a fork of "
                                            "the generation's zygote",
        details=(
            "exec: every worker is a fresh interpreter (fork+exec) that imports the runtime and the app.\n"
            "zygote: each generation has one fresh interpreter (the zygote) that imports the runtime (and, "
            "with preload, the app) once; workers are forked from it, so they share its memory and a "
            "replacement starts in milliseconds. A reload builds a new zygote from the new code "
            "(docs/zygote.md).")))
    preload: bool = field(metadata=_key(BoolKind(), False, Group.WORKERS,
                                        "with worker_start: zygote, import the app in the zygote before forking",
        details=(
            "Workers then share the app's memory and start at once, but the app must start no thread, "
            "connection or open file at import (docs/zygote.md); a zygote that has started threads "
            "refuses to preload and says why. Ignored with worker_start: exec.")))
    preload_warmup: bool = field(metadata=_key(
        BoolKind(), False, Group.WORKERS,
        "with preload, send the warm-up request (warmup:) in the zygote too, before any worker is "
        "forked, so that what the app loads on its first request is shared by every worker",
        details=(
            "Django imports its URLconf, views and templates on the first request, not at import: done "
            "in the zygote, the workers share them instead of each loading its own copy; point "
            "warmup.path at a page that loads what most pages use (docs/zygote.md). It is sent 10 times "
            "while it answers 2xx or 3xx (once otherwise), so that Python's in-place specialisation of "
            "the code it runs is shared too. WSGI apps only: an "
            "ASGI request needs an event loop, which the zygote must not hold when it forks. The request "
            "must leave no thread, connection or open file behind (Django closes its database connection "
            "after each request unless CONN_MAX_AGE is set); a zygote whose warm-up does refuses to "
            "start workers and names them. Each worker still sends its own warm-up. Ignored without "
            "preload, or with warmup: false.")))
    standby: bool = field(metadata=_key(BoolKind(), False, Group.WORKERS,
                                        "keep one extra worker booted (app imported, warm-up passed) but not "
                                        "serving, to take over a slot the moment one is lost or recycled",
        details=(
            "A crashed, hung or recycled worker is then replaced in milliseconds even when the app takes "
            "seconds to import (without preload, or with worker_start: exec), at the cost of one more "
            "worker's memory. The standby takes no traffic until it is given a slot; then a new standby "
            "boots behind it. Only the serving generation keeps one (docs/zygote.md).")))
    python: str = field(metadata=_key(OptionalKind(StrKind()), None, Group.APP,
                                      "the app's Python interpreter (null: corral's own)", metavar="PYTHON",
        details=(
            "Give `virtualenv` (its bin/python is used) or `python`, not both; a name without a '/' is "
            "looked up on PATH.\n"
            "\n"
            "The rule for sys.path in a worker started with the app's interpreter:\n"
            "\n"
            "  1. corral itself is always the supervisor's copy (loaded by path, so the\n"
            "     supervisor and its workers speak the same protocol);\n"
            "  2. the app's interpreter keeps its own sys.path first (PYTHONPATH, its\n"
            "     virtualenv's site-packages), so the app's packages and versions win;\n"
            "  3. the directories holding corral's worker dependencies (uvloop, httptools)\n"
            "     in corral's environment are appended last, for what the app lacks.\n"
            "\n"
            "Compiled modules must match the interpreter: when the app's Python is not the same version "
            "as corral's, install uvloop>=0.23 and httptools into the app's virtualenv (`corral check` "
            "says so).")))
    virtualenv: str | None = field(metadata=_key(
        OptionalKind(StrKind()), None, Group.APP, "the app's virtualenv (uses VIRTUALENV/bin/python)", metavar="DIR",
        details=(
            "Give `virtualenv` or `python`, not both; the rule for sys.path is under `python`.")))
    environment: dict[str, str] = field(metadata=_key(
        MappingKind(), {}, Group.APP, "extra environment variables for the workers",
        details=(
            "The app sees them.")))
    timeout: float = field(metadata=_key(
        DurationKind(), 30.0, Group.WORKERS,
        "a worker whose event loop sends no heartbeat for this long is hung: traceback logged, killed, replaced "
        "(gunicorn's -t/--timeout; a per-request deadline is --request-timeout)", aliases=("-t",),
        details=(
            "Workers send a heartbeat once a second.")))
    boot_timeout: float = field(metadata=_key(
        DurationKind(), 60.0, Group.WORKERS, "a worker must import the app and finish lifespan startup within this",
        details=(
            "The warm-up request runs within it too.")))
    graceful_timeout: float = field(metadata=_key(
        DurationKind(), 30.0, Group.WORKERS, "how long in-flight requests may take to finish on stop or recycle",
        aliases=("--timeout-graceful-shutdown",),
        details=(
            "On stop, recycle or reload: in-flight requests still running then are cut. Keep systemd's "
            "TimeoutStopSec= above it.")))
    drain_linger: float = field(metadata=_key(
        DurationKind(), 1.0, Group.WORKERS,
        "on a graceful stop, keep idle keep-alive connections open this long (answering their next "
        "request with Connection: close) before closing them; 0: close them at once",
        details=(
            "A client about to reuse its connection then gets an answer, not a reset.")))
    reload_strategy: str = field(metadata=_key(
        ChoiceKind("surge", "rolling"), "surge", Group.RELOAD,
        "surge: a reload starts every new worker at once; rolling: reload_batch at a time",
        details=(
            "surge needs memory for two generations for a moment; rolling spreads the boots out, and a "
            "broken deploy is caught after the first batch.")))
    reload_batch: int = field(metadata=_key(IntKind(minimum=1), 1, Group.RELOAD,
                                            "workers replaced at a time by a rolling reload"))
    reload_timeout: float = field(metadata=_key(
        DurationKind(), 60.0, Group.RELOAD,
        "a reload's new workers (each batch, when rolling) must be ready within this, or it rolls back",
        details=(
            "Otherwise the reload rolls back. Keep systemd's TimeoutStartSec= above it.")))
    health_check: dict[str, Any] | None = field(metadata=_key(
        HealthCheckKind(), None, Group.RELOAD,
        "a request each new worker must answer through the app before it counts as ready",
        details=(
            "It is asked over a connection only the worker can reach (a socket pair), at start-up, on "
            "reloads and recycles, and retried until it gets expect_status or timeout passes; host: the "
            "Host header. e.g. "
            "health_check: {path: /healthz, expect_status: 200, timeout: 10}")))
    warmup: dict[str, Any] | None = field(metadata=_key(
        WarmupKind(), dict(WarmupKind.DEFAULT), Group.RELOAD,
        "a request each new worker sends its app before it counts as ready, so lazy imports (Django's "
        "URLconf, views) run: a reload whose new code answers above max_status is refused; false: off",
        details=(
            "It is asked the same way, before the health check. Any status up to max_status "
            "passes (a 404 or a redirect still proves the code loaded); 503 is asked again until "
            "timeout; a redirect to the https URL of the same path is asked again with "
            "X-Forwarded-Proto: https. A reload whose new workers fail it is refused and the old code "
            "serves on. At the first start (and for restarts and recycles) a failure is only a warning: "
            "there is nothing older to serve with. host null: the first entry of Django's ALLOWED_HOSTS "
            "when the app is a Django project, else localhost. The request is not counted in the "
            "metrics. false: no warm-up.")))
    reload_rollback: str = field(metadata=_key(
        ChoiceKind("full", "partial"), "full", Group.RELOAD,
        "rolling: full keeps replaced old workers parked until the last batch is ready, so a failure "
        "brings the old code back on every slot; partial lets them exit (less memory, no way back)",
        details=(
            "What a rolling reload that fails after its first batch can undo:\n"
            "\n"
            "  - full: each old worker a batch replaces is parked (it takes no new connections\n"
            "    but keeps the old code loaded) until the last batch is ready; a failure at\n"
            "    any batch brings the old code back on every slot. Costs the memory of the\n"
            "    whole old generation until the end of the reload, as surge does.\n"
            "  - partial: replaced old workers exit at once, so at most reload_batch extra\n"
            "    workers run (for hosts without the memory for two generations); a failure\n"
            "    after the first batch leaves the replaced slots on the new code (the old\n"
            "    code is gone from disk), and the reload reports the mixed state.")))
    max_memory: int = field(metadata=_key(SizeKind(), 0, Group.POLICIES,
                                          "recycle a worker whose memory stays above this (0: off)",
        details=(
            "Measured as memory_metric says: USS (memory only this worker uses: shared pages do not "
            "count), PSS or RSS, over policy_breaches consecutive samples.")))
    memory_metric: str = field(metadata=_key(ChoiceKind("uss", "pss", "rss"), "uss", Group.POLICIES,
                                             "which memory figure max_memory applies to",
        details=(
            "uss: memory only this worker uses (shared pages do not count); pss: that plus its "
            "share of the pages it shares (with a zygote and its siblings, or other processes); "
            "rss: its resident set, shared pages counted in full (with worker_start: zygote "
            "that counts what the zygote holds for every worker).")))
    max_fds: int = field(metadata=_key(IntKind(minimum=0), 0, Group.POLICIES,
                                       "recycle a worker with more open fds than this (0: off)",
        details=(
            "Over policy_breaches consecutive samples.")))
    max_requests: int = field(metadata=_key(IntKind(minimum=0), 0, Group.POLICIES,
                                            "recycle a worker after this many requests (0: off)",
        aliases=("--limit-max-requests",),
        details=(
            "Plus a random 0..max_requests_jitter per worker, so that they do not all recycle at once.")))
    max_requests_jitter: int = field(metadata=_key(IntKind(minimum=0), 0, Group.POLICIES,
                                                   "random 0..N added to max_requests per worker",
        aliases=("--limit-max-requests-jitter",),
        details=(
            "So that the workers do not all recycle at once.")))
    max_lifetime: float = field(metadata=_key(DurationKind(), 0.0, Group.POLICIES,
                                              "recycle a worker older than this (0: off)",
        details=(
            "Plus a random 0..max_lifetime_jitter per worker.")))
    max_lifetime_jitter: float = field(metadata=_key(DurationKind(), 0.0, Group.POLICIES,
                                                     "random 0..N seconds added to max_lifetime per worker"))
    policy_breaches: int = field(metadata=_key(
        IntKind(minimum=1), 3, Group.POLICIES, "consecutive samples over max_memory / max_fds before a worker is recycled",
        details=(
            "One spike never recycles a worker.")))
    policy_interval: float = field(metadata=_key(DurationKind(), 1.0, Group.POLICIES,
                                                 "how often worker memory and fds are sampled"))
    accept_balance: bool = field(metadata=_key(
        BoolKind(), True, Group.SOCKETS,
        "a worker holding more than its share of connections pauses accepting until the others catch up",
        details=(
            "With one shared socket the kernel otherwise hands most connections to whichever worker woke "
            "last.")))
    control_socket: str = field(metadata=_key(
        OptionalKind(StrKind()), None, Group.SUPERVISOR,
        "path of the control socket `corral status` and `corral reload` use (null: in the runtime directory)",
        metavar="PATH",
        details=(
            "Mode 0600, claimed with an flock on <path>.lock while corral runs. null: "
            "$RUNTIME_DIRECTORY/control.sock (systemd's RuntimeDirectory=), else "
            "/run/corral/<name>/control.sock as root, else $XDG_RUNTIME_DIR/corral/<name>/control.sock, "
            "else /tmp/corral-<uid>/<name>/control.sock (made mode 0700 by corral; refused if another "
            "user made it). At most 107 bytes (the unix socket path limit).")))
    log_level: str = field(metadata=_key(ChoiceKind("debug", "info", "warning", "error", "critical"), "info",
                                         Group.SUPERVISOR, "log level",
                                         details="debug, info, warning, error or critical."))
    log_config: str | None = field(metadata=_key(
        OptionalKind(StrKind()), None, Group.SUPERVISOR,
        "a logging.dictConfig file, YAML or JSON, applied after corral's own log setup in the supervisor "
        "and every worker (uvicorn's --log-config)", metavar="FILE", aliases=("--log-config-json",),
        details=(
            "Read when corral starts, and again by each new worker: a file that is missing, is not YAML or "
            "JSON, or is not a dictConfig mapping (version: 1) is a config error naming it. Unlike plain "
            "dictConfig, disable_existing_loggers defaults to false, so corral's own messages go on.")))
    reload: bool = field(metadata=_key(
        BoolKind(), False, Group.DEVELOPMENT,
        "development: reload the app when a watched file changes (uvicorn's --reload), keeping the last good "
        "code serving when the new code does not import",
        details=(
            "A change runs the same transaction as `systemctl reload`: the socket stays open, requests in "
            "flight finish, and new code that fails to import (a syntax error) is reported once while the "
            "old code serves on. workers: auto means 1 with reload on. Needs watchfiles: "
            "pip install 'corral[dev]'.")))
    # Lists, not tuples: the config goes through JSON (to each worker, through a re-exec) and comes back equal.
    reload_dirs: list[str] = field(metadata=_key(
        SequenceKind(StrKind(), container=list), [], Group.DEVELOPMENT,
        "directories watched with reload on ([]: app_dir)", metavar="DIR", aliases=("--reload-dir",),
        details=(
            "Relative paths are taken from app_dir. Watched recursively; __pycache__, .git, .venv, "
            "node_modules and the like are skipped.")))
    reload_includes: list[str] = field(metadata=_key(
        SequenceKind(StrKind(), container=list), [], Group.DEVELOPMENT,
        "glob patterns of the files whose change reloads, besides *.py", metavar="GLOB",
        aliases=("--reload-include",),
        details=(
            "Matched against the path from the right, as uvicorn does: '*.html', 'templates/*.txt'.")))
    reload_excludes: list[str] = field(metadata=_key(
        SequenceKind(StrKind(), container=list), [], Group.DEVELOPMENT,
        "glob patterns (or directories) whose changes never reload, besides .*, *.py[cod], .sw.* and ~*",
        metavar="GLOB", aliases=("--reload-exclude",),
        details=(
            "A pattern that names an existing directory (relative to app_dir) excludes everything under "
            "it. Excluding '*.py' leaves only reload_includes watched.")))
    engine: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    explicit: frozenset[str] = frozenset()
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data, as sent to each worker (``from_json`` reads it back)."""
        out = dataclasses.asdict(self)
        out["bind"] = [dataclasses.asdict(b) for b in self.bind]
        out["metrics_bind"] = [dataclasses.asdict(b) for b in self.metrics_bind]
        out["health_bind"] = [dataclasses.asdict(b) for b in self.health_bind]
        out["agent_bind"] = [dataclasses.asdict(b) for b in self.agent_bind]
        out["explicit"] = sorted(self.explicit)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Config:
        """The Config whose ``to_json()`` gave ``data`` (a worker's hello, a re-exec's state).

        Each value is decoded by its key's kind, so the receiver holds the types the sender
        held (tuples, BindSpec). A key the sender did not know (older code) gets its default.
        """
        values = {name: _decode(spec, data[name]) if name in data else copy.deepcopy(spec.default)
                  for name, spec in SUPERVISOR_KEYS.items()}
        engine_specs = _engine_keys()
        engine = {name: _decode(engine_specs[name], value) if name in engine_specs else value
                  for name, value in (data.get("engine") or {}).items()}
        return cls(**values, engine=engine, source=data.get("source"),
                   explicit=frozenset(data.get("explicit") or ()), overrides=dict(data.get("overrides") or {}))


def _decode(spec: KeySpec, value: Any) -> Any:
    try:
        return spec.kind.coerce(value)
    except ValueError as exc:
        raise ConfigError(f"config key {spec.name!r} (in the config sent as JSON): expected {exc}, "
                          f"got {value!r}") from None


def _supervisor_keys() -> dict[str, KeySpec]:
    return {f.name: dataclasses.replace(f.metadata[_SPEC], name=f.name)
            for f in dataclasses.fields(Config) if _SPEC in f.metadata}


SUPERVISOR_KEYS: dict[str, KeySpec] = _supervisor_keys()


# --------------------------------------------------------------------------- the engine's keys


def _check_engine_values(engine: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    """Build the engine's settings as every worker will, so that a value of the right type
    that makes no sense (``max_connections: 0``) is a config error naming its key, not a
    boot failure of every worker."""
    if not engine:
        return
    try:
        EngineSettings(**engine)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        # The engine's messages start with the field's name ("max_connections must be ...").
        key = next((k for k in sorted(engine, key=len, reverse=True) if message.startswith(k)), None)
        if key is None and len(engine) == 1:
            key = next(iter(engine))
        if key is None:
            raise ConfigError(f"engine settings {', '.join(map(repr, sorted(engine)))}: {message}") from None
        raise ConfigError(f"config key {key!r} ({origin.get(key)}): {message}") from None


@functools.cache
def _engine_keys() -> dict[str, KeySpec]:
    hints = typing.get_type_hints(EngineSettings)
    keys: dict[str, KeySpec] = {}
    for f in dataclasses.fields(EngineSettings):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        keys[f.name] = KeySpec(f.name, kind_from_annotation(hints.get(f.name, Any)), default,
                               str(f.metadata.get("doc", "")), Group.ENGINE,
                               details=str(f.metadata.get("details", "")),
                               aliases=ENGINE_ALIASES.get(f.name, ()))
    return keys


# The engine keys' other spellings (KeySpec.aliases), as gunicorn and uvicorn spell them: here,
# beside the table they join, since the engine's settings know nothing of command lines.
ENGINE_ALIASES: dict[str, tuple[str, ...]] = {
    "keepalive_timeout": ("--timeout-keep-alive", "--keep-alive"),  # uvicorn, gunicorn
    "max_connections": ("--worker-connections",),  # gunicorn (per worker, as corral's)
    "max_request_line": ("--limit-request-line",),  # gunicorn
    "max_header_count": ("--limit-request-fields",),  # gunicorn
    "ws_max_message_size": ("--ws-max-size", "--websocket-max-message-size"),  # uvicorn, gunicorn
    "lifespan": ("--asgi-lifespan",),  # gunicorn (auto, on, off, as corral's)
    "ssl_certfile": ("--certfile",),  # gunicorn
    "ssl_keyfile": ("--keyfile",),  # gunicorn
    "ssl_ca_certs": ("--ca-certs",),  # gunicorn
    "ssl_ciphers": ("--ciphers",),  # gunicorn
}


def engine_keys() -> dict[str, KeySpec]:
    """One KeySpec per EngineSettings field, typed from its annotation."""
    return dict(_engine_keys())


def all_keys() -> dict[str, KeySpec]:
    """Every valid config key; a name in both families is validated as the supervisor's."""
    keys = engine_keys()
    keys.update(SUPERVISOR_KEYS)
    return keys


# --------------------------------------------------------------------------- loading


@dataclass
class _Raw:
    """Values gathered so far, with where each came from (for error messages)."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


def _suggest(name: str, valid: Iterable[str]) -> str:
    import difflib  # only for an error: the supervisor, which imports this module, never loads it

    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else "; see conf/corral.yaml for every key"


def _set(raw: _Raw, keys: Mapping[str, KeySpec], name: str, value: Any, origin: str, text: bool) -> None:
    spec = keys.get(name)
    if spec is None:
        raise ConfigError(f"unknown config key {name!r} ({origin}){_suggest(name, keys)}")
    try:
        raw.values[name] = spec.kind.coerce(value, text)
    except ValueError as exc:
        raise ConfigError(f"config key {name!r} ({origin}): expected {exc}, got {value!r}") from None
    raw.origin[name] = origin


GUNICORN_CONFIG_HINT = ("corral reads YAML: write the settings as keys of a .yaml file (bind:, workers:, "
                        "timeout: ...) or pass them as flags; docs/coming-from.md maps each gunicorn setting "
                        "to corral's")


# Paths are strings and os.path here, not pathlib: this module is loaded by the supervisor, and
# pathlib brings urllib.parse and ipaddress with it (about 0.6 MiB of the supervisor's memory).
def _suffix(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.fspath(path))[1]


def _read_text(path: str | os.PathLike[str]) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse one YAML config file into a mapping; errors name the file and line."""
    if _suffix(path) == ".py":
        # `corral run -c gunicorn.conf.py`: said plainly, not as "not a mapping" from YAML.
        raise ConfigError(f"config file {os.fspath(path)!r} is a gunicorn config file (Python); "
                          f"{GUNICORN_CONFIG_HINT}")
    try:
        text = _read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror}") from None
    import yaml  # here, not at the top: see _yaml()

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {os.fspath(path)!r} must be a mapping of keys to values, "
                          f"not a {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"config file {os.fspath(path)!r}: key {key!r} is not a string")
    return data


def read_log_config(path: str) -> dict[str, Any]:
    """The ``logging.dictConfig`` mapping in ``path`` (``log_config``): JSON for a .json file,
    else YAML (of which JSON is a subset). Raises ConfigError naming the file and the problem."""
    if _suffix(path) in (".ini", ".conf", ".cfg"):
        # gunicorn's --log-config takes a fileConfig file: say so rather than fail to parse it as YAML.
        raise ConfigError(f"log_config file {path!r} looks like an ini-style logging.fileConfig file "
                          "(gunicorn's --log-config); corral takes a logging.dictConfig mapping in YAML or "
                          "JSON (gunicorn's --log-config-json)")
    try:
        text = _read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"log_config file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read log_config file {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if _suffix(path) == ".json":
        import json

        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"log_config file {path!r} is not valid JSON: {exc}") from None
    else:
        try:
            import yaml  # here, not at the top: see _yaml()
        except ImportError:
            raise ConfigError(f"log_config file {path!r}: reading YAML needs PyYAML, which {sys.executable} "
                              "lacks; install it there, or give the same mapping as a .json file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"log_config file {path!r} is neither YAML nor JSON: {exc}; corral takes a "
                              "logging.dictConfig mapping (an ini-style fileConfig is not supported)") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ConfigError(f"log_config file {path!r} is not a logging.dictConfig mapping: it needs 'version: 1' "
                          "at the top, beside handlers:, formatters:, loggers: "
                          "(https://docs.python.org/3/library/logging.config.html#dictionary-schema-details)")
    data.setdefault("disable_existing_loggers", False)  # else corral's own loggers fall silent
    return data


def apply_log_config(path: str | None) -> None:
    """Apply the ``log_config`` file, after ``corral.logs.setup_logging``: the supervisor and
    each worker call it. A config that dictConfig refuses is a ConfigError naming the file."""
    if not path:
        return
    import logging.config

    try:
        logging.config.dictConfig(read_log_config(path))
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        raise ConfigError(f"log_config file {path!r}: logging.dictConfig refused it: {exc}") from None


def load(path: str | os.PathLike[str] | None = None,
         overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Resolve the configuration: defaults < file < CORRAL_* environment < overrides.

    ``overrides`` are the command line's values by key (strings as typed, lists of them for a
    repeated flag, booleans; or already typed), checked by each key's kind as the file's are.
    """
    keys = all_keys()
    raw = _Raw()
    environ = os.environ if environ is None else environ
    if path is not None:
        for name, value in read_file(path).items():
            _set(raw, keys, name, value, f"in {os.fspath(path)}", text=False)
    for env_name, value in sorted(environ.items()):
        if not env_name.startswith(ENV_PREFIX) or env_name == ENV_PREFIX + "CONFIG":
            continue
        name = env_name[len(ENV_PREFIX):].lower()
        if name not in keys:
            env_keys = [ENV_PREFIX + k.upper() for k in keys]
            raise ConfigError(f"unknown environment variable {env_name}"
                              f"{_suggest(env_name, env_keys)} (unset it, or name a config key)")
        _set(raw, keys, name, value, f"from environment variable {env_name}", text=True)
    given = {name: value for name, value in (overrides or {}).items() if value is not None}
    for name, value in given.items():
        spelling = f", {keys[name].spelling}" if name in keys else ""
        _set(raw, keys, name, value, f"from the command line{spelling}", text=isinstance(value, str))
    return _resolve(raw, path, given)


def load_again(data: Mapping[str, Any]) -> Config:
    """Load the configuration as the one whose ``to_json()`` is ``data`` was loaded: the same
    file and command-line values, with the environment of now. A re-exec's preflight runs it
    with the new code, to learn whether that code accepts the running service's config."""
    return load(data.get("source"), data.get("overrides") or {})


def _resolve(raw: _Raw, path: str | os.PathLike[str] | None, overrides: Mapping[str, Any]) -> Config:
    values = {name: copy.deepcopy(spec.default) for name, spec in SUPERVISOR_KEYS.items()}
    values.update({k: v for k, v in raw.values.items() if k in SUPERVISOR_KEYS})
    engine = {k: v for k, v in raw.values.items() if k not in SUPERVISOR_KEYS}

    if values["python"] and values["virtualenv"]:
        raise ConfigError("set either 'python' or 'virtualenv', not both "
                          f"({raw.origin['python']}, {raw.origin['virtualenv']})")
    values["python"] = _python(values, raw)
    values["app_dir"] = os.path.abspath(values["app_dir"] or os.getcwd())
    values["name"] = _name(values["name"] or default_name(path, values["app_dir"]), raw.origin.get("name"))
    values["control_socket"] = values["control_socket"] or default_control_socket(values["name"])
    _check_control_socket(values["control_socket"], raw.origin.get("control_socket"))
    if values["workers"] == "auto":
        # --reload is for development: one worker boots fastest and prints a broken import once.
        values["workers"] = 1 if values["reload"] else cpu_count()
    for key in ("timeout", "boot_timeout", "policy_interval", "reload_timeout"):
        if values[key] <= 0:
            raise ConfigError(f"config key {key!r} ({raw.origin.get(key)}): must be greater than 0")
    # The default bind is only a fallback (a socket unit's sockets replace it): bind_all()
    # checks metrics_bind against it when corral binds it itself.
    _check_addresses(values["bind"] if "bind" in raw.values else (), values["metrics_bind"], raw.origin,
                     {"health_bind": values["health_bind"], "agent_bind": values["agent_bind"]})
    _check_engine_values(engine, raw.origin)
    if values["log_config"]:
        values["log_config"] = os.path.abspath(values["log_config"])  # workers may start elsewhere
        read_log_config(values["log_config"])  # a bad file is refused now, not by every worker
    return Config(**values, engine=engine, source=None if path is None else os.path.abspath(path),
                  explicit=frozenset(raw.values), overrides=dict(overrides))


def _name(name: str, origin: str | None) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.@-]+", name) or not name.strip("."):
        raise ConfigError(f"config key 'name' ({origin or 'from the config file name'}): "
                          f"{name!r} may only contain letters, digits, '_', '.', '@' and '-' (and not be "
                          "only dots); pass -n NAME")
    return name


def _check_addresses(bind: Iterable[BindSpec], metrics_bind: Iterable[BindSpec], origin: Mapping[str, str],
                     others: Mapping[str, Iterable[BindSpec]] | None = None) -> None:
    """Refuse an address listed twice, or a metrics (health, agent) address that overlaps an app
    address or another listener's: binding it would fail later with "address in use" blaming
    corral's own pid."""
    from corral.addresses import overlap

    seen: list[tuple[str, BindSpec]] = []
    for key, specs in (("bind", bind), ("metrics_bind", metrics_bind), *(others or {}).items()):
        for spec in specs:
            for other_key, other in seen:
                if not overlap(spec.address, other.address):
                    continue
                if key == other_key:
                    what = ("is listed twice" if spec.address == other.address
                            else f"overlaps {other.address!r} (the same port on a wildcard address)")
                    raise ConfigError(f"config key {key!r} ({origin.get(key)}): {spec.address!r} {what}; "
                                      "list each address once")
                if key == "metrics_bind":
                    raise ConfigError(f"config key 'metrics_bind' ({origin.get('metrics_bind')}): "
                                      + metrics_overlap_message(spec.address, other.address, origin.get("bind")))
                raise ConfigError(f"config key {key!r} ({origin.get(key)}): {spec.address!r} overlaps "
                                  f"{other.address!r} in {other_key!r}: each listener needs an address of its "
                                  "own; use another port")
            seen.append((key, spec))


def metrics_overlap_message(metrics: str, app: str, origin: str | None = None) -> str:
    return (f"{metrics!r} overlaps {app!r} in 'bind' ({origin or 'the default'}): the metrics endpoint "
            "needs an address of its own, not the same address as the app; use another port "
            "(e.g. 127.0.0.1:9100)")


def check_app_dir(config: Config) -> None:
    """The app's directory must exist before a worker is started there (``corral run``, ``corral check``).

    Not part of load(): a config stays valid while a deployment is being put in place,
    and a reload checks it through its workers. Raises ConfigError with the fix.
    """
    where = "" if "app_dir" in config.explicit else " (the default: corral's working directory)"
    path = config.app_dir
    if not os.path.exists(path):
        raise ConfigError(f"app_dir {path} does not exist{where}; create it, or set app_dir to the "
                          "directory that holds the app's code")
    if not os.path.isdir(path):
        raise ConfigError(f"app_dir {path} is not a directory{where}; set app_dir to the directory that "
                          "holds the app's code")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"app_dir {path} is not readable by this user (uid {os.geteuid()}); fix its "
                          "permissions, or run corral as a user that may read it")


def _python(values: Mapping[str, Any], raw: _Raw) -> str:
    if values["virtualenv"]:
        venv_python = os.path.join(values["virtualenv"], "bin", "python")
        if not os.path.exists(venv_python):
            raise ConfigError(f"config key 'virtualenv' ({raw.origin['virtualenv']}): {venv_python} does not "
                              "exist; point it at a virtualenv directory (the one holding bin/python)")
        return venv_python
    if values["python"]:
        python: str = values["python"]
        if os.sep not in python:
            import shutil

            found = shutil.which(python)
            if found is None:
                raise ConfigError(f"config key 'python' ({raw.origin['python']}): {python!r} is not on PATH; "
                                  "give the interpreter's full path")
            return found
        if not os.access(python, os.X_OK):
            raise ConfigError(f"config key 'python' ({raw.origin['python']}): {python} is not an executable "
                              "interpreter")
        return python
    return sys.executable


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_name(config_path: str | os.PathLike[str] | None, app_dir: str) -> str:
    """The instance name when none is given: the config file's name without its suffix
    (/etc/corral/blog.yaml -> blog), else the app directory's (~/src/blog -> blog), so that two
    apps on one machine get two names, and `corral status` run where an app runs finds it."""
    if config_path is not None:
        return os.path.splitext(os.path.basename(os.fspath(config_path)))[0]
    # A directory name may hold characters a name may not: they become '-'.
    return re.sub(r"[^A-Za-z0-9_.@-]+", "-", os.path.basename(os.path.normpath(app_dir))).strip("-.") or "corral"


@dataclass(frozen=True)
class RuntimeLocation:
    """The control socket's directory: ``base`` joined with the ``private`` levels.

    ``base`` is taken as it is: systemd's RuntimeDirectory=, /run for root, the user's
    XDG_RUNTIME_DIR, or /tmp. Each private level is corral's own directory inside a base
    others may share (/tmp is everyone's): corral makes it mode 0700 and refuses one that is
    not the user's own 0700 directory (``supervisor.rundir``).
    """

    base: str
    private: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return os.path.join(self.base, *self.private)


def runtime_location(name: str, environ: Mapping[str, str] | None = None) -> RuntimeLocation:
    """Where the control socket lives by default.

    ``$RUNTIME_DIRECTORY`` (systemd's RuntimeDirectory=) when set; otherwise
    ``/run/corral/NAME`` for root, ``$XDG_RUNTIME_DIR/corral/NAME`` or
    ``/tmp/corral-UID/NAME`` for other users.
    """
    environ = os.environ if environ is None else environ
    if environ.get("RUNTIME_DIRECTORY"):
        return RuntimeLocation(os.path.normpath(environ["RUNTIME_DIRECTORY"].split(":")[0]))
    if os.geteuid() == 0:
        return RuntimeLocation(os.path.join("/run/corral", name))
    if environ.get("XDG_RUNTIME_DIR"):
        return RuntimeLocation(os.path.normpath(environ["XDG_RUNTIME_DIR"]), ("corral", name))
    return RuntimeLocation("/tmp", (f"corral-{os.geteuid()}", name))


def runtime_dir(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The directory of the default control socket (see ``runtime_location``)."""
    return runtime_location(name, environ).path


def default_control_socket(name: str) -> str:
    return os.path.join(runtime_dir(name), "control.sock")


# sun_path holds 108 bytes on Linux, the last one the terminating NUL.
UNIX_PATH_MAX = 107


def socket_path_too_long(path: str) -> str | None:
    """Why ``path`` cannot be a unix socket's address, or None when it can."""
    size = len(os.fsencode(path))
    if size <= UNIX_PATH_MAX:
        return None
    return (f"the control socket path {path} is too long: {size} bytes, and a unix socket path holds at "
            f"most {UNIX_PATH_MAX}")


def _check_control_socket(path: str, origin: str | None) -> None:
    problem = socket_path_too_long(path)
    if problem is None:
        return
    if origin is not None:
        raise ConfigError(f"config key 'control_socket' ({origin}): {problem}; choose a shorter control_socket:")
    raise ConfigError(f"{problem}; choose a shorter name (-n NAME or name:), set control_socket: to a shorter "
                      "path, or run with RUNTIME_DIRECTORY set to a shorter directory")
