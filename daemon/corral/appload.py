"""Turning an app spec such as ``pkg.module:app`` or ``pkg.module:create()`` into an app.

Used only inside worker processes (and ``corral check``): the supervisor never
imports the application.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Any


class AppLoadError(Exception):
    """The app spec could not be turned into a callable; the message says why and how to fix it."""


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """Split ``module:attr`` or ``module:factory()`` into (module, attr, is_factory)."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise AppLoadError(
            f"app spec {spec!r} is not MODULE:ATTR; write e.g. 'myproject.asgi:app' "
            "or 'myproject.app:create_app()' for a factory"
        )
    is_factory = attr.endswith("()")
    if is_factory:
        attr = attr[:-2]
    if not attr.replace(".", "_").isidentifier():
        raise AppLoadError(f"app spec {spec!r}: {attr!r} is not a Python attribute name")
    return module, attr, is_factory


def load_app(spec: str, *, app_dir: str | None = None) -> Callable[..., Any]:
    """Import the module named by ``spec`` and return the app object.

    Import errors from the app itself propagate unchanged, so the user sees
    their own traceback rather than ours.
    """
    module_name, attr, is_factory = parse_spec(spec)
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name.split(".")[0] == exc.name.split(".")[0]:
            raise AppLoadError(
                f"cannot import {module_name!r}: no module named {exc.name!r}; "
                "run corral from the project directory, or set app_dir / the virtualenv in the config"
            ) from exc
        raise
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r} (app spec {spec!r})") from None
    if is_factory:
        if not callable(obj):
            raise AppLoadError(f"app factory {spec!r} is not callable")
        obj = obj()
    if not callable(obj):
        raise AppLoadError(f"app {spec!r} is a {type(obj).__name__}, not a callable ASGI or WSGI app")
    app: Callable[..., Any] = obj  # checked callable just above
    return app


def detect_interface(app: Callable[..., Any]) -> str:
    """Guess whether ``app`` is ASGI 3 or WSGI (``interface: auto``).

    ASGI 3: ``async def app(scope, receive, send)``, or an object whose
    ``__call__`` is a coroutine function (Starlette, FastAPI, Django's
    ASGIHandler), or any callable taking exactly three required positional
    arguments. Everything else is WSGI: ``app(environ, start_response)``
    (Flask, Django's WSGIHandler); that includes callables whose signature
    cannot tell, such as ``def app(*args)`` wrappers without
    ``functools.wraps``. Set ``interface:`` explicitly when the guess is wrong.
    """
    # The __call__ Python runs for an instance is its class's: ``async def __call__`` is ASGI 3.
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__):
        return "asgi"
    try:
        # signature() sees through functools.partial, __wrapped__ and __call__.
        params = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return "asgi"
    required = [p for p in params
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return "asgi" if len(required) == 3 else "wsgi"


def interface_of(app: Callable[..., Any], configured: str) -> str:
    """The interface to serve ``app`` with: ``configured`` (the ``interface`` key), or the guess of
    :func:`detect_interface` when that is ``auto``."""
    return detect_interface(app) if configured == "auto" else configured


def error_line(exc: BaseException) -> str:
    """The last line of ``exc`` as Python prints it (``ModuleNotFoundError: No module named 'x'``):
    the app's error in one line, for a boot error, STATUS= or a reload's answer."""
    return "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]
