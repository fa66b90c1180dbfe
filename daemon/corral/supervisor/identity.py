"""corral's own code identity: has the installed corral changed since this supervisor started?

A package upgrade (apt, rpm, pip) replaces the files under the ``corral``
package directory while the supervisor keeps running the old code in memory.
A reload compares a fingerprint of those files with the one taken at start-up;
when they differ the supervisor re-executes itself in place (see ``reexec``) so
that it runs the code that is installed.

The fingerprint checksums the content of every ``.py`` file of the package (a
few hundred KiB, a few milliseconds) plus the version the distribution
metadata records; content rather than mtimes, so that a reinstall of the same
files is no change and a copy that preserved mtimes still is one. zlib's CRC-32
and Adler-32 rather than hashlib: this detects upgrades, it is no defence
against someone who can write the package (they own the service anyway), and
hashlib would map OpenSSL's libcrypto into the supervisor (~2 MiB of its 25).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

import corral

PACKAGE_DIR = os.path.dirname(os.path.realpath(corral.__file__))


@dataclass(frozen=True)
class CodeIdentity:
    version: str  # the distribution's version (corral.__version__ when metadata is missing)
    digest: str  # checksum over the package's .py files: relative path, size and content

    def short(self) -> str:
        return f"corral {self.version} ({self.digest[:12]})"


def installed(package_dir: str = PACKAGE_DIR) -> CodeIdentity:
    """The identity of the corral code on disk now."""
    return CodeIdentity(_installed_version(package_dir), _digest(package_dir))


def _python_files(package_dir: str) -> list[str]:
    """The package's .py files, relative to it, sorted by path component (as pathlib sorts)."""
    found = []
    for directory, subdirs, files in os.walk(package_dir):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        rel = os.path.relpath(directory, package_dir)
        found += [name if rel == "." else os.path.join(rel, name) for name in files if name.endswith(".py")]
    return sorted(found, key=lambda rel: rel.split(os.sep))


def _digest(package_dir: str) -> str:
    records = []
    for rel in _python_files(package_dir):
        try:
            with open(os.path.join(package_dir, rel), "rb") as f:
                data = f.read()
        except OSError:  # a file removed mid-upgrade: the next reload sees the final state
            data = b"<unreadable>"
        records.append(f"{rel}:{len(data)}:{zlib.crc32(data):08x}:{zlib.adler32(data):08x}")
    summary = "\n".join(records).encode()
    return f"{zlib.crc32(summary):08x}{zlib.adler32(summary):08x}{len(records):04x}"


def describe_app(identity: dict[str, Any] | None) -> str:
    """An app identity a worker reported, for one line of STATUS: ``v1.4.2 git 3f2a9c01de``,
    else ``sha256 9f8e7d6c5b4a`` (its module file's hash)."""
    if not identity:
        return ""
    parts = []
    version = identity.get("version")
    if version:
        parts.append(f"v{version}" if str(version)[:1].isdigit() else str(version))
    if identity.get("git"):
        parts.append(f"git {identity['git']}")
    if not parts and identity.get("sha256"):
        parts.append(f"sha256 {identity['sha256']}")
    return " ".join(parts)


def _installed_version(package_dir: str) -> str:
    # The version file next to the package (site-packages/corral-X.dist-info/METADATA, or an
    # egg-info's PKG-INFO), read as it is now; importlib.metadata would cost the supervisor
    # ~3 MiB of imports (email, zipfile, csv) for one line.
    site = os.path.dirname(package_dir)
    try:
        entries = sorted(os.listdir(site))
    except OSError:
        entries = []
    candidates = [os.path.join(site, e, "METADATA") for e in entries
                  if e.startswith("corral-") and e.endswith(".dist-info")]
    candidates += [os.path.join(site, "corral.egg-info", "PKG-INFO")] if "corral.egg-info" in entries else []
    for path in candidates:
        try:
            with open(path, encoding="utf-8") as metadata:
                for line in metadata:
                    if line.startswith("Version:"):
                        return line.partition(":")[2].strip()
                    if not line.strip():
                        break  # end of the headers
        except OSError:
            continue
    try:
        with open(os.path.join(package_dir, "__init__.py")) as f:
            text = f.read()
    except OSError:
        return corral.__version__
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.partition("=")[2].strip().strip("\"'") or corral.__version__
    return corral.__version__
