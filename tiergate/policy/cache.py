"""The compiled-policy cache: the only policy code on the container-start path.

A start reads the small head of the compiled policy, stats the files it was
compiled from, and reads only the tier files and trust-index lines it uses
(stored.py). TOML parsing, attrs models and seccomp generation happen at
`tiergate install`, `tiergate policy apply|compile` and package upgrade; a start
compiles only when one of its inputs changed since (under the lock, once).
Every file it trusts (policy, seccomp profiles, cache entry, their
directories) must be owned by root or by the invoking user and not writable
by group or others, or the start fails closed. A policy that no longer
compiles leaves the last good compiled form in charge (marked "stale", so the
hook logs an error record on every start until it is fixed). Compiles take a
lock (one at a time; a start never reads half of one). Standard library only.
"""

from __future__ import annotations

import os
import stat

from tiergate.oci.bundle import real_path
from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import dumps, parse

from tiergate.core.errors import PolicyError
from tiergate.core.names import configs_dir
from tiergate.policy import stored

DEFAULT_CACHE_DIR = "/var/cache/tiergate"
SYSTEM_POLICY = "/etc/tiergate/policy.toml"
FORMAT = 4  # must equal compile.FORMAT
LOCK = ".lock"
FAILED = ".failed"  # beside an entry: the inputs that last failed to compile, and why
GRACE_NS = 60 * 10**9  # a replaced generation stays this long for starts still reading it
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
compiles = 0  # compiles this process ran (the hook records when a start paid for one)


def policy_path(explicit: str | None = None, cache_dir: str | None = None) -> str:
    """--policy, else $TIERGATE_POLICY, else /etc/tiergate/policy.toml, else the shipped default.

    /etc/tiergate/policy.toml counts as configured when anything is there (a dangling
    link included) or when this cache has compiled it before: once configured, its
    loss is an error, never a silent fallback to the shipped policy.
    """
    path = explicit or os.environ.get("TIERGATE_POLICY")
    if not path:
        used = cache_dir is not None and os.path.lexists(entry_path(cache_dir, SYSTEM_POLICY))
        path = SYSTEM_POLICY if os.path.lexists(SYSTEM_POLICY) or used else os.path.join(configs_dir(), "policy.toml")
    return os.path.abspath(path)


def cache_dir_for(explicit: str | None = None) -> str:
    """--cache-dir, else $TIERGATE_CACHE_DIR, else the system (root) or user cache dir."""
    cache_dir = explicit or os.environ.get("TIERGATE_CACHE_DIR")
    if cache_dir:
        return cache_dir
    from tiergate.telemetry.record import owner_uid, user_dir

    return DEFAULT_CACHE_DIR if owner_uid() == 0 else os.path.dirname(user_dir("XDG_CACHE_HOME", ".cache", "x"))


def entry_path(cache_dir: str, policy: str) -> str:
    # Keyed by the policy's path, spelled safely (hashlib would cost ~2 ms of import per start).
    return os.path.join(cache_dir, "policy" + policy.replace("%", "%25").replace("/", "%2F") + ".json")


def _unmapped_uid() -> int | None:
    from tiergate.host.facts import unmapped_uid

    return unmapped_uid()


def unsafe(st: os.stat_result, what: str, path: str) -> str | None:
    """Why a file or directory may not be trusted, or None: owner root (or the invoking user), no group/other write.

    Under a rootless engine the hook runs as root of the user's namespace: the user's files show as
    uid 0 and host root's as the unmapped overflow uid, which is accepted too (only root could have
    put a file the user cannot write where the user's configuration points)."""
    uid = os.geteuid()
    if st.st_uid not in (0, uid) and st.st_uid != _unmapped_uid():
        owner = "root" if uid == 0 else f"root or uid {uid}"
        return f"{what} {path} is owned by uid {st.st_uid}, not {owner}: refusing to use it"
    if st.st_mode & 0o022:
        return (f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                "refusing to use it")
    return None


