"""Can the user who runs a hook run its launcher?

Rootless podman runs hooks as the user, and it reads the system hooks dirs
(/usr/share/containers/oci/hooks.d, /etc/containers/oci/hooks.d) too. A
launcher naming an interpreter under /root (mode 0700: a version manager's
Python) then fails with "Permission denied" for every user but root. So
install checks, before writing, that the interpreter and the directories the
launcher imports from are reachable by those users, and doctor checks each
registered launcher the same way. Pure mode-bit arithmetic over os.stat: no
process is started, no uid switched.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from pathlib import Path

R, X = os.R_OK, os.X_OK
NOBODY = 65534  # stands for "any user": a uid that owns nothing and is in no group but its own
SHARED_HOOKS_DIRS = ("/usr/share/containers/oci/hooks.d", "/etc/containers/oci/hooks.d")


def hook_users(hooks_dir: str | os.PathLike) -> dict[int, str]:
    """Who runs hooks from this dir: its owner when that is not root (a rootless user's dir);
    root, and any user too for the dirs every rootless podman reads; else root."""
    d = Path(os.path.abspath(hooks_dir))
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    owner = probe.stat().st_uid
    if owner != 0:
        return {owner: f"uid {owner} (rootless podman runs this dir's hooks as its owner)"}
    users = {0: "root"}
    if str(d) in SHARED_HOOKS_DIRS:
        users[NOBODY] = "any user (rootless podman reads this dir too)"
    return users


def _groups(uid: int) -> set[int]:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return {uid}
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    return groups


def _allows(st: os.stat_result, uid: int, gids: set[int], want: int) -> bool:
    if uid == 0:  # root needs an x bit somewhere to execute a file, nothing else
        return not (want & X) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
    bits = (st.st_mode >> shift) & 0o7
    return bits & want == want


def problem(path: str | os.PathLike, uid: int, want: int = R | X) -> str | None:
    """Why uid cannot use path (every directory on the way searchable, the file itself `want`), or None."""
    gids = _groups(uid)
    path = os.path.abspath(path)
    for p in dict.fromkeys((path, os.path.realpath(path))):
        for d in reversed(Path(p).parents):
            try:
                st = os.stat(d)
            except OSError as exc:
                return f"{d}: {exc.strerror}"
            if not _allows(st, uid, gids, X):
                return f"{d} (mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}) is not searchable"
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not _allows(st, uid, gids, want):
        what = " and ".join(n for bit, n in ((R, "readable"), (X, "executable")) if want & bit)
        real = os.path.realpath(path)
        name = path if real == path else f"{path} -> {real}"
        return f"{name} (mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}) is not {what}"
    return None


def launcher_needs(text: str) -> list[tuple[str, int]]:
    """What a Python launcher needs, from its text: the #! interpreter (x), the dirs it puts on sys.path (r+x)."""
    needs = []
    first = text.split("\n", 1)[0]
    if first.startswith("#!") and first[2:].split():
        needs.append((first[2:].split()[0], X))
    for line in text.splitlines():
        if line.startswith("sys.path."):
            needs += [(p, R | X) for p in re.findall(r"'(/[^']*)'", line)]
    return needs


def launcher_problem(exe: str | os.PathLike, uid: int) -> str | None:
    """Why uid cannot run this launcher (itself, its interpreter, its import dirs, tiergate's packages), or None."""
    found = problem(exe, uid, R | X)
    if found:
        return found
    try:
        text = Path(exe).read_text(errors="replace")[:8192]
    except OSError as exc:
        return f"{exe}: {exc.strerror}"
    needs = launcher_needs(text)
    from tiergate.engines.front import launcher_of

    python = launcher_of(exe)  # a compiled front runs its Python launcher on a miss
    if python:
        return launcher_problem(python, uid)
    for path, want in needs:
        if want == R | X and os.path.isdir(os.path.join(path, "tiergate")):
            needs += [(str(p), R | X) for p in Path(path, "tiergate").iterdir() if p.is_dir()]
    for path, want in needs:
        found = problem(path, uid, want)
        if found:
            return found
    return None
