"""``corral check``'s second half, run with the app's interpreter: import the app, report."""

from __future__ import annotations

import sys
import traceback

from corral.config import Config

# The worker's third-party dependencies, and what to do when the app's interpreter lacks them
# (said by `corral check` and by a worker that cannot start).
DEPENDENCY_HINT = ("install uvloop>=0.23 and httptools into the app's environment "
                   "(pip install 'uvloop>=0.23' httptools), or run the app under corral's own interpreter")


def check(config: Config) -> int:
    """Import the app named by the config and validate the engine settings; 0 when all is well."""
    problems = 0
    for name in ("uvloop", "httptools"):
        try:
            module = __import__(name)
        except ImportError as exc:
            print(f"corral: cannot import {name} with {sys.executable}: {exc}; {DEPENDENCY_HINT}",
                  file=sys.stderr)
            problems += 1
            continue
        if name == "uvloop" and _version(getattr(module, "__version__", "0")) < (0, 23):
            print(f"corral: uvloop {module.__version__} is too old (< 0.23 can send a response to the wrong "
                  "request under load, uvloop issue 645); upgrade it: pip install 'uvloop>=0.23'",
                  file=sys.stderr)
            problems += 1
    try:
        from corral.engine.settings import EngineSettings

        settings = EngineSettings(**config.engine)
        from corral.engine.tlsconfig import warnings as tls_warnings

        for warning in tls_warnings(settings):  # an expiring certificate, a key others can read
            print(f"corral: warning: {warning}", file=sys.stderr)
    except (TypeError, ValueError) as exc:
        print(f"corral: invalid engine setting: {exc}", file=sys.stderr)
        problems += 1
    except ImportError as exc:
        print(f"corral: cannot import corral's engine: {exc}", file=sys.stderr)
        problems += 1
    from corral.appload import detect_interface, error_line, load_app

    if config.app is None:
        print("corral: no app given: pass MODULE:ATTR or set app: in the config", file=sys.stderr)
        return 1
    try:
        app = load_app(config.app, app_dir=config.app_dir)
    except Exception as exc:  # noqa: BLE001  (importing the app runs its code, which may raise anything)
        traceback.print_exception(exc, file=sys.stderr)
        print(f"corral: cannot load the app {config.app!r}: {error_line(exc)}", file=sys.stderr)
        return 1
    interface = config.interface
    detected = detect_interface(app)
    if interface == "auto":
        interface = detected
    elif interface != detected:
        print(f"corral: warning: interface is {interface!r} but {config.app} looks like {detected}",
              file=sys.stderr)
    if problems:
        return 1
    print(f"app ok: {config.app} ({interface}) with {sys.executable}")
    return 0


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
