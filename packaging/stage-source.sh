#!/bin/bash
# Copy corral's source, as the .deb and the RPM build it, into the directory $1: what the
# wheel and the packages need, without caches or build leftovers. One list for both packages.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
tar -C "$repo" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
    -cf - pyproject.toml README.md docs daemon units conf/corral.yaml \
    | tar -C "$1" -xf -
