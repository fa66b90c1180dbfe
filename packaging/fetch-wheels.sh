#!/bin/bash
# Fetch the pinned runtime wheels (requirements.lock, hash-checked) for the system python3.11
# into $CORRAL_WHEEL_CACHE/<lock hash>/ (default packaging/out/wheels) and print that
# directory. Reuses a complete earlier fetch, so package builds after the first need no
# network.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CORRAL_WHEEL_CACHE:-$here/out/wheels}
python=${CORRAL_PACKAGE_PYTHON:-/usr/bin/python3.11}
lock="$here/requirements.lock"
dir="$cache/$(sha256sum "$lock" | cut -c1-16)"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # concurrent builds share the cache
if [ ! -e "$dir/.complete" ]; then
    [ -x "$python" ] || { echo "fetch-wheels: $python not found (apt-get install python3.11 python3.11-venv)" >&2; exit 1; }
    env="$cache/fetchenv"
    rm -rf "$dir" "$env"
    mkdir -p "$dir"
    # A venv of the target interpreter, so pip picks the wheels that interpreter can load.
    "$python" -m venv "$env"
    "$env/bin/pip" wheel --quiet --require-hashes --no-deps --use-pep517 \
        --only-binary uvloop,httptools,psutil,pyyaml,websockets --wheel-dir "$dir" -r "$lock" >&2
    rm -rf "$env"
    touch "$dir/.complete"
fi
echo "$dir"
