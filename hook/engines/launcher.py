"""The hook executable engines call: a real interpreter, isolated, without site.

`python3 -I -S` starts in ~5 ms here; a console script through site (and an
editable install's import finder) costs 10-20 ms more on every container start.
The launcher finds tiergate through a directory of symlinks to the installed
packages, so editable and regular installs start equally fast.
"""

from __future__ import annotations

import os
import sys
import sysconfig
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


def script(lib_dir: Path, entry: str) -> str:
    site = sysconfig.get_paths()["purelib"]
    return (f"#!{interpreter()} -IS\n{MARKER}\n"
            "import sys\n"
            f"sys.path.insert(0, {str(lib_dir)!r})\n"
            f"sys.path.append({site!r})  # attrs, cattrs: only when the policy must be recompiled\n"
            f"from {entry} import main\n"
            "sys.exit(main())\n")


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
