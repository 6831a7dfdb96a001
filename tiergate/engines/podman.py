"""Podman (and CRI-O, buildah): OCI hooks in a hooks.d directory, schema 1.0.0.

Podman 4.x reads hooks only from containers.conf `hooks_dir` (its built-in
default is /usr/share/containers/oci/hooks.d alone: /etc/containers/oci/hooks.d
is NOT read unless listed) or `podman --hooks-dir DIR`. precreate (a podman
extension stage) rewrites the spec; prestart (optional) verifies the bundle.

A hooks.d hook fails OPEN when its program is missing (podman skips it and
starts the container unhardened), so the default install also makes the shim
podman's default runtime (podman_runtime.py): a missing runtime fails every
start. The hook stays for `podman --runtime X`, which bypasses the runtime.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tiergate.engines import files
from tiergate.engines.launcher import install_hook, remove_hook

PODMAN_BUILTIN_HOOKS_DIRS = ("/usr/share/containers/oci/hooks.d",)  # containers/common's DefaultHooksDirs
OTHER_HOOKS_DIRS = ("/etc/containers/oci/hooks.d",)  # read by CRI-O and by older podman; where we wrote before
DEFAULT_BIN_DIR = Path("/usr/local/libexec/tiergate")
# Sorted last among precreate hooks: nothing after tiergate rewrites the spec.
HOOK_FILES = {"precreate": "99-tiergate-precreate.json", "prestart": "99-tiergate-prestart.json"}
# Seconds podman lets the hook run (hooks.d has no default: a hung hook hung `podman run`).
# On expiry podman 4.3 kills it and fails the start ("setting up OCI Hooks: context deadline
# exceeded", rc 126): closed. A cold start (policy compile, nft load) takes well under 2 s here.
HOOK_TIMEOUT = 15


def hook_json(exe: Path, stage: str, extra: list[str]) -> str:
    doc = {
        "version": "1.0.0",
        "hook": {"path": str(exe), "args": ["tiergate-hook", stage, *extra], "timeout": HOOK_TIMEOUT},
        "when": {"always": True},
        "stages": [stage],
    }  # hooks.d 1.0.0 allows no extra keys: uninstall recognises ours by the hook path
    return json.dumps(doc, indent=2) + "\n"


def containers_confs(home: str | None = None, env=None) -> list[str]:
    """containers.conf files in the order podman 4.3 merges them (later wins), drop-ins included."""
    env = os.environ if env is None else env
    if env.get("CONTAINERS_CONF"):
        return [env["CONTAINERS_CONF"]]  # podman reads only this one when it is set
    out = []
    bases = ["/usr/share/containers/containers.conf", "/etc/containers/containers.conf"]
    if home:  # rootless: the user's file and drop-ins come last
        bases.append(os.path.join(home, ".config/containers/containers.conf"))
    for base in bases:
        out.append(base)
        try:
            out += sorted(os.path.join(base + ".d", n) for n in os.listdir(base + ".d") if n.endswith(".conf"))
        except OSError:
            pass
    return [f for f in out if os.path.isfile(f)]


def hooks_dirs_read(confs: list[str], skip: str | None = None) -> tuple[list[str], str]:
    """The hooks dirs podman reads (the last containers.conf setting hooks_dir wins), and from where."""
    import tomllib

    dirs, source = list(PODMAN_BUILTIN_HOOKS_DIRS), "podman's built-in default"
    for f in confs:
        if skip and os.path.basename(f) == skip:
            continue
        try:
            with open(f, "rb") as fh:
                hd = tomllib.load(fh).get("engine", {}).get("hooks_dir")
        except (OSError, ValueError):
            continue
        if isinstance(hd, list) and hd:
            dirs, source = [str(x) for x in hd], f"hooks_dir in {f}"
    return dirs, source


# In the bin dir: every hooks dir install wrote to (any path, `--hooks-dir` included), so that
# uninstalling one never removes the program another still calls (podman would then run
# every container there with no hook at all).
HOOKS_DIRS_FILE = "tiergate-hook.dirs"


def install(hooks_dir: Path, bin_dir: Path, extra: list[str], prestart: bool, say=print, warm: bool = True) -> None:
    exe = install_hook(bin_dir, say, warm=warm)
    files.write(hooks_dir / HOOK_FILES["precreate"], hook_json(exe, "precreate", extra), 0o644, say)
    if prestart:
        files.write(hooks_dir / HOOK_FILES["prestart"], hook_json(exe, "prestart", extra), 0o644, say)
    else:
        files.remove(hooks_dir / HOOK_FILES["prestart"], str(exe), say)
    known = files.lines(Path(bin_dir) / HOOKS_DIRS_FILE)
    if str(Path(hooks_dir).absolute()) not in known:
        files.set_lines(Path(bin_dir) / HOOKS_DIRS_FILE, [*known, str(Path(hooks_dir).absolute())], say)


def uninstall(hooks_dirs: list[Path], bin_dir: Path, say=print) -> None:
    """Remove our hook files from each dir; the launcher too unless a runtime shim or another hooks
    dir still calls it."""
    from tiergate.engines.shim import users

    exe = bin_dir / "tiergate-hook"
    dirs = list(dict.fromkeys(Path(x).absolute() for x in hooks_dirs))
    for d in dirs:
        for name in HOOK_FILES.values():
            if (d / name).exists() or len(hooks_dirs) == 1:
                files.remove(d / name, str(exe), say)
    release_hook(bin_dir, say, users(bin_dir), gone=dirs)


def release_hook(bin_dir: Path, say=print, still: Sequence[str] = (), gone: Sequence[Path] = ()) -> None:
    """Remove the hook launcher unless `still` (e.g. runtime shim users) or a hook file in a hooks
    dir install wrote to, or one podman reads, calls it (`gone`: dirs being emptied now). The list
    of dirs keeps only live ones."""
    exe = Path(bin_dir) / "tiergate-hook"
    listed = files.lines(Path(bin_dir) / HOOKS_DIRS_FILE)
    live = [p for p in hooks_using(exe, dirs=listed) if p.parent.absolute() not in gone]
    files.set_lines(Path(bin_dir) / HOOKS_DIRS_FILE, [d for d in listed if any(p.parent == Path(d) for p in live)], say)
    live += [p for p in hooks_using(exe) if p.parent.absolute() not in gone]
    users = [*still, *dict.fromkeys(str(p) for p in live)]
    if users:
        say(f"kept {exe}: still used by {', '.join(users)}")
        return
    remove_hook(bin_dir, say)


def hooks_using(exe: Path, home: str | None = None, dirs: list[str] | None = None) -> list[Path]:
    """Our hook files that call `exe`, in `dirs` (default: any dir podman reads or we ever wrote to)."""
    if dirs is None:
        dirs = [*hooks_dirs_read(containers_confs(home))[0], *PODMAN_BUILTIN_HOOKS_DIRS, *OTHER_HOOKS_DIRS]
        if home:
            dirs.append(user_hooks_dir(home))
    found = []
    for d in dict.fromkeys(Path(x) for x in dirs):
        for name in HOOK_FILES.values():
            try:
                if str(exe) in (d / name).read_text(errors="replace"):
                    found.append(d / name)
            except OSError:
                pass
    return found


def user_hooks_dir(home: str) -> str:
    """Rootless: no dir podman reads by default is the user's, so install lists this one in hooks_dir."""
    return os.path.join(home, ".config/containers/oci/hooks.d")
