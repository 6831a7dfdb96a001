"""The tiergate-runtime shim on disk: a /bin/sh front, a compiled front, a Python launcher, a settings file.

    BIN/tiergate-runtime            /bin/sh: pass-through subcommands exec the real runtime
                                    directly (~1 ms); create, run, restore and exec exec the
                                    compiled front (or, without one, Python)
    BIN/lib/tiergate-runtime        the compiled front (engines/front.py), with a C compiler and
                                    not --no-warm: hands the start to the warm helper, whose child
                                    decides and hands the real runtime back (engines/warm.py)
    BIN/lib/tiergate-runtime.py     `#!<python> -IS` launcher of tiergate.shim.runtime (a miss)
    BIN/tiergate-runtime.conf       key=value: real runtime, shim, hook, policy, cache dir, log
    BIN/tiergate-hook               the hook launcher (createRuntime applies network policy)
    BIN/tiergate-runtime.users      one line per engine registered (docker PATH, ...): the
                                    shim's files go with the last one

Python alone starts in 5-14 ms here; a pass-through (state, start, kill,
delete, ps, ...) must cost about nothing over runc, so the front skips global
flags (the ones taking a value exactly as runc does: a mismatch would pass a
create through unhardened) and execs the real runtime itself.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from tiergate.core.names import SHIM_ENFORCED
from tiergate.oci.args import GLOBAL_VALUE_FLAGS

from tiergate.engines import files
from tiergate.engines.launcher import MARKER, install_front, install_hook, interpreter, remove_front

SHIM = "tiergate-runtime"
CONF = "tiergate-runtime.conf"
USERS = "tiergate-runtime.users"
PY_LAUNCHER = "lib/tiergate-runtime.py"
FRONT = "lib/tiergate-runtime"  # the compiled front of PY_LAUNCHER
# Global flags taking a value (oci/args.py's table: never a runc boolean, `--debug create` must
# still be seen as create).
VALUE_FLAGS = tuple(sorted(GLOBAL_VALUE_FLAGS))
ENFORCED = tuple(sorted(SHIM_ENFORCED))


def is_shim(path: Path | str) -> bool:
    try:
        head = Path(path).read_bytes()[:512]
    except OSError:
        return False
    return head.startswith(b"#!") and MARKER.encode() in head and SHIM.encode() in head


def real_runtime(name: str | None, shim: Path) -> str:
    """Absolute path of the runtime the shim hands over to (runc by default), never the shim."""
    name = name or "runc"
    if "/" in name:
        path = os.path.abspath(name)
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(f"runtime {path} is not an executable")
    else:
        path = ""
        for d in os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
            cand = Path(d or ".") / name
            if cand.is_file() and os.access(cand, os.X_OK) and not is_shim(cand) \
                    and os.path.realpath(cand) != os.path.realpath(shim):
                path = str(cand)
                break
        if not path:
            raise FileNotFoundError(f"no {name} on PATH (install runc, or pass --runtime PATH)")
    if is_shim(Path(path)) or os.path.realpath(path) == os.path.realpath(shim):
        raise ValueError(f"runtime {path} is tiergate-runtime itself: that would loop")
    return path


def sh_front(real: str, start: str) -> str:
    """The /bin/sh front; `start` is the command that runs tiergate (the compiled front, or Python)."""
    q = shlex.quote
    values = "|".join(f"--{f}|-{f}" for f in VALUE_FLAGS)
    return f"""#!/bin/sh
{MARKER}: {SHIM}, the OCI runtime shim.
# Engines call this as if it were runc. Pass-through subcommands exec the real
# runtime at once; {', '.join(ENFORCED)} start tiergate first.
if [ -n "${{TIERGATE_SHIM_ACTIVE:-}}" ]; then
  echo "tiergate: error: tiergate-runtime was started by itself through the real runtime (a loop)" >&2
  exit 1
fi
real=${{TIERGATE_RUNTIME:-{q(real)}}}
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
TIERGATE_SHIM_ACTIVE=1 exec "$real" "$@"
"""


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
    front = install_front(bin_dir / FRONT, bin_dir / PY_LAUNCHER, lib, "tiergate.shim.runtime", f"conf={str(conf)!r}",
                          say, warm, alone=bin_dir / PY_LAUNCHER, note=f"{SHIM} (Python part)")
    start = shlex.quote(str(bin_dir / FRONT)) if front else \
        f"{shlex.quote(interpreter())} -IS {shlex.quote(str(bin_dir / PY_LAUNCHER))}"
    files.write(shim, sh_front(real, start), 0o755, say)
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
    files.remove(bin_dir / SHIM, MARKER, say)  # first: it runs the rest
    remove_front(bin_dir / FRONT, bin_dir / PY_LAUNCHER, say)
    files.remove(bin_dir / CONF, MARKER, say)
    from tiergate.engines.podman import release_hook

    release_hook(bin_dir, say)

