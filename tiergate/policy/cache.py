"""The compiled-policy cache: the only policy code on the container-start path.

A start reads one JSON file and stats the files it was compiled from; TOML
parsing, attrs models and seccomp generation happen only when one changed.
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

from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import dumps, parse

from tiergate.core.errors import PolicyError
from tiergate.core.names import configs_dir

DEFAULT_CACHE_DIR = "/var/cache/tiergate"
SYSTEM_POLICY = "/etc/tiergate/policy.toml"
FORMAT = 3  # must equal compile.FORMAT
LOCK = ".lock"
FAILED = ".failed"  # beside an entry: the inputs that last failed to compile, and why


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


def check_trusted(path: str, what: str, st: os.stat_result | None = None) -> None:
    """Raise PolicyError (one line) unless `path`, its directory and (for a symlink) the link's
    directory may be trusted: whoever can write a directory can swap what is in it."""
    real = os.path.realpath(path)
    dirs = dict.fromkeys((os.path.dirname(real), os.path.dirname(os.path.abspath(path))))
    for p, kind, s in ((real, what, st), *((d, f"{what} directory", None) for d in dirs)):
        try:
            s = s or os.stat(p)
        except OSError as exc:
            raise PolicyError(f"cannot read {kind}: {exc.strerror}", p) from None
        problem = unsafe(s, kind, p)
        if problem:
            raise PolicyError(problem, p)


def policy_inputs(path: str) -> list[list[object]]:
    """Every file the compiled form depends on, with what stat says about it (each one checked)."""
    if not os.path.exists(path):
        why = "is a dangling symlink" if os.path.lexists(path) else "does not exist"
        raise PolicyError(f"the configured policy file {why} (tiergate never falls back to another policy)", path)
    files = [path, os.path.join(os.path.dirname(__file__), "compile.py")]
    for d in (os.path.join(os.path.dirname(path), "seccomp"), os.path.join(configs_dir(), "seccomp")):
        try:
            files += sorted(e.path for e in os.scandir(d) if e.name.endswith(".json"))
        except OSError:
            pass
    out: list[list[object]] = []
    for f in dict.fromkeys(files):
        try:
            st = os.stat(f)
        except OSError:
            out.append([f, None, None, None])
            continue
        check_trusted(f, "policy file" if f == path else "policy input")
        out.append([f, st.st_mtime_ns, st.st_size, st.st_ino])
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


def load_compiled(explicit: str | None = None, cache_dir: str | None = None) -> dict:
    """The compiled policy, from the cache when it is fresh, compiling (and caching) otherwise.

    A policy that no longer compiles gives the last good compiled form with "stale"
    set to the error (file:line: reason). Raises PolicyError when there is none, when
    the policy file is gone, or when a file it would trust is not safely owned: the
    caller fails closed.
    """
    cache_dir = cache_dir_for(cache_dir)
    path = policy_path(explicit, cache_dir)
    check_cache_dir(cache_dir)
    entry = entry_path(cache_dir, path)
    inputs = policy_inputs(path)
    cached = read_entry(entry)
    if cached is not None and cached.get("inputs") == inputs:
        return cached
    failed = read_entry(entry + FAILED)
    if cached is not None and failed is not None and failed.get("inputs") == inputs:
        return dict(cached, stale=str(failed.get("error")))  # known broken: do not pay a compile per start
    with _Lock(cache_dir):
        cached = read_entry(entry)  # another start may have compiled it while we waited
        if cached is not None and cached.get("inputs") == inputs:
            return cached
        from tiergate.policy.compile import compile_file  # slow path: TOML, attrs, seccomp generation

        try:
            compiled = compile_file(path)
        except PolicyError as exc:
            if cached is None or cached.get("file") != os.path.realpath(path):
                raise
            _store(entry + FAILED, {"format": FORMAT, "inputs": inputs, "error": str(exc)})
            return dict(cached, stale=str(exc))
        compiled["inputs"] = inputs
        _store(entry, compiled)
        _remove(entry + FAILED)
    return compiled


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


def _store(entry: str, compiled: dict) -> None:
    """Write beside and rename; a cache that cannot be written only costs speed."""
    tmp = f"{entry}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(entry), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(dumps(compiled))
        os.replace(tmp, entry)
    except OSError:
        _remove(tmp)
