#!/usr/bin/env bash
# Copy this repository as git sees it into DEST (a new directory): a clone of
# HEAD plus the uncommitted changes to tracked (and staged) files. Nothing
# ignored (.venv, caches) and nothing from beside the repository comes along:
# what runs there proves the repository stands alone.
#   bash integration/clone-tree.sh DEST
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$1"
[ ! -e "$dest" ] || { echo "clone-tree: $dest exists" >&2; exit 2; }
git clone -q --no-hardlinks "$src" "$dest"
git -C "$src" diff --binary HEAD | git -C "$dest" apply --allow-empty --whitespace=nowarn
