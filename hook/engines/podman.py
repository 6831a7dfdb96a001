"""Podman (and CRI-O, buildah): OCI hooks in a hooks.d directory, schema 1.0.0.

Podman reads hooks from containers.conf `hooks_dir` (default
/usr/share/containers/oci/hooks.d and /etc/containers/oci/hooks.d) or
`podman --hooks-dir DIR`. precreate (podman >= 3.x extension stage) rewrites
the spec; prestart (optional) verifies the bundle before the workload runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import files
from .launcher import install_hook, remove_hook

DEFAULT_HOOKS_DIR = Path("/etc/containers/oci/hooks.d")
DEFAULT_BIN_DIR = Path("/usr/local/libexec/tiergate")
# Sorted last among precreate hooks: nothing after tiergate rewrites the spec.
HOOK_FILES = {"precreate": "99-tiergate-precreate.json", "prestart": "99-tiergate-prestart.json"}


def hook_json(exe: Path, stage: str, extra: list[str]) -> str:
    doc = {
        "version": "1.0.0",
        "hook": {"path": str(exe), "args": ["tiergate-hook", stage, *extra]},
        "when": {"always": True},
        "stages": [stage],
    }  # hooks.d 1.0.0 allows no extra keys: uninstall recognises ours by the hook path
    return json.dumps(doc, indent=2) + "\n"


def install(hooks_dir: Path, bin_dir: Path, extra: list[str], prestart: bool, say=print) -> None:
    exe = install_hook(bin_dir, say)
    files.write(hooks_dir / HOOK_FILES["precreate"], hook_json(exe, "precreate", extra), 0o644, say)
    if prestart:
        files.write(hooks_dir / HOOK_FILES["prestart"], hook_json(exe, "prestart", extra), 0o644, say)
    else:
        files.remove(hooks_dir / HOOK_FILES["prestart"], str(exe), say)


def uninstall(hooks_dir: Path, bin_dir: Path, say=print) -> None:
    exe = bin_dir / "tiergate-hook"
    for name in HOOK_FILES.values():
        files.remove(hooks_dir / name, str(exe), say)
    remove_hook(bin_dir, say)