def check_trusted(path: str, what: str, st: os.stat_result | None = None, seen: dict[str, str] | None = None) -> None:
    """Raise PolicyError (one line) unless `path`, its directory and (for a symlink) the link's
    directory may be trusted: whoever can write a directory can swap what is in it.

    seen: {directory: its real path} of directories already checked in this pass (policy_inputs
    checks several files of each directory)."""
    seen = {} if seen is None else seen
    where, name = os.path.split(os.path.abspath(path))
    try:
        link = stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        link = False  # the stat below says why
    real_where = seen.get(where) or real_path(where)
    real = real_path(path) if link else os.path.join(real_where, name)  # what realpath(path) gives
    real_dir = os.path.dirname(real) if link else real_where
    dirs = [d for d in dict.fromkeys((real_dir, where)) if d not in seen]
    for p, kind, s in ((real, what, st), *((d, f"{what} directory", None) for d in dirs)):
        try:
            s = s or os.stat(p)
        except OSError as exc:
            raise PolicyError(f"cannot read {kind}: {exc.strerror}", p) from None
        problem = unsafe(s, kind, p)
        if problem:
            raise PolicyError(problem, p)
    seen.update({real_dir: real_dir, where: real_where})


def policy_inputs(path: str) -> list[list[object]]:
    """Every file the compiled form depends on, with what stat says about it (each one checked)."""
    if not os.path.exists(path):
        why = "is a dangling symlink" if os.path.lexists(path) else "does not exist"
        raise PolicyError(f"the configured policy file {why} (tiergate never falls back to another policy)", path)
    files = [path, os.path.join(os.path.dirname(__file__), "compile.py"),
             os.path.join(_PACKAGE, "seccomp", "intersect.py")]  # the seccomp memo's answers (pipeline)
    for d in (os.path.join(os.path.dirname(path), "seccomp"), os.path.join(configs_dir(), "seccomp")):
        try:
            files += sorted(e.path for e in os.scandir(d) if e.name.endswith(".json"))
        except OSError:
            pass
    out: list[list[object]] = []
    seen: dict[str, str] = {}
    for f in dict.fromkeys(files):
        # tiergate's own code and shipped profiles count by name, size and mtime, wherever this copy
        # lives: the CLI and a hook pinned to a release copy (same files, copied with their mtimes)
        # then agree, and a policy apply or install compiles for the hook.
        own = f != path and f.startswith(_PACKAGE + os.sep)
        name = "tiergate:" + f[len(_PACKAGE) + 1:] if own else f
        try:
            st = os.stat(f)
        except OSError:
            out.append([name, None, None, None])
            continue
        check_trusted(f, "policy file" if f == path else "policy input", st, seen)
        out.append([name, st.st_mtime_ns, st.st_size, None if own else st.st_ino])
    return out


