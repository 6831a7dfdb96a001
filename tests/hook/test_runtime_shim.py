"""The shim's pass-through: the compiled front, the /bin/sh front (the reference) and Python agree on
what to enforce, differentially, over a table and random argv; no policy import; no loop."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tiergate.shim import runtime
from tiergate.engines import front as compiled, launcher as launchers, shim
from tiergate.core.names import SHIM_ENFORCED
from tiergate.oci import args as runc_args

ARGVS = [
    ["--root", "/r", "--log", "/l", "--log-format", "json", "create", "--bundle", "/b", "id"],
    ["--root=/r", "run", "id"], ["-root", "/r", "exec", "--process", "/p", "id"],
    ["--debug", "create", "id"], ["--systemd-cgroup", "--rootless", "true", "exec", "id", "sh"],
    ["--root", "create", "state", "id"], ["--", "create", "id"], ["--", "--weird"],
    ["state", "id"], ["start", "id"], ["kill", "id", "9"], ["delete", "--force", "id"], ["ps", "--format", "json", "id"],
    ["pause", "id"], ["resume", "id"], ["features"], ["events", "id"], ["update", "--pids-limit", "5", "id"],
    ["--version"], ["--help"], [], ["-"], ["restore", "--bundle", "/b", "id"], ["--log", "create", "run", "x"],
    ["--criu", "/c", "checkpoint", "id"], ["--cgroup-manager", "cgroupfs", "run", "x"],
]


def _exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# A stand-in for both the real runtime and Python: says what it was run as (argv[0] included, which a
# script cannot see), with what argv and loop variable.
STUB = r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *loop = getenv("TIERGATE_SHIM_ACTIVE"), *rt = getenv("TIERGATE_RUNTIME");
    const char *name = argc && strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : "";
    printf("%s loop=%s runtime=%s argc=%d\n", strcmp(name, "stub") ? "REAL" : "START",
           loop ? loop : "-", rt ? rt : "-", argc);
    for (int i = 0; i < argc; i++) printf("[%s]\n", argv[i]);
    return 7;
}
"""


def _fronts(tmp_path: Path, kinds: tuple[str, ...]) -> dict[str, Path]:
    """The shim fronts of `kinds` ("sh", "compiled"), both with the real runtime and the start
    (python -IS lib/tiergate-runtime.py) stood in for by STUB."""
    cc = compiled.compiler()
    if cc is None:
        print("no C compiler (cc) on PATH: the compiled front and its stub are not built")
        pytest.skip("no C compiler (cc) on PATH")
    (tmp_path / "stub.c").write_text(STUB)
    stub = tmp_path / "stub"
    subprocess.run([cc, "-o", str(stub), str(tmp_path / "stub.c")], check=True, timeout=120)
    (tmp_path / "real").symlink_to(stub)
    (tmp_path / "lib").mkdir()
    py = _exe(tmp_path / "lib" / "tiergate-runtime.py", "never run: the stub stands in for Python\n")
    out: dict[str, Path] = {}
    if "sh" in kinds:
        (tmp_path / "sh").mkdir()
        out["sh"] = _exe(tmp_path / "sh" / "tiergate-runtime", shim.sh_front(str(tmp_path / "real"), f"{stub} -IS {py}"))
    if "compiled" in kinds:
        (tmp_path / "cc").mkdir()
        exe = tmp_path / "cc" / "tiergate-runtime"
        # uid: not ours, so the front goes straight to the launcher (the warm helper is test_front's)
        exe.write_bytes(compiled.build(exe, compiled.header(str(tmp_path / "lib" / "current"), f"{tmp_path}/k-",
                                                            str(stub), str(py), launchers.MARKER, os.geteuid() + 1,
                                                            str(tmp_path)) + compiled.shim_header(str(tmp_path / "real")),
                                       cc))
        exe.chmod(0o755)
        out["compiled"] = exe
    return out


@pytest.fixture(params=["sh", "compiled"])
def front(request, tmp_path):
    return _fronts(tmp_path, (request.param,))[request.param]


@pytest.fixture
def both(tmp_path):
    return _fronts(tmp_path, ("sh", "compiled"))


def _run(exe: Path, argv: list[str], env: dict | None = None) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("TIERGATE_RUNTIME", runtime.LOOP_ENV)}
    proc = subprocess.run([str(exe), *argv], capture_output=True, env={**base, **(env or {})}, cwd="/", timeout=30)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


@pytest.mark.parametrize("argv", ARGVS, ids=[" ".join(a) or "(none)" for a in ARGVS])
def test_front_agrees_with_python(front, argv):
    """What each front passes through is exactly what Python (and runc) would not enforce."""
    out = _run(front, argv)[1].split()[0]
    want = "START" if runc_args.subcommand(argv) in SHIM_ENFORCED else "REAL"
    assert out == want


