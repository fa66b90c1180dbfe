#!/bin/bash
# Build the corral RPM (`make rpm`) from packaging/rpm/corral.spec. On Debian this is a check
# build: packaging/rpm/macros.deb-compat supplies the Fedora macros, and --nodeps skips the
# BuildRequires (not in Debian's rpmdb). The .rpm and .src.rpm land in $OUT/rpm/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export OUT=${OUT:-$repo/packaging/out}
wheels=$("$repo/packaging/fetch-wheels.sh")
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml")
top="$OUT/rpm/build"
stage="$OUT/rpm/stage"

rm -rf "$top" "$stage"
mkdir -p "$top/SOURCES" "$stage/corral-$version/wheels"
"$repo/packaging/stage-source.sh" "$stage/corral-$version"
tar -C "$stage" -czf "$top/SOURCES/corral-$version.tar.gz" --exclude=wheels "corral-$version"
cp "$wheels"/*.whl "$stage/corral-$version/wheels/"
tar -C "$stage/corral-$version" -czf "$top/SOURCES/corral-wheels-$version.tar.gz" wheels
cp "$repo/packaging/debian/corral.sysusers" "$repo/packaging/debian/corral.launcher" \
   "$repo/packaging/debian/corral.1" "$top/SOURCES/"

compat=()
if [ -e /etc/debian_version ]; then
    compat=(--load="$repo/packaging/rpm/macros.deb-compat" --nodeps)
fi
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    rpmbuild "${compat[@]}" --define "_topdir $top" -ba "$repo/packaging/rpm/corral.spec"

mkdir -p "$OUT/rpm"
rm -f "$OUT"/rpm/*.rpm
mv "$top"/RPMS/*/*.rpm "$top"/SRPMS/*.src.rpm "$OUT/rpm/"
ls "$OUT"/rpm/*.rpm
