"""tiergate/host/access.py: can the user who runs a hook run its launcher (rootless podman runs hooks as the user)?"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tiergate.host import access
from tiergate.cli import probes as host
from tiergate.cli import main as cli
from tiergate.engines import front, launcher

NOBODY = access.NOBODY
REAL = os.path.realpath(sys.executable)


@pytest.fixture
def open_dir():
    """A directory every user can search (tmp_path's parent is 0700 under /tmp/pytest-of-USER)."""
    d = Path(tempfile.mkdtemp(prefix="tg-access-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def _launcher(path: Path, interp: str, lib: Path, deps: list[str]) -> Path:
    path.write_text(f"#!{interp} -IS\n{launcher.MARKER}\nimport sys\nsys.path.insert(0, {str(lib)!r})\n"
                    f"sys.path.extend({deps!r})\nfrom tiergate.hook.stages import main\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(os.geteuid() == NOBODY, reason="the checks speak for uid 65534")
def test_problem_reads_mode_bits(open_dir):
    private = open_dir / "root-only"
    private.mkdir(mode=0o700)
    exe = private / "python3"
    exe.write_text("")
    exe.chmod(0o755)
    assert "root-only (mode 700" in access.problem(exe, NOBODY, access.X) and "not searchable" in access.problem(exe, NOBODY)
    assert access.problem(exe, os.geteuid(), access.X) is None  # its owner can
    private.chmod(0o711)  # searchable, not listable: enough to exec a file inside
    assert access.problem(exe, NOBODY, access.X) is None
    exe.chmod(0o700)
    assert "is not executable" in access.problem(exe, NOBODY, access.X)
    link = open_dir / "link"
    link.symlink_to(exe)
    assert access.problem(link, NOBODY, access.X)  # the target counts, not the link
    assert "No such file" in access.problem(open_dir / "missing", NOBODY)


def test_hook_users(tmp_path, monkeypatch):
    assert access.hook_users(tmp_path / "hooks.d" / "deeper") == {os.geteuid(): access.hook_users(tmp_path)[os.geteuid()]}
    if os.geteuid() == 0:
        assert set(access.hook_users(tmp_path)) == {0}
        monkeypatch.setattr(access, "SHARED_HOOKS_DIRS", (str(tmp_path),))
        assert set(access.hook_users(tmp_path)) == {0, NOBODY}


def test_launcher_problem_names_what_blocks(open_dir):
    lib = open_dir / "lib"
    (lib / "tiergate").mkdir(parents=True)
    pkg = open_dir / "pkg"
    pkg.mkdir(mode=0o755)
    (lib / "tiergate" / "hook").symlink_to(pkg)
    exe = _launcher(open_dir / "tiergate-hook", REAL, lib, [str(open_dir)])
    if access.problem(REAL, NOBODY, access.X) is None:
        assert access.launcher_problem(exe, NOBODY) is None
    pkg.chmod(0o700)
    assert str(pkg) in access.launcher_problem(exe, NOBODY)
    pkg.chmod(0o755)
    hidden = open_dir / "private"
    hidden.mkdir(mode=0o700)
    _launcher(exe, REAL, lib, [str(hidden)])
    assert "is not readable and executable" in access.launcher_problem(exe, NOBODY)
    _launcher(exe, str(hidden / "python3"), lib, [])
    assert "private (mode 700" in access.launcher_problem(exe, NOBODY)


@pytest.mark.skipif(os.geteuid() != 0, reason="the shared hooks dirs are root's")
def test_install_refuses_an_interpreter_rootless_users_cannot_run(open_dir, monkeypatch, capsys):
    hooks = open_dir / "hooks.d"
    monkeypatch.setattr(access, "SHARED_HOOKS_DIRS", (str(hooks),))
    private = open_dir / "root-home"
    private.mkdir(mode=0o700)
    (private / "python3").symlink_to(REAL)
    monkeypatch.setattr(launcher, "interpreter", lambda: str(private / "python3"))
    argv = ["install", "--engine", "podman", "--hooks-dir", str(hooks), "--bin-dir", str(open_dir / "bin")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "any user (rootless podman reads this dir too) could not run the hook" in err
    assert "root-home (mode 700" in err and not hooks.exists() and not (open_dir / "bin").exists()
    # doctor says the same of a registered launcher whose interpreter became unreachable
    monkeypatch.setattr(launcher, "interpreter", lambda: REAL)
    if any(access.problem(p, NOBODY, w) for p, w in launcher.needs()):
        pytest.skip("this checkout itself is not reachable by other users")
    assert cli.main([*argv, "--cache-dir", str(open_dir / "cache")]) == 0
    assert host.check_podman_registration([str(hooks)], "test").status == "ok"
    exe = open_dir / "bin" / "tiergate-hook"
    exe = Path(front.launcher_of(exe) or exe)  # a compiled front: the Python launcher it runs on a miss
    exe.write_text(exe.read_text().replace(f"#!{REAL}", f"#!{private / 'python3'}", 1))
    c = host.check_podman_registration([str(hooks)], "test")
    assert c.status == "fail" and "any user (rootless podman reads this dir too) cannot run it" in c.detail, c.detail
    assert cli.main(["uninstall", *argv[1:]]) == 0
