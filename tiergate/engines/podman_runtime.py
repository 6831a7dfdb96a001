"""Podman with the shim as its OCI runtime: an [engine.runtimes] entry in a containers.conf drop-in.

For hosts that prefer the shim to hooks.d: podman exec then goes through the
shim too (hooks.d cannot see an exec). `podman --runtime tiergate ...`, or
--default sets [engine] runtime = "tiergate".
"""

from __future__ import annotations

import json
from pathlib import Path

from tiergate.engines import files, parse, shim
from tiergate.engines.launcher import MARKER

DEFAULT_DROP_IN_DIR = Path("/etc/containers/containers.conf.d")
DROP_IN = "99-tiergate.conf"
NAME = "tiergate"
# containers/common's default list, plus ours (a drop-in replaces a list as a whole).
SUPPORTS_JSON = ["crun", "runc", "kata", "runsc", "youki", "krun", NAME]


def drop_in_text(exe: Path, default: bool, hooks_dirs: list[str] | None = None) -> str:
    lines = [f"{MARKER}: podman runtime {NAME}", "[engine]"]
    if default:
        lines.append(f"runtime = {json.dumps(NAME)}")
    if hooks_dirs:  # replaces podman's list as a whole: install passes the list it read, plus ours
        lines.append(f"hooks_dir = {json.dumps(hooks_dirs)}")
    lines += [f"runtime_supports_json = {json.dumps(SUPPORTS_JSON)}", "", "[engine.runtimes]",
              f"{NAME} = [{json.dumps(str(exe))}]", ""]
    return "\n".join(lines)


def check_confs(drop_in_dir: Path) -> None:
    """The containers.conf beside the drop-in dir and the other drop-ins parse (podman merges them all)."""
    confs = [drop_in_dir.parent / "containers.conf"]
    if drop_in_dir.is_dir():
        confs += sorted(p for p in drop_in_dir.glob("*.conf") if p.name != DROP_IN)
    for conf in confs:
        text = parse.read(conf)
        if text is not None:
            parse.toml(conf, text)


def install(drop_in_dir: Path, bin_dir: Path, default: bool = False, say=print,
            hooks_dirs: list[str] | None = None, **settings) -> Path:
    drop = Path(drop_in_dir) / DROP_IN
    check_confs(Path(drop_in_dir))
    exe = shim.install(bin_dir, f"podman-runtime {drop}", say=say, **settings)
    files.write(drop, drop_in_text(exe, default, hooks_dirs), 0o644, say)
    say(f"podman --runtime {NAME} ... (or reinstall with --default)" if not default else "podman now runs every container through tiergate-runtime")
    return exe


def uninstall(drop_in_dir: Path, bin_dir: Path, say=print) -> None:
    drop = Path(drop_in_dir) / DROP_IN
    files.remove(drop, MARKER, say)
    shim.uninstall(bin_dir, f"podman-runtime {drop}", say)
