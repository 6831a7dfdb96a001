"""The hook executable engines call: a real interpreter, isolated, without site.

`python3 -I -S` starts in ~5 ms here; a console script through site (and an
editable install's import finder) costs 10-20 ms more on every container start.
The launcher finds tiergate through a directory of symlinks to the installed
packages, so editable and regular installs start equally fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MARKER = "# written by tiergate install"


def package_dirs() -> dict[str, Path]:
    import tiergate.configs
    import tiergate.hook
    import tiergate.oci

    return {name: Path(mod.__file__).resolve().parent
            for name, mod in (("oci", tiergate.oci), ("hook", tiergate.hook), ("configs", tiergate.configs))}


def interpreter() -> str:
    """The real interpreter behind this one (a version manager's shim costs ~90 ms per start)."""
    exe = Path(sys.executable)
    return str(exe) if exe.exists() else os.path.realpath(sys.executable)


# Imported by the hook or the shim (attrs, cattrs, pyseccomp only when the policy must be
# recompiled; prctl to confine the hook); their directories go on the launcher's sys.path.
DEPENDENCIES = ("attrs", "cattrs", "pyseccomp", "prctl", "pyroute2", "nftables")


def dependency_dirs() -> list[str]:
    """Where this interpreter finds the dependencies: a venv's site-packages, or the Debian
    package's /usr/lib/tiergate and dist-packages (sysconfig's purelib is neither there)."""
    import importlib.util

    dirs: list[str] = []
    for name in DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
            continue
        origin = Path(spec.origin)
        where = str(origin.parent.parent if spec.submodule_search_locations else origin.parent)
        if where not in dirs:
            dirs.append(where)
    return dirs


def script(lib_dir: Path, entry: str) -> str:
    return (f"#!{interpreter()} -IS\n{MARKER}\n"
            "import sys\n"
            f"sys.path.insert(0, {str(lib_dir)!r})\n"
            f"sys.path.extend({dependency_dirs()!r})  # {', '.join(DEPENDENCIES)}\n"
            f"from {entry} import main\n"
            "sys.exit(main())\n")


def needs() -> list[tuple[str, int]]:
    """What a launcher written now needs to be runnable: the interpreter, the packages, the dependency dirs."""
    return ([(interpreter(), os.X_OK)] + [(str(p), os.R_OK | os.X_OK) for p in package_dirs().values()]
            + [(d, os.R_OK | os.X_OK) for d in dependency_dirs()])


def install_hook(bin_dir: Path, say=print) -> Path:
    """The hook launcher and its symlinked package dir; shared by hooks.d and the shim."""
    from . import files

    lib = Path(bin_dir) / "lib"
    for name, target in package_dirs().items():
        files.symlink(lib / "tiergate" / name, target, say)
    exe = Path(bin_dir) / "tiergate-hook"
    files.write(exe, script(lib, "tiergate.hook.stages"), 0o755, say)
    return exe


def remove_hook(bin_dir: Path, say=print) -> None:
    """Undo install_hook; directories install created go with their last file (files.prune)."""
    from . import files

    files.remove(Path(bin_dir) / "tiergate-hook", MARKER, say)
    for name in ("oci", "hook", "configs"):
        files.remove(Path(bin_dir) / "lib" / "tiergate" / name, None, say)
