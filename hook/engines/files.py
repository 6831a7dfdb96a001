"""Idempotent file edits for install/uninstall: write only what differs, remove only what we wrote."""

from __future__ import annotations

import os
from pathlib import Path


def write(path: Path, text: str, mode: int = 0o644, say=print) -> bool:
    path = Path(path)
    try:
        if path.read_text() == text and (path.stat().st_mode & 0o7777) == mode:
            say(f"unchanged {path}")
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tiergate-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    say(f"wrote {path}")
    return True


def symlink(path: Path, target: Path, say=print) -> None:
    path = Path(path)
    if path.is_symlink() and os.readlink(path) == str(target):
        say(f"unchanged {path} -> {target}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)
    say(f"linked {path} -> {target}")


def remove(path: Path, marker: str | None = None, say=print) -> None:
    """Remove a file (only if it carries `marker`, when given); empty parent dirs stay as the user had them."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        say(f"absent {path}")
        return
    if marker and not path.is_symlink() and marker not in path.read_text(errors="replace"):
        say(f"kept {path}: not written by tiergate")
        return
    path.unlink()
    say(f"removed {path}")