def read_entry(entry: str) -> dict | None:
    """The cached document, or None when absent or corrupt; PolicyError when it may not be trusted."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            problem = unsafe(os.fstat(fh.fileno()), "compiled policy cache", entry)
            if problem:
                raise PolicyError(problem, entry)
            cached = parse(fh.read().decode("utf-8"), "policy cache")
    except (OSError, UnicodeDecodeError, OciError):  # a corrupt cache only costs a recompile
        return None
    return cached if isinstance(cached, dict) and cached.get("format") == FORMAT else None


def check_cache_dir(cache_dir: str) -> None:
    try:
        st = os.stat(cache_dir)
    except OSError:
        return  # not made yet (or cannot be): _store makes it 0700, or the cache only costs speed
    problem = unsafe(st, "policy cache directory", cache_dir)
    if problem:
        raise PolicyError(problem, cache_dir)


class _Lock:
    """An exclusive flock on <cache_dir>/.lock: one compile at a time, per cache."""

    def __init__(self, cache_dir: str) -> None:
        self.path, self.fd = os.path.join(cache_dir, LOCK), -1

    def __enter__(self) -> _Lock:
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            pass  # an unwritable cache: nothing is stored, so there is nothing to race on
        return self

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def _usable(head: dict | None, entry: str, inputs: list, cache_dir: str) -> dict | None:
    """HEAD's policy when it was compiled from exactly these inputs; the last good one marked
    "stale" when these inputs are known not to compile (no compile per start); else None."""
    if head is None or not stored.valid_head(head):
        return None
    if head.get("inputs") == inputs:
        return stored.view(head, cache_dir, unsafe, entry)
    failed = read_entry(entry + FAILED)
    if failed is not None and failed.get("inputs") == inputs:
        return dict(stored.view(head, cache_dir, unsafe, entry), stale=str(failed.get("error")))
    return None


def load_noted(explicit: str | None, cache_dir: str | None, rec: dict) -> dict:
    """load_compiled for a start (hook or shim), noted in its record: the policy's digest, that
    this start paid for a compile (install, apply and upgrade should have), and, when the file on
    disk is broken and the last good policy was used, the error (record.write logs it)."""
    before = compiles
    policy = load_compiled(explicit, cache_dir)
    rec["policy"] = policy["digest"][:16]
    if compiles != before:
        rec["policy_compiled"] = True
    if policy.get("stale"):
        rec["policy_error"] = policy["stale"]
    return policy


def load_compiled(explicit: str | None = None, cache_dir: str | None = None) -> dict:
    """The compiled policy (docs/contracts.md): from the cache when it is fresh, else compiled
    under the lock (once: a start that waited for the lock finds it compiled) and cached.

    A policy that no longer compiles gives the last good compiled form with "stale"
    set to the error (file:line: reason). Raises PolicyError when there is none, when
    the policy file is gone, or when a file it would trust is not safely owned: the
    caller fails closed.
    """
    global compiles
    cache_dir = cache_dir_for(cache_dir)
    path = policy_path(explicit, cache_dir)
    check_cache_dir(cache_dir)
    entry = entry_path(cache_dir, path)
    inputs = policy_inputs(path)
    policy = _usable(read_entry(entry), entry, inputs, cache_dir)
    if policy is not None:
        return policy
    with _Lock(cache_dir):
        cached = read_entry(entry)  # another start may have compiled it (or found it broken) while we waited
        policy = _usable(cached, entry, inputs, cache_dir)
        if policy is not None:
            return policy
        from tiergate.policy.compile import compile_file  # slow path: TOML, attrs, seccomp generation

        compiles += 1
        try:
            compiled = compile_file(path)
        except PolicyError as exc:
            if cached is None or not stored.valid_head(cached) or cached.get("file") != os.path.realpath(path):
                raise
            try:
                _write_file(entry + FAILED, {"format": FORMAT, "inputs": inputs, "error": str(exc)})
            except OSError:
                pass
            return dict(stored.view(cached, cache_dir, unsafe, entry), stale=str(exc))
        compiled["inputs"] = inputs
        head = _store(entry, compiled)
        _remove(entry + FAILED)
    return stored.view(head, cache_dir, unsafe, entry) if head else compiled


def apply(source: str, live: str, cache_dir: str | None = None) -> dict:
    """`policy apply`: compile SOURCE as if it were LIVE, then switch: LIVE is replaced by one
    rename and its cache entry stored, under the compile lock. A broken SOURCE raises
    PolicyError and touches nothing."""
    from tiergate.policy.compile import compile_policy
    from tiergate.policy.load import load

    cache_dir = cache_dir_for(cache_dir)
    live = os.path.realpath(live)
    model, text = load(source)
    compiled = compile_policy(model, text, live)  # seccomp profiles resolve beside LIVE
    if os.path.exists(live):
        check_trusted(live, "policy file")
    else:
        check_trusted(os.path.dirname(live), "policy directory")
    check_cache_dir(cache_dir)
    with _Lock(cache_dir):
        write_atomic(live, text)
        entry = entry_path(cache_dir, live)
        compiled["inputs"] = policy_inputs(live)
        _store(entry, compiled)
        _remove(entry + FAILED)
    return compiled


def write_atomic(path: str, text: str) -> None:
    """PATH.tmp (0644), fsync, rename: a reader sees the old file or the new one, never half."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path + ".tmp", 0o644)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_file(path: str, doc: object) -> None:
    """Write beside and rename (0600); a cache that cannot be written only costs speed."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(doc if isinstance(doc, bytes) else dumps(doc))
        os.replace(tmp, path)
    except OSError:
        _remove(tmp)
        raise


def write_entry(path: str, doc: dict) -> None:
    """A JSON entry of the cache dir (read back by read_entry), written beside and renamed; a
    cache that cannot be written only costs speed."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        _write_file(path, doc)
    except OSError:
        pass


