#!/bin/bash
# Fetch the pinned runtime wheels (requirements.lock, hash-checked) for the system python3.11
# into $OUT/wheels/<lock hash>/ and print that directory. Reuses a complete earlier fetch, so
# package builds after the first need no network.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
python=${CORRAL_PACKAGE_PYTHON:-/usr/bin/python3.11}
lock="$here/requirements.lock"
dir="$out/wheels/$(sha256sum "$lock" | cut -c1-16)"

if [ ! -e "$dir/.complete" ]; then
    [ -x "$python" ] || { echo "fetch-wheels: $python not found (apt-get install python3.11 python3.11-venv)" >&2; exit 1; }
    rm -rf "$dir" "$out/fetchenv"
    mkdir -p "$dir"
    # A venv of the target interpreter, so pip picks the wheels that interpreter can load.
    "$python" -m venv "$out/fetchenv"
    "$out/fetchenv/bin/pip" wheel --quiet --require-hashes --no-deps --use-pep517 \
        --only-binary uvloop,httptools,psutil,pyyaml --wheel-dir "$dir" -r "$lock" >&2
    rm -rf "$out/fetchenv"
    touch "$dir/.complete"
fi
echo "$dir"
