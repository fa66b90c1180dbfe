"""corral's configuration: YAML file < ``CORRAL_*`` environment < command line.

Two families of keys share one flat namespace:

* the supervisor's own keys, declared in ``SUPERVISOR_KEYS`` below;
* the HTTP engine's keys: every field of ``corral.engine.settings.EngineSettings``
  is a config key of the same name, validated from the field's annotation, so an
  engine option never has to be declared twice.

Every error names the key, where the value came from and what would be accepted;
an unknown key suggests the nearest valid one.

This module is imported by the supervisor, which must never import uvloop,
httptools or the app: the engine's settings module is loaded on its own, without
the engine package's ``__init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "CORRAL_"
DEFAULT_BIND = "127.0.0.1:8000"


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the fix."""


# --------------------------------------------------------------------------- value kinds


class Kind:
    """How one key's value is checked and normalised.

    ``coerce(value, text=False)`` returns the normalised value or raises
    ``ValueError`` whose message is the *expected* description. ``text=True`` means
    the value came from an environment variable or a command-line flag, so it is a
    string that may need parsing ("4" for an int, "a,b" for a list).
    """

    expected = "a value"

    def coerce(self, value: Any, text: bool = False) -> Any:
        raise NotImplementedError

    def fail(self) -> typing.NoReturn:
        raise ValueError(self.expected)


class AnyKind(Kind):
    expected = "any value"

    def coerce(self, value: Any, text: bool = False) -> Any:
        return yaml.safe_load(value) if text else value


class BoolKind(Kind):
    expected = "a boolean (true or false)"
    _TEXT = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}

    def coerce(self, value: Any, text: bool = False) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in self._TEXT:
            return self._TEXT[value.strip().lower()]
        self.fail()


class IntKind(Kind):
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
            value = float(value)
        except OverflowError:  # an int beyond float range
            self.fail()
        if not math.isfinite(value) or (self.minimum is not None and value < self.minimum):
            self.fail()
        return value


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class DurationKind(Kind):
    """Seconds, as a number or with a unit: ``30``, ``2.5``, ``500ms``, ``10m``, ``1h``."""

    expected = "a duration in seconds (e.g. 30, 2.5, 500ms, 10m, 1h), finite and not negative"

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

    def coerce(self, value: Any, text: bool = False) -> str:
        if isinstance(value, str):
            return value
        self.fail()


