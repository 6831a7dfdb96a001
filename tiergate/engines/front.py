"""The compiled front (front.c): what engines call when the host has a C compiler (issue 20).

A Python process costs a start ~20 M instructions (~8-10 ms) before it does anything, so the
program at BIN/tiergate-hook is a small C client of the warm helper (engines/warm.py), and the
Python launcher behind it (BIN/lib/tiergate-hook.py) runs only on a miss: no root, no helper
(then it starts one), a helper that declines. install compiles front.c with the host's `cc`,
its constants in a generated header, into a file beside the target that replaces it by rename.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("front.c")
SPAWN_ENV = "TIERGATE_WARM_SPAWN"  # front.c's SPAWN: the launcher starts a helper, then runs the start
COMPILE_TIMEOUT = 120


def launcher_of(path: str | os.PathLike) -> str | None:
    """The Python launcher a compiled front at `path` runs on a miss (its embedded marker, read as
    the start reads it: shim.runtime.embedded_launcher), or None for anything else (the Python
    launcher itself, a missing file)."""
    from tiergate.shim.runtime import embedded_launcher

    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20)
    except OSError:
        return None
    return embedded_launcher(data)


def compiler() -> str | None:
    """The host's C compiler (`cc` on PATH), or None: then the Python launcher is the program."""
    return shutil.which("cc")


def _literal(value: str) -> str:
    """A C string literal of value's bytes (octal escapes: any path is safe in it)."""
    return '"' + "".join(chr(b) if chr(b).isalnum() or chr(b) in "/-_.: " else f"\\{b:03o}"
                         for b in os.fsencode(value)) + '"'


def header(link: str, prefix: str, python: str, launcher: str, marker: str, uid: int = 0, run: str = "/run") -> str:
    """The constants front.c is compiled with (uid and run: for tests, which run it unprivileged)."""
    values = {"TG_LINK": link, "TG_PREFIX": prefix, "TG_PYTHON": python, "TG_LAUNCHER": launcher, "TG_MARKER": marker,
              "TG_RUN": run}
    return "".join(f"#define {name} {_literal(value)}\n" for name, value in values.items()) + f"#define TG_UID {int(uid)}u\n"


def shim_header(real: str) -> str:
    """The constants that make front.c the runtime shim itself (engines/shim.py): the installed real
    runtime, and the sh front's two tables generated from the one Python table of each (a name the C
    scan missed would pass a create through unhardened)."""
    from tiergate.core.names import SHIM_ENFORCED
    from tiergate.oci.args import GLOBAL_VALUE_FLAGS
    from tiergate.shim.runtime import LOOP_ENV, RUNTIME_ENV

    def table(names) -> str:
        return ", ".join(_literal(n) for n in sorted(names))

    return (f"#define TG_REAL {_literal(real)}\n#define TG_LOOP_ENV {_literal(LOOP_ENV)}\n"
            f"#define TG_RUNTIME_ENV {_literal(RUNTIME_ENV)}\n#define TG_VALUE_FLAGS {table(GLOBAL_VALUE_FLAGS)}\n"
            f"#define TG_ENFORCED {table(SHIM_ENFORCED)}\n")


def build(target: Path, constants: str, cc: str, source: Path = SOURCE) -> bytes:
    """front.c compiled with `constants` (header()); the binary's bytes. RuntimeError with the
    compiler's last line when it fails."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".tiergate-front-", dir=Path(target).parent) as tmp:
        (Path(tmp) / "front.h").write_text(constants)
        out = Path(tmp) / "front"
        try:
            proc = subprocess.run([cc, "-O2", "-s", "-include", str(Path(tmp) / "front.h"), "-o", str(out), str(source)],
                                  capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(str(exc)) from None
        if proc.returncode != 0 or not out.exists():
            lines = (proc.stderr or proc.stdout or f"exit {proc.returncode}").strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"exit {proc.returncode}")
        return out.read_bytes()
