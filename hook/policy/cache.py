"""The compiled-policy cache: the only policy code on the container-start path.

A start reads one JSON file and stats the files it was compiled from; TOML
parsing, attrs models and seccomp generation happen only when one changed.
Standard library only.
"""

from __future__ import annotations

import os

from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import dumps, parse

DEFAULT_CACHE_DIR = "/var/cache/tiergate"
SYSTEM_POLICY = "/etc/tiergate/policy.toml"
FORMAT = 2  # must equal compile.FORMAT


def _shipped_dir() -> str:
    from tiergate import configs

    return os.path.dirname(configs.__file__)


def policy_path(explicit: str | None = None) -> str:
    """--policy, else $TIERGATE_POLICY, else /etc/tiergate/policy.toml, else the shipped default."""
    path = explicit or os.environ.get("TIERGATE_POLICY")
    if not path:
        path = SYSTEM_POLICY if os.path.exists(SYSTEM_POLICY) else os.path.join(_shipped_dir(), "policy.toml")
    return os.path.abspath(path)


def _inputs(path: str) -> list[list]:
    """Every file the compiled form depends on, with what stat says about it."""
    files = [path, os.path.join(os.path.dirname(__file__), "compile.py")]
    for d in (os.path.join(os.path.dirname(path), "seccomp"), os.path.join(_shipped_dir(), "seccomp")):
        try:
            files += sorted(e.path for e in os.scandir(d) if e.name.endswith(".json"))
        except OSError:
            pass
    out = []
    for f in dict.fromkeys(files):
        try:
            st = os.stat(f)
            out.append([f, st.st_mtime_ns, st.st_size, st.st_ino])
        except OSError:
            out.append([f, None, None, None])
    return out


def load_compiled(explicit: str | None = None, cache_dir: str | None = None) -> dict:
    """The compiled policy, from the cache when it is fresh, compiling (and caching) otherwise.

    Raises PolicyError when the policy is broken: the caller fails closed.
    """
    path = policy_path(explicit)
    if not cache_dir:
        cache_dir = os.environ.get("TIERGATE_CACHE_DIR")
    if not cache_dir:
        from ..record import owner_uid, user_dir

        cache_dir = DEFAULT_CACHE_DIR if owner_uid() == 0 else os.path.dirname(user_dir("XDG_CACHE_HOME", ".cache", "x"))
    # Keyed by the policy's path, spelled safely (hashlib would cost ~2 ms of import per start).
    entry = os.path.join(cache_dir, "policy" + path.replace("%", "%25").replace("/", "%2F") + ".json")
    inputs = _inputs(path)
    try:
        with open(entry, "rb") as fh:
            cached = parse(fh.read().decode("utf-8"), "policy cache")
        if isinstance(cached, dict) and cached.get("format") == FORMAT and cached.get("inputs") == inputs:
            return cached
    except (OSError, UnicodeDecodeError, OciError):  # a missing or corrupt cache only costs a recompile
        pass
    from .compile import compile_file  # slow path: TOML, attrs, seccomp generation

    compiled = compile_file(path)
    compiled["inputs"] = inputs
    _store(entry, compiled)
    return compiled


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
        try:
            os.unlink(tmp)
        except OSError:
            pass
