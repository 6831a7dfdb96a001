"""Idempotent file edits for install/uninstall: write only what differs, remove only what we wrote.

Every change install and uninstall make to the host goes through this module,
so `with dry_run():` turns them all into a printed unified diff (and the
directories, links and removals they would make) that changes nothing.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from pathlib import Path

# Dropped into each directory install had to create, so uninstall removes
# exactly those (once nothing else is in them) and leaves the tree as it was.
CREATED = ".tiergate-created"

_dry: set[Path] | None = None  # inside dry_run(): the paths a real run would have created or removed so far


@contextlib.contextmanager
def dry_run():
    """Within this block nothing is written: each change is said as a diff (`--- a` / `+++ b`) or a line."""
    global _dry
    outer, _dry = _dry, set()
    try:
        yield
    finally:
        _dry = outer


def _diff(path: Path, old: str | None, new: str | None) -> str:
    lines = difflib.unified_diff((old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
                                 "/dev/null" if old is None else str(path), "/dev/null" if new is None else str(path))
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines).rstrip("\n")


def _read(path: Path) -> str | None:
    """A text file's text; a program's (NUL bytes) as one line saying so."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return f"(a program, {len(data)} bytes)\n" if b"\0" in data else data.decode(errors="replace")


def mkdirs(path: Path) -> None:
    missing = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if _dry is not None:
        for d in reversed(missing):
            if d not in _dry:
                _dry.add(d)
                print(f"would create {d}/")
        return
    for d in reversed(missing):
        d.mkdir()
        (d / CREATED).write_text("made by `tiergate install`; `tiergate uninstall` removes it\n")


def prune(path: Path, say=print) -> None:
    """Remove directories install created, upwards from path, while they hold nothing else."""
    d = Path(path)
    while d != d.parent:
        try:
            names = [n for n in os.listdir(d) if _dry is None or d / n not in _dry]
        except OSError:
            return
        if names != [CREATED]:
            return
        if _dry is not None:
            _dry.update((d / CREATED, d))
            say(f"would remove {d}/")
        else:
            (d / CREATED).unlink()
            d.rmdir()
            say(f"removed {d}/")
        d = d.parent


def write(path: Path, text: str | bytes, mode: int = 0o644, say=print) -> bool:
    """Write `text` (bytes: a compiled program) beside `path`, then rename it into place."""
    path = Path(path)
    data = text.encode() if isinstance(text, str) else text
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode:
            say(f"unchanged {path}")
            return False
    except OSError:
        pass
    if _dry is not None:
        mkdirs(path.parent)
        old = _read(path)
        if isinstance(text, bytes):
            say(f"would write {path} (a program, {len(data)} bytes)")
        elif old != text:
            say(_diff(path, old, text))
        if old is not None and (path.stat().st_mode & 0o7777) != mode:
            say(f"would chmod {mode:o} {path}")
        return True
    mkdirs(path.parent)
    tmp = path.with_name(f".{path.name}.tiergate-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    say(f"wrote {path}")
    return True


def symlink(path: Path, target: Path, say=print) -> None:
    """Point path at target with one rename: a reader sees the old link or the new one, never none."""
    path = Path(path)
    if path.is_symlink() and os.readlink(path) == str(target):
        say(f"unchanged {path} -> {target}")
        return
    mkdirs(path.parent)
    if _dry is not None:
        say(f"would link {path} -> {target}")
        return
    tmp = path.with_name(f".{path.name}.tiergate-tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, path)
    say(f"linked {path} -> {target}")


def install_tree(dest: Path, sources: dict[str, Path], skip: tuple[str, ...] = (), finish=None, say=print) -> None:
    """dest/<name>/ a copy of each source dir (minus `skip` patterns), built beside and renamed into
    place, so dest is whole or absent; an existing dest is kept as it is (it is never changed)."""
    import shutil

    dest = Path(dest)
    if dest.is_dir():
        say(f"unchanged {dest}/")
        return
    mkdirs(dest.parent)
    if _dry is not None:
        _dry.add(dest)
        say(f"would copy {', '.join(str(s) for s in sources.values())} into {dest}/")
        return
    tmp = dest.with_name(f".{dest.name}.tiergate-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, src in sources.items():
        shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns(*skip))
    if finish:
        finish(tmp)
    os.rename(tmp, dest)
    say(f"wrote {dest}/")


def remove_tree(path: Path, say=print) -> None:
    """Remove a directory install_tree made, whole."""
    import shutil

    path = Path(path)
    if _dry is not None:
        _dry.add(path)
        say(f"would remove {path}/")
        return
    shutil.rmtree(path, ignore_errors=True)
    say(f"removed {path}/")


def remove(path: Path, marker: str | None = None, say=print) -> None:
    """Remove a file (only if it carries `marker`, when given); empty parent dirs stay as the user had them."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        say(f"absent {path}")
        return
    if marker and not path.is_symlink() and marker not in path.read_text(errors="replace"):
        say(f"kept {path}: not written by tiergate")
        return
    if _dry is not None:
        _dry.add(path)
        say(f"would remove {path} -> {os.readlink(path)}" if path.is_symlink() else _diff(path, _read(path), None))
        prune(path.parent, say)
        return
    path.unlink()
    say(f"removed {path}")
    prune(path.parent, say)


def lines(path: Path) -> list[str]:
    """The non-empty lines of a registration list (e.g. who uses a shared launcher); [] if absent."""
    try:
        return [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return []


def set_lines(path: Path, entries: list[str], say=print) -> None:
    """Write a registration list, or remove it once empty."""
    if entries:
        write(path, "".join(f"{e}\n" for e in entries), 0o644, say)
    else:
        remove(path, None, say)
