#!/bin/bash
# Build the corral .deb (`make deb`): fetch the pinned wheels, stage a source tree with
# packaging/debian as its debian/, run dpkg-buildpackage under a clean environment (a
# non-system python3 on PATH breaks the build), then lintian. The .deb lands in $OUT/deb/.
#
#   DEB_VERSION=0.1.0-2 packaging/build-deb.sh   adds a changelog entry: a newer build of the
#                                               same code (the upgrade tests use it)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export OUT=${OUT:-$repo/packaging/out}
wheels=$("$repo/packaging/fetch-wheels.sh")
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml")
stage="$OUT/deb/stage"
src="$stage/corral-$version"

rm -rf "$stage"
mkdir -p "$src"
"$repo/packaging/stage-source.sh" "$src"
cp -r "$repo/packaging/debian" "$src/debian"
mkdir "$src/wheels"
cp "$wheels"/*.whl "$src/wheels/"

if [ -n "${DEB_VERSION:-}" ]; then
    { printf 'corral (%s) bookworm; urgency=medium\n\n  * Rebuild.\n\n' "$DEB_VERSION"
      printf ' -- corral developers <corral-devel@example.org>  %s\n\n' "$(date -R)"
      cat "$src/debian/changelog"; } > "$src/debian/changelog.new"
    mv "$src/debian/changelog.new" "$src/debian/changelog"
fi

(cd "$src" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    dpkg-buildpackage -us -uc -b)

mkdir -p "$OUT/deb"
changes=$(ls "$stage"/corral_*.changes)
for f in "$stage"/corral_*.deb "$stage"/corral-dbgsym_*.deb "$changes" "$stage"/corral_*.buildinfo; do
    [ -e "$f" ] && mv -f "$f" "$OUT/deb/"
done
changes="$OUT/deb/$(basename "$changes")"
echo "built: $(ls "$OUT"/deb/corral_*.deb)"

# lintian: errors fail the build; every remaining warning is overridden with its reason in
# packaging/debian/corral.lintian-overrides.
lintian --fail-on error --info --display-info "$changes"
