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
from .launcher import MARKER, package_dirs, script

DEFAULT_HOOKS_DIR = Path("/etc/containers/oci/hooks.d")
DEFAULT_BIN_DIR = Path("/usr/local/libexec/tiergate")
# Sorted last among precreate hooks: nothing after tiergate rewrites the spec.
HOOK_FILES = {"precreate": "99-tiergate-precreate.json", "prestart": "99-tiergate-prestart.json"}


def install_launcher(bin_dir: Path, say=print) -> Path:
    lib = bin_dir / "lib" / "tiergate"
    for name, target in package_dirs().items():
        files.symlink(lib / name, target, say)
    exe = bin_dir / "tiergate-hook"
    files.write(exe, script(bin_dir / "lib", "tiergate.hook.stages"), 0o755, say)
    return exe


def hook_json(exe: Path, stage: str, extra: list[str]) -> str:
    doc = {
        "version": "1.0.0",
        "hook": {"path": str(exe), "args": ["tiergate-hook", stage, *extra]},
        "when": {"always": True},
        "stages": [stage],
        "annotations_comment": MARKER,
    }
    doc.pop("annotations_comment")  # hooks.d 1.0.0 allows no extra keys: the marker is the hook path
    return json.dumps(doc, indent=2) + "\n"


def install(hooks_dir: Path, bin_dir: Path, extra: list[str], prestart: bool, say=print) -> None:
    exe = install_launcher(bin_dir, say)
    files.write(hooks_dir / HOOK_FILES["precreate"], hook_json(exe, "precreate", extra), 0o644, say)
    if prestart:
        files.write(hooks_dir / HOOK_FILES["prestart"], hook_json(exe, "prestart", extra), 0o644, say)
    else:
        files.remove(hooks_dir / HOOK_FILES["prestart"], str(exe), say)


def uninstall(hooks_dir: Path, bin_dir: Path, say=print) -> None:
    exe = bin_dir / "tiergate-hook"
    for name in HOOK_FILES.values():
        files.remove(hooks_dir / name, str(exe), say)
    files.remove(exe, MARKER, say)
    for name in ("oci", "hook", "configs"):
        files.remove(bin_dir / "lib" / "tiergate" / name, None, say)
    for d in (bin_dir / "lib" / "tiergate", bin_dir / "lib", bin_dir):
        try:
            d.rmdir()
        except OSError:
            pass
