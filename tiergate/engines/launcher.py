"""The hook program engines call, and the Python launcher behind it: a real interpreter,
isolated, without site.

With a C compiler (and not --no-warm), BIN/tiergate-hook is the compiled front (engines/front.py,
front.c), a client of the warm helper, and the Python launcher (BIN/lib/tiergate-hook.py) runs
only on a miss; otherwise BIN/tiergate-hook is the Python launcher. `python3 -I -S` starts in
~5 ms here; a console script through site (and an editable install's import finder) costs
10-20 ms more on every container start.

Upgrades never change a running hook half-way: install copies the packages into
BIN/lib/releases/<content digest>/ (built aside, renamed into place, never
changed after) and points BIN/lib/current at it with one rename. The launcher
resolves `current` once when it starts, so every module one hook run imports
comes from one release; `pip install -U` changes nothing until `tiergate install`
runs again, and the release a hook may still be running from is kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MARKER = "# written by tiergate install"


def package_dirs() -> dict[str, Path]:
    """The tiergate package: what a release copies."""
    import tiergate

    return {"tiergate": Path(tiergate.__file__).resolve().parent}


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


CODE = "tiergate.code"  # in a release: every module's code, marshalled, read by the launcher (engines.boot)
BOOT = "tiergate.engines.boot"


def script(lib_dir: Path, entry: str, args: str = "", warm: bool = False, note: str = "") -> str:
    """The Python launcher: pin the release, read its CODE file, and run `main(ARGS)` of `entry`
    through BOOT's code from it (the finder, the exit); a release without CODE imports from sys.path.
    With `warm`, it is the one behind a compiled front (engines/front.c): its text names the warm
    helper's socket (its key: the hash of this text, fixed here), and it starts that helper first
    when the front asks (SPAWN_ENV: no helper listens)."""
    from tiergate.engines import front
    from tiergate.engines import warm as helper

    link = str(Path(lib_dir) / CURRENT)
    run = f"run(_code, {entry!r}, dict({args}))\n"
    spawn = ""
    if warm:
        sock = helper.socket_prefix(helper.KEY_PLACEHOLDER)
        spawn = f"_spawn = os.environ.pop({front.SPAWN_ENV!r}, None) == '1'  # the front found no warm helper\n"
        run = (f"if _spawn and spawn():  # the warm helper for the next starts (engines/warm.py)\n"
               f"    run(_code, {helper.ENTRY!r}, dict(release=_release, link={link!r}, sock={sock!r}, "
               f"entry={entry!r}, kwargs=dict({args})))\n" + run)
    text = (f"#!{interpreter()} -IS\n{MARKER}{': ' + note if note else ''}\n"
            f"import os, sys\n{spawn}"
            f"_release = os.path.realpath({link!r})  # pinned for this run\n"
            "sys.path.insert(0, _release)\n"
            f"sys.path.extend({dependency_dirs()!r})  # {', '.join(DEPENDENCIES)}\n"
            "try:\n"
            f"    with open(os.path.join(_release, {CODE!r}), 'rb') as _fh:\n"
            "        _code = __import__('marshal').loads(_fh.read())\n"
            f"    exec(__import__('marshal').loads(_code[{BOOT!r}][2]))  # defines run(), spawn()\n"
            "except (OSError, KeyError):\n"
            "    _code = {}\n"
            f"    from {BOOT} import run, spawn\n" + run)
    return text.replace(helper.KEY_PLACEHOLDER, helper.key_of(text)) if warm else text


def write_code(tree: Path, final: Path) -> None:
    """tree/CODE: {module: (is a package, its source path once `tree` is renamed to `final`,
    marshalled code, its .pyc path)} for every module of the packages in tree, and the standard library's
    __future__, which every tiergate module imports (found on sys.path, it costs a start ~0.5 M)."""
    import __future__
    import importlib.util
    import marshal

    def entry(package: bool, source: Path, origin: str) -> tuple[bool, str, bytes, str]:
        code = compile(source.read_bytes(), origin, "exec", dont_inherit=True)
        return package, origin, marshal.dumps(code), importlib.util.cache_from_source(origin)

    future = Path(__future__.__file__ or "")
    out = {"__future__": entry(False, future, str(future))}
    for path in sorted(Path(tree).rglob("*.py")):
        rel = path.relative_to(tree)
        parts = list(rel.with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = entry(package, path, str(Path(final) / rel))
    (Path(tree) / CODE).write_bytes(marshal.dumps(out))


def needs() -> list[tuple[str, int]]:
    """What a launcher written now needs to be runnable: the interpreter, the packages, the dependency dirs."""
    return ([(interpreter(), os.X_OK)] + [(str(p), os.R_OK | os.X_OK) for p in package_dirs().values()]
            + [(d, os.R_OK | os.X_OK) for d in dependency_dirs()])


CURRENT = "current"
RELEASES = "releases"
_SKIP = ("__pycache__", "*.pyc")


def release_digest(dirs: dict[str, Path]) -> str:
    import fnmatch
    import hashlib

    h = hashlib.sha256()
    for name, root in sorted(dirs.items()):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in _SKIP))
            for f in sorted(filenames):
                if any(fnmatch.fnmatch(f, p) for p in _SKIP):
                    continue
                path = Path(dirpath) / f
                h.update(f"{name}/{path.relative_to(root)}\0".encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def install_release(lib: Path, say=print) -> Path:
    """lib/releases/<digest>/tiergate: a private copy, then lib/current -> it (one rename)."""
    import compileall

    from tiergate.engines import files

    dirs = package_dirs()
    release = lib / RELEASES / release_digest(dirs)
    current = lib / CURRENT
    before = os.path.realpath(current) if current.is_symlink() else None
    def finish(tmp: Path) -> None:
        compileall.compile_dir(str(tmp), quiet=1)
        write_code(tmp, release)

    files.install_tree(release, dict(dirs), _SKIP, finish=finish, say=say)
    files.symlink(current, Path(f"{RELEASES}/{release.name}"), say)
    keep = {str(release), before}
    try:
        olds = [p for p in (lib / RELEASES).iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        olds = []
    for old in olds:  # older releases: no hook can still be running from them
        if str(old) not in keep and os.path.realpath(old) not in keep:
            files.remove_tree(old, say)
    _remove_legacy(lib, say)
    return release


HOOK = "tiergate-hook"  # BIN/HOOK: what podman's hooks.d and the shim's createRuntime hook call
HOOK_LAUNCHER = "lib/tiergate-hook.py"  # BIN/HOOK_LAUNCHER: the Python launcher behind a compiled front


def install_hook(bin_dir: Path, say=print, warm: bool = True) -> Path:
    """The hook program and its pinned package release; shared by hooks.d and the shim. With `warm`
    and a C compiler, BIN/tiergate-hook is the compiled front (engines/front.c) and the Python
    launcher is BIN/lib/tiergate-hook.py; otherwise BIN/tiergate-hook is the Python launcher."""
    lib = Path(bin_dir) / "lib"
    install_release(lib, say)
    exe = Path(bin_dir) / HOOK
    install_front(exe, Path(bin_dir) / HOOK_LAUNCHER, lib, "tiergate.hook.stages", say=say, warm=warm)
    return exe


def install_front(exe: Path, py: Path, lib: Path, entry: str, args: str = "", say=print, warm: bool = True,
                  alone: Path | None = None, note: str = "", constants: str = "", fallback: str | None = None) -> bool:
    """`exe`: the compiled front (engines/front.py) of the Python launcher `py` for `entry`, with
    `constants` added to its header; or, without `warm` or a C compiler, the Python launcher alone at
    `alone` (default `exe`), and the other path goes (or, at `exe`, becomes `fallback`: the shim's sh
    front). The helpers of a launcher this replaces are stopped. True: a front."""
    import sys

    from tiergate.engines import files, front
    from tiergate.engines import warm as helper

    alone = alone or exe
    old = _warm_key(exe) or _warm_key(py)
    cc = front.compiler() if warm else None
    if warm and cc is None:
        say(f"no C compiler (cc) on PATH: {alone} is the Python launcher, every start in its own process")
    text, binary = script(lib, entry, args, warm=cc is not None, note=note), None
    if cc is not None and files._dry is None:
        files.mkdirs(exe.parent)
        try:
            binary = front.build(exe, front.header(str(lib / CURRENT), helper.socket_prefix(helper.key_in(text) or ""),
                                                   interpreter(), str(py), MARKER) + constants, cc)
        except RuntimeError as exc:
            print(f"tiergate: warning: cannot compile {front.SOURCE} with {cc} ({exc}): {alone} is the Python "
                  "launcher, every start in its own process", file=sys.stderr)
            cc, text = None, script(lib, entry, args, note=note)
    if cc is not None:
        files.write(py, text, 0o755, say)  # first: the front runs it
        if binary is not None:
            files.write(exe, binary, 0o755, say)
        else:
            say(f"would compile {front.SOURCE} into {exe}")
    else:
        files.write(alone, text, 0o755, say)  # first: a fallback runs it
        for other in {exe, py} - {alone}:
            if other == exe and fallback is not None:
                files.write(exe, fallback, 0o755, say)
            elif other.exists():
                files.remove(other, MARKER, say)
    if old and old != helper.key_in(text) and files._dry is None:
        helper.stop(old + "-", say=say)
    return cc is not None


def remove_front(exe: Path, py: Path, say=print) -> None:
    """Undo install_front: the helpers of its launcher (by the pid in their pid files), the front, the launcher."""
    from tiergate.engines import files

    key = _warm_key(exe) or _warm_key(py)
    if key and files._dry is None:
        from tiergate.engines import warm

        warm.stop(key + "-", say=say)
    for path in (exe, py):
        if path == exe or path.exists() or path.is_symlink():
            files.remove(path, MARKER, say)


def _warm_key(exe: Path) -> str | None:
    """The warm-helper key the launcher or front at `exe` uses (None: none, or no file)."""
    from tiergate.engines import warm

    try:
        return warm.key_in(Path(exe).read_text(errors="replace"))
    except OSError:
        return None


def precompile(bin_dir: Path, settings: dict, say=print) -> bool:
    """Compile the policy the hook in BIN_DIR uses into its cache, run as that hook runs (its
    pinned release, no TIERGATE_* environment, its --policy/--cache-dir), so no start pays for
    the compile. Says one line; False when the policy did not compile."""
    import subprocess

    args = [a for key in ("policy", "cache_dir") if settings.get(key)
            for a in ("--" + key.replace("_", "-"), str(settings[key]))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    try:
        proc = subprocess.run([interpreter(), "-IS", "-c", script(Path(bin_dir) / "lib", "tiergate.policy.cache"),
                               *args], env=env, capture_output=True, text=True, timeout=600, check=False)
        line = (proc.stdout.strip() or proc.stderr.strip() or f"exit {proc.returncode}").splitlines()[-1]
    except (OSError, subprocess.SubprocessError) as exc:
        proc, line = None, str(exc)
    if proc is not None and proc.returncode == 0:
        say(line)
        return True
    print(f"tiergate: warning: the policy for {bin_dir}/tiergate-hook is {line}; starts compile it (or "
          "refuse) until it compiles", file=sys.stderr)
    return False


def remove_hook(bin_dir: Path, say=print) -> None:
    """Undo install_hook; directories install created go with their last file (files.prune)."""
    from tiergate.engines import files

    lib = Path(bin_dir) / "lib"
    remove_front(Path(bin_dir) / HOOK, Path(bin_dir) / HOOK_LAUNCHER, say)
    files.remove(lib / CURRENT, None, say)
    try:
        releases = [p for p in (lib / RELEASES).iterdir() if p.is_dir()]
    except OSError:
        releases = []
    for release in releases:
        files.remove_tree(release, say)
    files.prune(lib / RELEASES, say)
    _remove_legacy(lib, say)


def _remove_legacy(lib: Path, say) -> None:
    """The symlink layout of earlier versions: lib/tiergate/{oci,hook,configs}."""
    from . import files

    for name in ("oci", "hook", "configs"):
        legacy = lib / "tiergate" / name
        if legacy.is_symlink():
            files.remove(legacy, None, say)


def read_script(text: str) -> dict:
    """What a launcher `tiergate install` wrote names, in every form script() has written:
    "path", the directory it puts first on sys.path (the pinned `current` release link, or an
    older layout's lib dir), and "args", what it passes to main (the shim's conf=...). Empty for
    anything else. The one reader of launcher text (doctor)."""
    import ast

    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return {}
    out: dict = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        consts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if name in ("realpath", "insert") and consts and "path" not in out:
            out["path"] = consts[-1]  # os.path.realpath('<lib>/current'), or sys.path.insert(0, '<lib>')
        elif name in ("main", "dict") and node.keywords:  # main(conf=...) before engines.boot, dict(conf=...) since
            out["args"] = {k.arg: k.value.value for k in node.keywords if k.arg and isinstance(k.value, ast.Constant)}
    return out
