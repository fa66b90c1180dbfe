"""The lasting guards on the source: layers (import-linter), no import cycles, mypy
strict and ruff. Each runs as its own tool would in CI, so a failure here prints the
same report a developer gets by running the tool by hand (see `make lint`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_layers_hold() -> None:
    """cli → supervisor → worker → config → engine → leaves; see pyproject.toml."""
    done = _run(str(BIN / "lint-imports"), "--config", str(ROOT / "pyproject.toml"), cwd=ROOT / "daemon")
    assert done.returncode == 0, done.stdout + done.stderr


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    """No module reaches itself through imports, counting imports inside functions
    (they run too) and those under TYPE_CHECKING (a cycle of types is still a tangle of design)."""
    sys.path.insert(0, str(ROOT / "daemon"))
    try:
        graph = grimp.build_graph("corral", exclude_type_checking_imports=False, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT / "daemon"))
    # A package's __init__ that re-exports its submodules is not a cycle of design:
    # drop the edges from a module to its own parent packages.
    for module in list(graph.modules):
        parent = module.rpartition(".")[0]
        while parent:
            if graph.direct_import_exists(importer=module, imported=parent):
                graph.remove_import(importer=module, imported=parent)
            parent = parent.rpartition(".")[0]
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.timeout(600)
def test_mypy_strict() -> None:
    done = _run(str(BIN / "mypy"), "--config-file", str(ROOT / "pyproject.toml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff() -> None:
    done = _run(str(BIN / "ruff"), "check", "daemon/corral")
    assert done.returncode == 0, done.stdout + done.stderr