EDGES = [
    ["--root", "/x", "create"], ["--log", "x", "--debug", "create"], ["--root=/x", "create"], ["--log=x", "run", "b"],
    ["--", "--root", "create"], ["--root", "--", "create"], ["--", "--", "create"], ["-x", "create"], ["-x", "state"],
    ["-log", "/l", "run"], ["--log"], ["--log-format"], ["--root", "create"], ["exec"], ["run"], ["state"], ["update"],
    [], [""], ["", "create"], ["-", "create"], ["--LOG", "x", "create"], ["---root", "x", "create"], ["-debug", "run"],
    ["create\n"], [" create"], ["CREATE"], ["creat"], ["created"], ["-create"], ["--create"], ["--rootless", "create"],
    ["--rootless=true", "create"], ["-rootless", "x", "exec", "id"], ["--criu", "--root", "create"],
    ["--cgroup-manager", "systemd", "--systemd-cgroup", "restore", "x"], ["state", "create"], ["--debug", "--", "kill"],
    ["\udcff", "create"], ["--log", "\udcff", "exec", "a b", "c\td"],
]
TOKENS = ["--root", "-root", "--root=/x", "/x", "--log", "-log-format", "--criu", "--rootless", "--debug", "--systemd-cgroup",
          "--", "-", "", "-x", "--x", "create", "run", "exec", "restore", "update", "state", "start", "kill", "delete",
          "list", "ps", "features", "--bundle", "id"]
RANDOM = [[r.choice(TOKENS) for _ in range(r.randrange(0, 7))] for r in [random.Random(20)] for _ in range(150)]


def test_compiled_front_agrees_with_the_sh_front(both):
    """Differential, the sh front the reference: the same path (the real runtime or the start), the
    same argv (argv[0] too), the same loop variable and status, for edge cases and seeded random argv."""
    for argv in EDGES + RANDOM:
        argv = [os.fsencode(a).decode(errors="surrogateescape") for a in argv]
        sh, cc = (_run(both[k], argv) for k in ("sh", "compiled"))
        assert cc == sh, argv
        assert sh[0] == 7 and sh[1].startswith("START" if runc_args.subcommand(argv) in SHIM_ENFORCED else "REAL"), argv


@pytest.mark.parametrize("env", [{"TIERGATE_RUNTIME": ""}, {"TIERGATE_RUNTIME": "crun"}, {"TIERGATE_RUNTIME": "./real"},
                                 {"TIERGATE_RUNTIME": "/"}, {runtime.LOOP_ENV: ""}, {runtime.LOOP_ENV: "0"},
                                 {"TIERGATE_RUNTIME": "/nonexistent/runc"}], ids=repr)
def test_compiled_front_agrees_with_the_sh_front_on_the_environment(both, tmp_path, env):
    """$TIERGATE_RUNTIME as the sh reads it (empty: the installed one; no leading slash: the start,
    which resolves it; absolute: exec'd as is, exit 127 when absent, 126 when not runnable) and
    the loop variable (any non-empty value: the one-line error, exit 1)."""
    for argv in (["state", "x"], ["--root", "/r", "create", "x"], ["list"]):
        sh, cc = (_run(both[k], argv, env) for k in ("sh", "compiled"))
        if env.get("TIERGATE_RUNTIME", "x")[:1] == "/" and not sh[1]:  # exec failed: the shell's words differ
            assert (cc[0], cc[1]) == (sh[0], sh[1]) and sh[0] in (126, 127) and "tiergate: error:" in cc[2], (argv, sh, cc)
        elif env.get(runtime.LOOP_ENV):
            assert cc == sh and sh[0] == 1 and "(a loop)" in sh[2], (argv, sh, cc)
        else:
            assert cc == sh, (argv, sh, cc)
    other = tmp_path / "other"
    other.symlink_to(tmp_path / "stub")
    sh, cc = (_run(both[k], ["kill", "x"], {"TIERGATE_RUNTIME": str(other)}) for k in ("sh", "compiled"))
    assert cc == sh and sh[1].startswith(f"REAL loop=1 runtime={other} argc=3\n[{other}]"), sh


def test_both_fronts_are_shims_and_a_real_runtime_is_not(both, tmp_path):
    """is_shim_file knows the sh and the compiled front (small: it reads an ELF whole only below
    FRONT_MAX), not the stub runtime nor a compiled hook front (its launcher is another)."""
    assert all(runtime.is_shim_file(str(p)) for p in both.values())
    assert os.path.getsize(both["compiled"]) < runtime.FRONT_MAX // 4
    hook = tmp_path / "hook-front"
    hook.write_bytes(compiled.build(hook, compiled.header(str(tmp_path / "lib" / "current"), f"{tmp_path}/k-",
                                                          sys.executable, str(tmp_path / "lib" / "tiergate-hook.py"),
                                                          launchers.MARKER), compiled.compiler() or "cc"))
    assert not runtime.is_shim_file(str(hook)) and not runtime.is_shim_file(str(tmp_path / "stub"))