def _store(entry: str, compiled: dict) -> dict | None:
    """A new generation directory (one file per tier, the trust index), then the head naming it,
    renamed over the entry: a start sees the old generation or the new one. Returns the head, or
    None when the cache cannot be written (that only costs speed). Called under the lock."""
    import shutil
    import time

    cache_dir, base = os.path.split(entry)
    base = base.removesuffix(".json")
    gen = f"{base}.{time.time_ns():x}-{os.getpid()}.d"
    head, files = stored.split(compiled, gen)
    gen_path = os.path.join(cache_dir, gen)
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        os.mkdir(gen_path, 0o700)
        for name, data in files.items():
            _write_file(os.path.join(gen_path, name), data)
        replaced = _current_generation(entry)
        _write_file(entry, head)
    except OSError:
        shutil.rmtree(gen_path, ignore_errors=True)
        return None
    if replaced and _generation_of(replaced, base):
        try:  # its grace starts now: a start may have read the old head a moment ago
            os.utime(os.path.join(cache_dir, replaced), follow_symlinks=False)
        except OSError:
            pass
    now = time.time_ns()
    try:
        olds = [e for e in os.scandir(cache_dir) if e.name != gen and _generation_of(e.name, base)]
    except OSError:
        olds = []
    for old in olds:  # replaced generations, once no start can still be reading them
        try:
            if now - old.stat(follow_symlinks=False).st_mtime_ns > GRACE_NS:
                shutil.rmtree(old.path, ignore_errors=True)
        except OSError:
            pass
    return head


def _current_generation(entry: str) -> str | None:
    """The generation directory the entry's head names now (None: no head, or not readable)."""
    try:
        with open(entry, "rb") as fh:
            doc = parse(fh.read().decode("utf-8"), "compiled policy")
    except (OSError, UnicodeDecodeError, OciError):
        return None
    gen = doc.get("gen") if isinstance(doc, dict) else None
    return gen if isinstance(gen, str) else None


def _generation_of(name: str, base: str) -> bool:
    """Is NAME a generation directory of the entry BASE (`<base>.<hex>-<pid>.d`), not of another policy?"""
    stamp = name[len(base) + 1:-2]
    return name.startswith(base + ".") and name.endswith(".d") and "." not in stamp and "-" in stamp


def main(argv: list[str] | None = None) -> int:
    """`python -m tiergate.policy.cache [--policy FILE] [--cache-dir DIR]`: compile ahead, with the
    code that runs it (install and `policy compile` run it as each registered hook's release), so
    a start finds the cache fresh. Prints one line; exit 1 with the reason when it does not compile."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    opts: dict[str, str | None] = {"--policy": None, "--cache-dir": None}
    for key, value in zip(args[::2], args[1::2]):
        if key not in opts:
            break
        opts[key] = value
    else:
        if len(args) % 2 == 0:
            try:
                policy = load_compiled(opts["--policy"], opts["--cache-dir"])
            except PolicyError as exc:
                print(f"not compiled: {exc}")
                return 1
            if policy.get("stale"):
                print(f"not compiled: {policy['stale']} (starts use the last good policy {policy['digest'][:16]})")
                return 1
            where = cache_dir_for(opts["--cache-dir"])
            print(f"compiled {policy['file']} into {where}" if compiles else
                  f"unchanged {where}: {policy['file']} compiled", f"(digest {policy['digest'][:16]})")
            return 0
    print("usage: python -m tiergate.policy.cache [--policy FILE] [--cache-dir DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
