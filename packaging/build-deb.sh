#!/usr/bin/env bash
# Build tiergate_<version>_all.deb from this repository with Debian's tooling
# (debhelper, dh-python; see debian/rules), as root on Debian 12:
#   bash packaging/build-deb.sh [OUT_DIR]      (default OUT_DIR: build/deb)
# Installs the build dependencies first (debian/control Build-Depends). Builds
# in a copy of the repository (integration/clone-tree.sh: committed files plus
# working changes), so the tree stays clean. The result is cached by that
# copy's git tree hash: a rebuild of an unchanged tree is instant. Prints the
# path of the .deb as its last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
out="$(realpath -m "${1:-build/deb}")"
say() { printf 'build-deb: %s\n' "$*" >&2; }

BUILD_DEPS=(debhelper dh-python python3-all python3-setuptools python3-wheel python3-pip git dpkg-dev fakeroot)
missing=()
for pkg in "${BUILD_DEPS[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" = installed ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { say "missing build dependencies (${missing[*]}): run as root"; exit 1; }
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -q >&2
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >&2
fi

work="$(mktemp -d /tmp/tiergate-deb.XXXXXX)"
trap 'rm -rf "$work"' EXIT
bash integration/clone-tree.sh "$work/tiergate" >&2
git -C "$work/tiergate" add -A
tree="$(git -C "$work/tiergate" write-tree)"
cached="$(ls "$out/$tree"/tiergate_*.deb 2>/dev/null | head -n1 || true)"
if [ -n "$cached" ]; then
  say "tree $tree already built"
  echo "$cached"
  exit 0
fi
say "building tree $tree"
# The system interpreter and tools only: a version manager on PATH must not leak into the build.
(cd "$work/tiergate" && env -u PYTHONPATH PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc -rfakeroot >&2)
mkdir -p "$out/$tree"
cp "$work"/tiergate_*.deb "$out/$tree/"
ls "$out/$tree"/tiergate_*.deb | head -n1