class ChoiceKind(Kind):
    def __init__(self, *choices: Any) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(repr(c) for c in choices)

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

    def coerce(self, value: Any, text: bool = False) -> dict[str, str]:
        if text and isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
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
        value = value.strip()
        from corral.supervisor.addresses import parse_address  # stdlib-only helper

        try:
            parse_address(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return value


class HealthCheckKind(Kind):
    """``{path: /healthz, expect_status: 200, timeout: 10, host: localhost}``; only ``path`` is required."""

    expected = ("a mapping {path: '/healthz', expect_status: 200, timeout: 10} (path required; "
                "expect_status defaults to 200, timeout to 10s, host to 'localhost'), or null")
    FIELDS = ("path", "expect_status", "timeout", "host")

    def coerce(self, value: Any, text: bool = False) -> dict[str, Any] | None:
        if text and isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else None
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
    DEFAULT: dict[str, Any] = {"path": "/", "host": None, "max_status": 499, "timeout": 30.0}

    def coerce(self, value: Any, text: bool = False) -> dict[str, Any] | None:
        if text and isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else None
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


# --------------------------------------------------------------------------- the supervisor's keys


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: Kind
    default: Any
    doc: str


def _keys(*specs: KeySpec) -> dict[str, KeySpec]:
    return {s.name: s for s in specs}


SUPERVISOR_KEYS: dict[str, KeySpec] = _keys(
    KeySpec("app", OptionalKind(StrKind()), None,
            "the app: MODULE:ATTR, or MODULE:FUNC() for a factory (the command line's APP wins)"),
    KeySpec("interface", ChoiceKind("auto", "asgi", "wsgi"), "auto", "how to call the app"),
    KeySpec("app_dir", OptionalKind(StrKind()), None,
            "directory put first on the app's sys.path and used as its working directory (default: corral's cwd)"),
    KeySpec("name", OptionalKind(StrKind()), None,
            "instance name, used in the control socket path (default: the config file's stem, else the "
            "app directory's name)"),
    KeySpec("bind", SequenceKind(BindKind(), container=tuple,
                                 expected="a list of addresses (e.g. ['127.0.0.1:8000', 'unix:/run/app.sock'])"),
            (BindSpec(DEFAULT_BIND),),
            "addresses to listen on when systemd passes no sockets"),
    KeySpec("metrics_bind", SequenceKind(BindKind(), container=tuple,
                                         expected="a list of addresses (e.g. ['127.0.0.1:9100'])"), (),
            "addresses for the Prometheus /metrics endpoint when systemd passes no 'metrics' socket"),
    KeySpec("backlog", IntKind(minimum=1), 2048, "listen() backlog of sockets corral binds itself"),
    KeySpec("reuse_port", BoolKind(), False,
            "bind one SO_REUSEPORT socket per worker slot instead of one shared socket"),
    KeySpec("workers", WorkersKind(), "auto", "number of worker processes"),
    KeySpec("python", OptionalKind(StrKind()), None, "the app's Python interpreter"),
    KeySpec("virtualenv", OptionalKind(StrKind()), None, "the app's virtualenv (uses VIRTUALENV/bin/python)"),
    KeySpec("environment", MappingKind(), {}, "extra environment variables for the workers"),
    KeySpec("timeout", DurationKind(), 30.0,
            "a worker whose event loop sends no heartbeat for this long is hung: traceback logged, killed, replaced"),
    KeySpec("boot_timeout", DurationKind(), 60.0, "a worker must import the app and finish lifespan startup within this"),
    KeySpec("graceful_timeout", DurationKind(), 30.0, "how long in-flight requests may take to finish on stop or recycle"),
    KeySpec("drain_linger", DurationKind(), 1.0,
            "on a graceful stop, keep idle keep-alive connections open this long (answering their next "
            "request with Connection: close) before closing them; 0: close them at once"),
    KeySpec("reload_strategy", ChoiceKind("surge", "rolling"), "surge",
            "surge: a reload starts every new worker at once; rolling: reload_batch at a time"),
    KeySpec("reload_batch", IntKind(minimum=1), 1, "workers replaced at a time by a rolling reload"),
    KeySpec("reload_timeout", DurationKind(), 60.0,
            "a reload's new workers (each batch, when rolling) must be ready within this, or it rolls back"),
    KeySpec("health_check", HealthCheckKind(), None,
            "a request each new worker must answer through the app before it counts as ready"),
    KeySpec("warmup", WarmupKind(), dict(WarmupKind.DEFAULT),
            "a request each new worker sends its app before it counts as ready, so lazy imports (Django's "
            "URLconf, views) run: a reload whose new code answers above max_status is refused; false: off"),
    KeySpec("reload_rollback", ChoiceKind("full", "partial"), "full",
            "rolling: full keeps replaced old workers parked until the last batch is ready, so a failure "
            "brings the old code back on every slot; partial lets them exit (less memory, no way back)"),
    KeySpec("max_memory", SizeKind(), 0, "recycle a worker whose memory stays above this (0: off)"),
    KeySpec("memory_metric", ChoiceKind("uss", "rss"), "uss", "which memory figure max_memory applies to"),
    KeySpec("max_fds", IntKind(minimum=0), 0, "recycle a worker with more open fds than this (0: off)"),
    KeySpec("max_requests", IntKind(minimum=0), 0, "recycle a worker after this many requests (0: off)"),
    KeySpec("max_requests_jitter", IntKind(minimum=0), 0, "random 0..N added to max_requests per worker"),
    KeySpec("max_lifetime", DurationKind(), 0.0, "recycle a worker older than this (0: off)"),
    KeySpec("max_lifetime_jitter", DurationKind(), 0.0, "random 0..N seconds added to max_lifetime per worker"),
    KeySpec("policy_breaches", IntKind(minimum=1), 3,
            "consecutive samples over max_memory / max_fds before a worker is recycled"),
    KeySpec("policy_interval", DurationKind(), 1.0, "how often worker memory and fds are sampled"),
    KeySpec("accept_balance", BoolKind(), True,
            "a worker holding more than its share of connections pauses accepting until the others catch up"),
    KeySpec("control_socket", OptionalKind(StrKind()), None,
            "path of the control socket used by `corral status` (default: in the runtime directory)"),
    KeySpec("log_level", ChoiceKind("debug", "info", "warning", "error", "critical"), "info", "log level"),
)


# --------------------------------------------------------------------------- the engine's keys


def engine_settings_class() -> type | None:
    """``corral.engine.settings.EngineSettings``, loaded without the engine package.

    The engine package's ``__init__`` may import uvloop and httptools, which the
    supervisor must never load; its settings module is a plain dataclass, so it is
    executed on its own under its real name.
    """
    module = _engine_module("settings")
    return getattr(module, "EngineSettings", None) if module is not None else None


def _engine_module(stem: str) -> types.ModuleType | None:
    """``corral.engine.<stem>``, executed on its own (without the package's ``__init__``)."""
    name = f"corral.engine.{stem}"
    module = sys.modules.get(name)
    if module is None:
        path = Path(__file__).resolve().parent / "engine" / f"{stem}.py"
        if not path.exists():
            return None
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and get_type_hints look the module up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module


def _check_engine_values(engine: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    """Build the engine's settings as every worker will, so that a value of the right type
    that makes no sense (``max_connections: 0``) is a config error naming its key, not a
    boot failure of every worker."""
    cls = engine_settings_class()
    if cls is None or not engine:
        return
    # EngineSettings checks forwarded_allow_ips with the engine's proxy module: load it on its
    # own too, or the import would pull in the engine package (uvloop, httptools).
    _engine_module("proxy")
    try:
        cls(**engine)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        # The engine's messages start with the field's name ("max_connections must be ...").
        key = next((k for k in sorted(engine, key=len, reverse=True) if message.startswith(k)), None)
        if key is None and len(engine) == 1:
            key = next(iter(engine))
        if key is None:
            raise ConfigError(f"engine settings {', '.join(map(repr, sorted(engine)))}: {message}") from None
        raise ConfigError(f"config key {key!r} ({origin.get(key)}): {message}") from None


def engine_keys() -> dict[str, KeySpec]:
    """One KeySpec per EngineSettings field, typed from its annotation."""
    cls = engine_settings_class()
    if cls is None:
        return {}
    hints = typing.get_type_hints(cls)
    keys: dict[str, KeySpec] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        keys[f.name] = KeySpec(f.name, kind_from_annotation(hints.get(f.name, Any)), default,
                               str(f.metadata.get("doc", "")))
    return keys


def all_keys() -> dict[str, KeySpec]:
    """Every valid config key; a name in both families is validated as the supervisor's."""
    keys = dict(engine_keys())
    keys.update(SUPERVISOR_KEYS)
    return keys


# --------------------------------------------------------------------------- the resolved config


@dataclass(frozen=True)
class Config:
    """The resolved configuration. Engine keys live in ``engine`` (only those set explicitly)."""

    app: str | None
    interface: str
    app_dir: str
    name: str
    bind: tuple[BindSpec, ...]
    metrics_bind: tuple[BindSpec, ...]
    backlog: int
    reuse_port: bool
    workers: int
    python: str
    environment: dict[str, str]
    timeout: float
    boot_timeout: float
    graceful_timeout: float
    drain_linger: float
    reload_strategy: str
    reload_batch: int
    reload_timeout: float
    health_check: dict[str, Any] | None
    warmup: dict[str, Any] | None
    reload_rollback: str
    max_memory: int
    memory_metric: str
    max_fds: int
    max_requests: int
    max_requests_jitter: int
    max_lifetime: float
    max_lifetime_jitter: float
    policy_breaches: int
    policy_interval: float
    accept_balance: bool
    control_socket: str
    log_level: str
    engine: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    explicit: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data, as sent to each worker."""
        out = dataclasses.asdict(self)
        out["bind"] = [dataclasses.asdict(b) for b in self.bind]
        out["metrics_bind"] = [dataclasses.asdict(b) for b in self.metrics_bind]
        out["explicit"] = sorted(self.explicit)
        return out


@dataclass
class _Raw:
    """Values gathered so far, with where each came from (for error messages)."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


def _suggest(name: str, valid: Iterable[str]) -> str:
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


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse one YAML config file into a mapping; errors name the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror}") from None
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


def load(path: str | os.PathLike[str] | None = None,
         overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Resolve the configuration: defaults < file < CORRAL_* environment < overrides.

    ``overrides`` are command-line values (already typed or strings).
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
    for name, value in (overrides or {}).items():
        if value is not None:
            _set(raw, keys, name, value, "from the command line", text=isinstance(value, str))
    return _resolve(raw, keys, path)


def _resolve(raw: _Raw, keys: Mapping[str, KeySpec], path: str | os.PathLike[str] | None) -> Config:
    values = {name: spec.default for name, spec in SUPERVISOR_KEYS.items()}
    values.update({k: v for k, v in raw.values.items() if k in SUPERVISOR_KEYS})
    engine_names = set(keys) - set(SUPERVISOR_KEYS) | (set(SUPERVISOR_KEYS) & set(engine_keys()))
    engine = {k: v for k, v in raw.values.items() if k in engine_names}

    if values["python"] and values["virtualenv"]:
        raise ConfigError("set either 'python' or 'virtualenv', not both "
                          f"({raw.origin['python']}, {raw.origin['virtualenv']})")
    python = _python(values, raw)
    app_dir = os.path.abspath(values["app_dir"] or os.getcwd())
    name = values["name"] or default_name(path, app_dir)
    if not re.fullmatch(r"[A-Za-z0-9_.@-]+", name) or not name.strip("."):
        raise ConfigError(f"config key 'name' ({raw.origin.get('name', 'from the config file name')}): "
                          f"{name!r} may only contain letters, digits, '_', '.', '@' and '-' (and not be "
                          "only dots); pass -n NAME")
    control_socket = values["control_socket"] or default_control_socket(name)
    _check_control_socket(control_socket, raw.origin.get("control_socket"))
    workers = values["workers"]
    if workers == "auto":
        workers = cpu_count()
    for key in ("timeout", "boot_timeout", "policy_interval", "reload_timeout"):
        if values[key] <= 0:
            raise ConfigError(f"config key {key!r} ({raw.origin.get(key)}): must be greater than 0")
    # The default bind is only a fallback (a socket unit's sockets replace it): bind_all()
    # checks metrics_bind against it when corral binds it itself.
    _check_addresses(values["bind"] if "bind" in raw.values else (), values["metrics_bind"], raw.origin)
    _check_engine_values(engine, raw.origin)
    return Config(
        app=values["app"], interface=values["interface"], app_dir=app_dir, name=name,
        bind=tuple(values["bind"]), metrics_bind=tuple(values["metrics_bind"]), backlog=values["backlog"], reuse_port=values["reuse_port"],
        workers=workers, python=python, environment=dict(values["environment"]),
        timeout=values["timeout"], boot_timeout=values["boot_timeout"],
        graceful_timeout=values["graceful_timeout"], drain_linger=values["drain_linger"],
        reload_strategy=values["reload_strategy"], reload_batch=values["reload_batch"],
        reload_timeout=values["reload_timeout"], health_check=values["health_check"],
        warmup=values["warmup"], reload_rollback=values["reload_rollback"],
        max_memory=values["max_memory"],
        memory_metric=values["memory_metric"], max_fds=values["max_fds"],
        max_requests=values["max_requests"], max_requests_jitter=values["max_requests_jitter"],
        max_lifetime=values["max_lifetime"], max_lifetime_jitter=values["max_lifetime_jitter"],
        policy_breaches=values["policy_breaches"], policy_interval=values["policy_interval"],
        accept_balance=values["accept_balance"],
        control_socket=control_socket,
        log_level=values["log_level"], engine=engine,
        source=None if path is None else os.path.abspath(path),
        explicit=frozenset(raw.values),
    )


def _check_addresses(bind: Iterable[BindSpec], metrics_bind: Iterable[BindSpec], origin: Mapping[str, str]) -> None:
    """Refuse an address listed twice, or a metrics address that overlaps an app address:
    binding it would fail later with "address in use" blaming corral's own pid."""
    from corral.supervisor.addresses import overlap  # stdlib-only helper

    seen: list[tuple[str, BindSpec]] = []
    for key, specs in (("bind", bind), ("metrics_bind", metrics_bind)):
        for spec in specs:
            for other_key, other in seen:
                if not overlap(spec.address, other.address):
                    continue
                if key == other_key:
                    what = ("is listed twice" if spec.address == other.address
                            else f"overlaps {other.address!r} (the same port on a wildcard address)")
                    raise ConfigError(f"config key {key!r} ({origin.get(key)}): {spec.address!r} {what}; "
                                      "list each address once")
                raise ConfigError(f"config key 'metrics_bind' ({origin.get('metrics_bind')}): "
                                  + metrics_overlap_message(spec.address, other.address, origin.get("bind")))
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
        venv = Path(values["virtualenv"])
        python = venv / "bin" / "python"
        if not python.exists():
            raise ConfigError(f"config key 'virtualenv' ({raw.origin['virtualenv']}): {python} does not exist; "
                              "point it at a virtualenv directory (the one holding bin/python)")
        return str(python)
    if values["python"]:
        python = values["python"]
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
        return Path(config_path).stem
    # A directory name may hold characters a name may not: they become '-'.
    return re.sub(r"[^A-Za-z0-9_.@-]+", "-", Path(app_dir).name).strip("-.") or "corral"


@dataclass(frozen=True)
class RuntimeLocation:
    """The control socket's directory: ``base`` joined with the ``private`` levels.

    ``base`` is taken as it is: systemd's RuntimeDirectory=, /run for root, the user's
    XDG_RUNTIME_DIR, or /tmp. Each private level is corral's own directory inside a base
    others may share (/tmp is everyone's): corral makes it mode 0700 and refuses one that is
    not the user's own 0700 directory (``supervisor.rundir``).
    """

    base: Path
    private: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self.base.joinpath(*self.private)


def runtime_location(name: str, environ: Mapping[str, str] | None = None) -> RuntimeLocation:
    """Where the control socket lives by default.

    ``$RUNTIME_DIRECTORY`` (systemd's RuntimeDirectory=) when set; otherwise
    ``/run/corral/NAME`` for root, ``$XDG_RUNTIME_DIR/corral/NAME`` or
    ``/tmp/corral-UID/NAME`` for other users.
    """
    environ = os.environ if environ is None else environ
    if environ.get("RUNTIME_DIRECTORY"):
        return RuntimeLocation(Path(environ["RUNTIME_DIRECTORY"].split(":")[0]))
    if os.geteuid() == 0:
        return RuntimeLocation(Path("/run/corral") / name)
    if environ.get("XDG_RUNTIME_DIR"):
        return RuntimeLocation(Path(environ["XDG_RUNTIME_DIR"]), ("corral", name))
    return RuntimeLocation(Path("/tmp"), (f"corral-{os.geteuid()}", name))


def runtime_dir(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """The directory of the default control socket (see ``runtime_location``)."""
    return runtime_location(name, environ).path


def default_control_socket(name: str) -> str:
    return str(runtime_dir(name) / "control.sock")


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