def test_front_loop_guard(front):
    code, out, err = _run(front, ["state", "x"], {runtime.LOOP_ENV: "1"})
    assert code == 1 and not out and err == ("tiergate: error: tiergate-runtime was started by itself through the "
                                             "real runtime (a loop)\n")


def test_front_bare_runtime_name_goes_to_python(front):
    """TIERGATE_RUNTIME=crun (no slash) is resolved by Python, which skips the shim on PATH."""
    assert _run(front, ["state", "x"], {"TIERGATE_RUNTIME": "crun"})[1].startswith("START loop=- runtime=crun")


def test_pass_through_imports_no_policy(tmp_path):
    real = _exe(tmp_path / "real", "#!/bin/sh\necho \"REAL $*\"\n")
    code = ("import sys, os\nfrom tiergate.shim import runtime\n"
            "os.execv = lambda p, a: (print(sorted(m for m in sys.modules if m.startswith('tiergate'))), print(a), sys.exit(0))\n"
            "runtime.main(['--root', '/r', 'state', 'x'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TIERGATE_RUNTIME": str(real)}).stdout
    mods, argv = out.splitlines()
    assert eval(mods) == ["tiergate", "tiergate.core", "tiergate.core.names", "tiergate.oci", "tiergate.oci.args",
                         "tiergate.shim", "tiergate.shim.runtime"]
    assert eval(argv) == [str(real), "--root", "/r", "state", "x"]


def test_find_runtime_skips_the_shim_on_path(tmp_path, monkeypatch, front):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    (first / "runc").symlink_to(front)  # the shim installed as "runc" first on PATH
    real = _exe(second / "runc", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", f"{first}:{second}")
    monkeypatch.delenv("TIERGATE_RUNTIME", raising=False)
    assert runtime.find_runtime({}) == str(real)


def test_install_and_start_search_alike(tmp_path, monkeypatch, front):
    """Install's choice (engines/shim.real_runtime) is the start's (find_runtime): one search, which
    skips a front on PATH and refuses nothing else."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    (first / "runc").symlink_to(front)
    real = _exe(second / "runc", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", f"{first}:{second}")
    monkeypatch.delenv("TIERGATE_RUNTIME", raising=False)
    assert shim.real_runtime(None, tmp_path / "tiergate-runtime") == runtime.find_runtime({}) == str(real)
    monkeypatch.setenv("PATH", str(first))
    with pytest.raises(FileNotFoundError, match="no runc on PATH"):
        shim.real_runtime(None, tmp_path / "tiergate-runtime")


def test_find_runtime_loop_is_an_error(monkeypatch, front):
    monkeypatch.setenv("TIERGATE_RUNTIME", str(front))
    with pytest.raises(runtime.LoopError):
        runtime.find_runtime({})


def test_install_refuses_shim_as_runtime(tmp_path, front):
    with pytest.raises(ValueError, match="loop"):
        shim.real_runtime(str(front), tmp_path / "tiergate-runtime")


def test_read_conf(tmp_path):
    conf = tmp_path / "c"
    conf.write_text("# comment\nruntime=/usr/sbin/runc\nlog=/l\nbogus=1\npolicy=\n")
    assert runtime.read_conf(str(conf)) == {"runtime": "/usr/sbin/runc", "log": "/l"}
    assert runtime.read_conf(str(tmp_path / "missing")) == {}


def test_write_log_formats(tmp_path):
    import json

    runtime.write_log(str(tmp_path / "j"), "json", "tiergate: refused: x")
    rec = json.loads((tmp_path / "j").read_text())
    assert rec["level"] == "error" and rec["msg"] == "tiergate: refused: x" and rec["time"].endswith("Z")
    runtime.write_log(str(tmp_path / "t"), "text", 'say "hi"')
    assert 'level=error msg="say \\"hi\\""' in (tmp_path / "t").read_text()
    os.symlink(tmp_path / "target", tmp_path / "link")
    runtime.write_log(str(tmp_path / "link"), "json", "x")
    assert not (tmp_path / "target").exists()
    assert stat.S_IMODE((tmp_path / "j").stat().st_mode) == 0o600


def test_refusal_reaches_the_log_when_stderr_is_read_only(tmp_path, monkeypatch):
    """containerd gives a pod's sandbox a read-only stderr: the --log line must be written first."""
    import json
    import sys

    ro = open(os.devnull)  # writing raises, as on the sandbox's read-only /dev/null
    monkeypatch.setattr(sys, "stderr", ro)
    log = tmp_path / "log.json"
    try:
        runtime._fail(["--log", str(log), "--log-format", "json", "create", "--bundle", "/b", "id"], "tiergate: refused: x")
    finally:
        ro.close()
    assert json.loads(log.read_text())["msg"] == "tiergate: refused: x"
