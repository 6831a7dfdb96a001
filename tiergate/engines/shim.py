"""The tiergate-runtime shim on disk: a compiled front (or a /bin/sh one), a Python launcher, a settings file.

    BIN/tiergate-runtime            what engines call as runc. With a C compiler and not --no-warm:
                                    the compiled front (engines/front.c built with TG_REAL by
                                    engines/front.py): pass-through subcommands exec the real runtime
                                    directly; create, run, restore, exec and update go to the warm
                                    helper, whose child decides and hands the real runtime back
                                    (engines/warm.py), or on a miss to the Python launcher.
                                    Otherwise /bin/sh (sh_front): the same scan, then Python.
    BIN/lib/tiergate-runtime.py     `#!<python> -IS` launcher of tiergate.shim.runtime
    BIN/tiergate-runtime.conf       key=value: real runtime, shim, hook, policy, cache dir, log
    BIN/tiergate-hook               the hook launcher (createRuntime applies network policy)
    BIN/tiergate-runtime.users      one line per engine registered (docker PATH, ...): the
                                    shim's files go with the last one

Python alone starts in 5-14 ms here; a pass-through (state, start, kill,
delete, ps, ...) must cost about nothing over runc, so the front skips global
flags (the ones taking a value exactly as runc does: a mismatch would pass a
create through unhardened) and execs the real runtime itself. sh_front is the
reference the compiled front's scan is tested against (tests/hook/test_runtime_shim.py);
both read their tables from the one Python table of each.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from tiergate.core.names import SHIM_ENFORCED
from tiergate.oci.args import GLOBAL_VALUE_FLAGS

from tiergate.engines import files, front
from tiergate.engines.launcher import MARKER, install_front, install_hook, interpreter, remove_front
from tiergate.shim.runtime import LOOP_ENV, RUNTIME_ENV, LoopError, search_runtime

SHIM = "tiergate-runtime"
CONF = "tiergate-runtime.conf"
USERS = "tiergate-runtime.users"
PY_LAUNCHER = "lib/tiergate-runtime.py"
OLD_FRONT = "lib/tiergate-runtime"  # earlier installs' compiled front, run by their sh front: removed
# Global flags taking a value (oci/args.py's table: never a runc boolean, `--debug create` must
# still be seen as create).
VALUE_FLAGS = tuple(sorted(GLOBAL_VALUE_FLAGS))
ENFORCED = tuple(sorted(SHIM_ENFORCED))


def real_runtime(name: str | None, shim: Path) -> str:
    """Absolute path of the runtime the shim hands over to (runc by default), never the shim: the
    start's own search (shim.runtime.search_runtime), with install's errors."""
    name = name or "runc"
    if "/" in name:
        name = os.path.abspath(name)
        if not os.access(name, os.X_OK):
            raise FileNotFoundError(f"runtime {name} is not an executable")
    try:
        path = search_runtime(name, (str(shim),))
    except LoopError:
        raise ValueError(f"runtime {name} is tiergate-runtime itself: that would loop") from None
    if path is None:
        raise FileNotFoundError(f"no {name} on PATH (install runc, or pass --runtime PATH)")
    return path


def sh_front(real: str, start: str) -> str:
    """The /bin/sh front; `start` is the command that runs tiergate (the compiled front, or Python)."""
    q = shlex.quote
    values = "|".join(f"--{f}|-{f}" for f in VALUE_FLAGS)
    return f"""#!/bin/sh
{MARKER}: {SHIM}, the OCI runtime shim.
# Engines call this as if it were runc. Pass-through subcommands exec the real
# runtime at once; {', '.join(ENFORCED)} start tiergate first.
if [ -n "${{{LOOP_ENV}:-}}" ]; then
  echo "tiergate: error: tiergate-runtime was started by itself through the real runtime (a loop)" >&2
  exit 1
fi
real=${{{RUNTIME_ENV}:-{q(real)}}}
case $real in /*) ;; *) exec {start} "$@" ;; esac
skip= end=
for a do
  if [ -n "$skip" ]; then skip=; continue; fi
  if [ -z "$end" ]; then
    case $a in
      {values}) skip=1; continue ;;
      --) end=1; continue ;;
      -?*) continue ;;
    esac
  fi
  case $a in
    {'|'.join(ENFORCED)}) exec {start} "$@" ;;
  esac
  break
done
{LOOP_ENV}=1 exec "$real" "$@"
"""


def _remove_old_front(bin_dir: Path, say) -> None:
    """An earlier install's compiled front at OLD_FRONT (the shim is now that front itself)."""
    old = bin_dir / OLD_FRONT
    if old.exists() or old.is_symlink():
        files.remove(old, MARKER, say)


def conf_text(settings: dict) -> str:
    lines = [f"{MARKER}: {SHIM} settings"]
    for key in ("runtime", "shim", "hook", "policy", "cache_dir", "log", "containerd_root"):
        if settings.get(key):
            lines.append(f"{key}={settings[key]}")
    return "\n".join(lines) + "\n"


def install(bin_dir: Path, user: str, runtime: str | None = None, policy: str | None = None,
            cache_dir: str | None = None, log: str | None = None, containerd_root: str | None = None,
            say=print, warm: bool = True) -> Path:
    """Install (idempotently) the hook launcher and the shim; register `user` (e.g. "docker /etc/docker/daemon.json")."""
    bin_dir = Path(bin_dir)
    lib = bin_dir / "lib"
    hook = install_hook(bin_dir, say, warm=warm)
    shim = bin_dir / SHIM
    real = real_runtime(runtime, shim)
    conf = bin_dir / CONF
    files.write(conf, conf_text({"runtime": real, "shim": str(shim), "hook": str(hook), "policy": policy,
                                 "cache_dir": cache_dir, "log": log, "containerd_root": containerd_root}), 0o644, say)
    python = f"{shlex.quote(interpreter())} -IS {shlex.quote(str(bin_dir / PY_LAUNCHER))}"
    install_front(shim, bin_dir / PY_LAUNCHER, lib, "tiergate.shim.runtime", f"conf={str(conf)!r}", say, warm,
                  alone=bin_dir / PY_LAUNCHER, note=f"{SHIM} (Python part)", constants=front.shim_header(real),
                  fallback=sh_front(real, python))
    _remove_old_front(bin_dir, say)
    known = users(bin_dir)
    if user not in known:
        files.set_lines(bin_dir / USERS, [*known, user], say)
    return shim


def users(bin_dir: Path) -> list[str]:
    return files.lines(Path(bin_dir) / USERS)


def uninstall(bin_dir: Path, user: str, say=print) -> None:
    """Unregister `user`; the last one out removes the shim (and the hook launcher unless podman's hooks use it)."""
    bin_dir = Path(bin_dir)
    rest = [u for u in users(bin_dir) if u != user]
    if rest:
        files.set_lines(bin_dir / USERS, rest, say)
        say(f"kept {bin_dir / SHIM}: still used by {', '.join(rest)}")
        return
    files.remove(bin_dir / USERS, None, say)
    remove_front(bin_dir / SHIM, bin_dir / PY_LAUNCHER, say)  # the shim first: it runs the rest
    _remove_old_front(bin_dir, say)
    files.remove(bin_dir / CONF, MARKER, say)
    from tiergate.engines.podman import release_hook

    release_hook(bin_dir, say)

