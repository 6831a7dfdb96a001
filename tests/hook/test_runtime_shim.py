"""The shim's pass-through: the /bin/sh front and Python agree on what to enforce; no policy import; no loop."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tiergate.shim import runtime
from tiergate.engines import shim
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


@pytest.fixture
def front(tmp_path):
    real = _exe(tmp_path / "real", "#!/bin/sh\necho REAL\n")
    launcher = _exe(tmp_path / "launcher.py", "import sys\nprint('PY')\n")
    return _exe(tmp_path / "tiergate-runtime", shim.sh_front(str(real), f"{sys.executable} -IS {launcher}"))


@pytest.mark.parametrize("argv", ARGVS, ids=[" ".join(a) or "(none)" for a in ARGVS])
def test_front_agrees_with_python(front, argv):
    """What the sh front passes through is exactly what Python (and runc) would not enforce."""
    env = {k: v for k, v in os.environ.items() if k not in ("TIERGATE_RUNTIME", runtime.LOOP_ENV)}
    out = subprocess.run([str(front), *argv], capture_output=True, text=True, env=env, timeout=10).stdout.strip()
    want = "PY" if runc_args.subcommand(argv) in SHIM_ENFORCED else "REAL"
    assert out == want


def test_front_loop_guard(front):
    env = {**os.environ, runtime.LOOP_ENV: "1"}
    proc = subprocess.run([str(front), "state", "x"], capture_output=True, text=True, env=env, timeout=10)
    assert proc.returncode == 1 and "loop" in proc.stderr


def test_front_bare_runtime_name_goes_to_python(front):
    """TIERGATE_RUNTIME=crun (no slash) is resolved by Python, which skips the shim on PATH."""
    env = {**os.environ, "TIERGATE_RUNTIME": "crun"}
    assert subprocess.run([str(front), "state", "x"], capture_output=True, text=True, env=env).stdout.strip() == "PY"


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
