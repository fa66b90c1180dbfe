"""corral's own code identity: has the installed corral changed since this supervisor started?

A package upgrade (apt, rpm, pip) replaces the files under the ``corral``
package directory while the supervisor keeps running the old code in memory.
A reload compares a fingerprint of those files with the one taken at start-up;
when they differ the supervisor re-executes itself in place (see ``reexec``) so
that it runs the code that is installed.

The fingerprint hashes the content of every ``.py`` file of the package (a
few hundred KiB, a few milliseconds) plus the version the distribution
metadata records; content rather than mtimes, so that a reinstall of the same
files is no change and a copy that preserved mtimes still is one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import corral

PACKAGE_DIR = Path(corral.__file__).resolve().parent


@dataclass(frozen=True)
class CodeIdentity:
    version: str  # the distribution's version (corral.__version__ when metadata is missing)
    digest: str  # sha256 over the package's .py files, relative path and content

    def short(self) -> str:
        return f"corral {self.version} ({self.digest[:12]})"


def installed(package_dir: Path = PACKAGE_DIR) -> CodeIdentity:
    """The identity of the corral code on disk now."""
    return CodeIdentity(_installed_version(package_dir), _digest(package_dir))


def _digest(package_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:  # a file removed mid-upgrade: the next reload sees the final state
            data = b"<unreadable>"
        digest.update(str(path.relative_to(package_dir)).encode() + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def _installed_version(package_dir: Path) -> str:
    # Read the version file that sits next to the package (site-packages/corral-X.dist-info),
    # not importlib.metadata's cached view of what was installed when we started.
    try:
        for dist in importlib.metadata.distributions(path=[str(package_dir.parent)]):
            if (dist.metadata["Name"] or "").lower() == "corral":
                return dist.version
    except Exception:
        pass
    try:
        text = (package_dir / "__init__.py").read_text()
    except OSError:
        return corral.__version__
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.partition("=")[2].strip().strip("\"'") or corral.__version__
    return corral.__version__
