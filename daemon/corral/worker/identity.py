"""Which code a worker serves: the app's version, a hash of its module file, its git revision.

Computed in the worker right after the app is imported (the supervisor never
imports the app) and sent to the supervisor, which puts it in STATUS= and
`corral status`, so that `systemctl status` tells which deploy is live.
Standard library only, and cheap: it runs once per worker boot.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

HASH_CHARS = 12
GIT_CHARS = 10


def app_identity(spec: str, app_dir: str | None = None) -> dict[str, Any]:
    """Facts about the imported app module ``spec`` names (``module:attr``); missing ones are None.

    ``version``: ``__version__`` of the module or of its top-level package, else the
    installed distribution's version; ``sha256``: the module file's hash (short);
    ``git``: the revision checked out in the repository holding the module (or
    ``app_dir``), read from ``.git`` directly (no git binary needed).
    """
    module_name = spec.partition(":")[0]
    module = sys.modules.get(module_name)
    top = sys.modules.get(module_name.partition(".")[0])
    file = getattr(module, "__file__", None)  # None for a namespace package or a built-in
    path = Path(file).resolve() if isinstance(file, str) and file else None
    return {
        "module": module_name,
        "version": _version(module, top, module_name, path),
        "sha256": _file_hash(path),
        "git": git_revision(path.parent if path else Path(app_dir or ".")),
    }


def _version(module: Any, top: Any, module_name: str, path: Path | None) -> str | None:
    for candidate in (module, top):
        value = getattr(candidate, "__version__", None)
        if isinstance(value, str) and value:
            return value
    # Only an installed package has a distribution to ask. An app served from its own
    # directory (the usual case) skips packages_distributions(), which reads every installed
    # distribution's metadata: 100-300 ms of every worker's boot before it reports ready.
    if path is None or not {"site-packages", "dist-packages"} & set(path.parts):
        return None
    try:
        import importlib.metadata

        names = importlib.metadata.packages_distributions().get(module_name.partition(".")[0], [])
        if names:
            return importlib.metadata.version(names[0])
    except Exception:  # noqa: BLE001  a third party's broken metadata may raise anything; it must never fail a boot
        return None
    return None


def _file_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:HASH_CHARS]
    except OSError:
        return None


def git_revision(start: Path) -> str | None:
    """The commit HEAD points at in the git work tree holding ``start``, or None."""
    try:
        directory = start.resolve()
    except OSError:
        return None
    for candidate in (directory, *directory.parents):
        dot_git = candidate / ".git"
        try:
            if dot_git.is_file():  # a worktree or submodule: "gitdir: PATH"
                text = dot_git.read_text().strip()
                if not text.startswith("gitdir:"):
                    return None
                dot_git = (candidate / text.partition(":")[2].strip()).resolve()
            if dot_git.is_dir():
                return _resolve_head(dot_git)
        except OSError:
            return None
    return None


def _resolve_head(git_dir: Path) -> str | None:
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head[:GIT_CHARS] or None
    ref = head.partition(":")[2].strip()
    # A linked worktree keeps HEAD to itself but its refs in the common directory.
    common = git_dir
    if (git_dir / "commondir").is_file():
        common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            return loose.read_text().strip()[:GIT_CHARS] or None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha[:GIT_CHARS]
    return None
