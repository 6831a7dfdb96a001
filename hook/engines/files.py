"""Idempotent file edits for install/uninstall: write only what differs, remove only what we wrote."""

from __future__ import annotations

import os
from pathlib import Path

# Dropped into each directory install had to create, so uninstall removes
# exactly those (once nothing else is in them) and leaves the tree as it was.
CREATED = ".tiergate-created"


def mkdirs(path: Path) -> None:
    missing = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        (d / CREATED).write_text("made by `tiergate install`; `tiergate uninstall` removes it\n")


def prune(path: Path, say=print) -> None:
    """Remove directories install created, upwards from path, while they hold nothing else."""
    d = Path(path)
    while d != d.parent:
        try:
            names = os.listdir(d)
        except OSError:
            return
        if names != [CREATED]:
            return
        (d / CREATED).unlink()
        d.rmdir()
        say(f"removed {d}/")
        d = d.parent


def write(path: Path, text: str, mode: int = 0o644, say=print) -> bool:
    path = Path(path)
    try:
        if path.read_text() == text and (path.stat().st_mode & 0o7777) == mode:
            say(f"unchanged {path}")
            return False
    except OSError:
        pass
    mkdirs(path.parent)
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
    mkdirs(path.parent)
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
    prune(path.parent, say)
