"""Entry script of a worker process, run by path with the app's interpreter.

    PYTHON .../corral/worker/boot.py [--path DIR]... ARGS...

It is run by path rather than with ``-m corral.worker`` because the app's
interpreter (``python:`` / ``virtualenv:`` in the config) may not have corral
installed. The rule it applies to ``sys.path``:

1. corral itself is always the supervisor's copy (the package this file sits in),
   pinned under the name ``corral`` without putting its site directory on the path;
2. the app's interpreter keeps its own ``sys.path`` (PYTHONPATH, its venv's
   site-packages) in front, so the app's own packages win;
3. each ``--path DIR`` (the supervisor's directories holding uvloop and httptools)
   is appended last, used only for what the app's environment lacks.

Only the standard library may be imported before the path is set up.
"""

import importlib.util
import os
import sys


def _pin_corral() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    # Running a script puts its directory first on sys.path: our module names must
    # never shadow the app's or the standard library's.
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
        del sys.path[0]
    if "corral" in sys.modules:
        return
    package_dir = os.path.dirname(here)
    spec = importlib.util.spec_from_file_location(
        "corral", os.path.join(package_dir, "__init__.py"), submodule_search_locations=[package_dir])
    if spec is None or spec.loader is None:  # only if this file's own directory vanished under us
        raise ImportError(f"cannot load corral from {package_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["corral"] = module
    spec.loader.exec_module(module)


def _take_paths(argv: list[str]) -> list[str]:
    while len(argv) >= 2 and argv[0] == "--path":
        if argv[1] not in sys.path:
            sys.path.append(argv[1])
        argv = argv[2:]
    return argv


if __name__ == "__main__":
    _pin_corral()
    args = _take_paths(sys.argv[1:])
    from corral.worker.main import main

    sys.exit(main(args))
