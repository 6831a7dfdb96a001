"""The installed launcher pins one release: an upgrade never changes a running hook half-way."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tiergate.engines import boot, launcher

ENTRY = '''import os, sys, time
from . import a
def main():
    open(os.environ["GO"] + ".ready", "w").close()
    while not os.path.exists(os.environ["GO"]):
        time.sleep(0.01)
    from . import b
    print(a.VERSION, b.VERSION)
    return 0
'''


def _package(root: Path, version: int) -> dict[str, Path]:
    hook = root / "hook"
    hook.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text("")
    (hook / "__init__.py").write_text("")
    (hook / "entry.py").write_text(ENTRY)
    for mod in ("a", "b"):
        (hook / f"{mod}.py").write_text(f"VERSION = {version}\n")
    (root / "engines").mkdir(exist_ok=True)  # the launcher's second half, as every release has it
    (root / "engines" / "__init__.py").write_text("")
    (root / "engines" / "boot.py").write_text(Path(boot.__file__).read_text())
    return {"tiergate": root}


def test_reinstall_switches_releases_but_a_running_hook_keeps_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "site" / "tiergate"
    monkeypatch.setattr(launcher, "package_dirs", lambda: _package(src, 1))
    lib = tmp_path / "bin" / "lib"
    first = launcher.install_release(lib, say=lambda *_: None)
    exe = tmp_path / "bin" / "hook"
    exe.write_text(launcher.script(lib, "tiergate.hook.entry"))
    exe.chmod(0o755)
    go = tmp_path / "go"
    proc = subprocess.Popen([str(exe)], env={"GO": str(go)}, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{go}.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # until the hook has imported `a` from release 1 and waits
        monkeypatch.setattr(launcher, "package_dirs", lambda: _package(src, 2))  # `pip install -U`, then install
        second = launcher.install_release(lib, say=lambda *_: None)
        assert second != first and os.path.realpath(lib / "current") == str(second)
        go.write_text("")
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out.split() == ["1", "1"]  # never "1 2": the whole run came from one release
    assert first.is_dir()  # the release a hook may still run from is kept ...
    go.unlink()
    go.write_text("")
    assert subprocess.run([str(exe)], env={"GO": str(go)}, capture_output=True, text=True,
                          timeout=30).stdout.split() == ["2", "2"]
    monkeypatch.setattr(launcher, "package_dirs", lambda: _package(src, 3))
    launcher.install_release(lib, say=lambda *_: None)
    assert not first.exists() and second.is_dir()  # ... until the next switch


def test_unchanged_packages_reuse_the_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "package_dirs", lambda: _package(tmp_path / "site", 1))
    said: list[str] = []
    a = launcher.install_release(tmp_path / "lib", say=said.append)
    b = launcher.install_release(tmp_path / "lib", say=said.append)
    assert a == b and said[-1].startswith("unchanged ")


def test_modules_come_from_the_release_code_file_and_without_it_from_the_tree(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's finder serves the release's modules from its code file (with __file__ in
    the release, for data files beside them); a release without that file imports as usual."""
    src = tmp_path / "site" / "tiergate"
    _package(src, 1)
    (src / "hook" / "where.py").write_text(
        "import sys\nfrom . import a\n"
        "def main():\n    print(type(a.__spec__.loader).__name__ if not isinstance(a.__spec__.loader, type)"
        " else a.__spec__.loader.__name__, a.__file__, a.VERSION)\n    return 3\n")
    monkeypatch.setattr(launcher, "package_dirs", lambda: {"tiergate": src})
    lib = tmp_path / "bin" / "lib"
    release = launcher.install_release(lib, say=lambda *_: None)
    exe = tmp_path / "bin" / "hook"
    exe.write_text(launcher.script(lib, "tiergate.hook.where"))
    exe.chmod(0o755)
    proc = subprocess.run([str(exe)], env={}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stderr  # main's code, through os._exit
    assert proc.stdout.split() == ["Release", str(release / "tiergate" / "hook" / "a.py"), "1"]
    (release / launcher.CODE).unlink()
    proc = subprocess.run([str(exe)], env={}, capture_output=True, text=True, timeout=30)
    assert proc.stdout.split() == ["SourceFileLoader", str(release / "tiergate" / "hook" / "a.py"), "1"]


def test_read_script_reads_every_launcher_form(tmp_path):
    """doctor's one reader of launcher text: what script() writes now, and the older forms still
    installed on hosts (main(conf=...) before engines.boot; a plain lib dir before releases)."""
    from tiergate.engines import shim

    now = launcher.script(tmp_path / "lib", "tiergate.shim.runtime", "conf='/etc/x.conf'")
    assert launcher.read_script(now) == {"path": str(tmp_path / "lib" / launcher.CURRENT),
                                         "args": {"conf": "/etc/x.conf"}}
    warm = launcher.script(tmp_path / "lib", "tiergate.shim.runtime", "conf='/c'", warm=True, note=shim.SHIM)
    assert launcher.read_script(warm) == {"path": str(tmp_path / "lib" / launcher.CURRENT), "args": {"conf": "/c"}}
    assert launcher.read_script(launcher.script(tmp_path / "lib", "tiergate.hook.stages")) == {
        "path": str(tmp_path / "lib" / launcher.CURRENT)}
    before_boot = ("import os, sys\n_release = os.path.realpath('/b/lib/current')\nsys.path.insert(0, _release)\n"
                   "from tiergate.shim.runtime import main\ncode = main(conf='/b/c')\n")
    assert launcher.read_script(before_boot) == {"path": "/b/lib/current", "args": {"conf": "/b/c"}}
    assert launcher.read_script("import sys\nsys.path.insert(0, '/old/lib')\n") == {"path": "/old/lib"}
    assert launcher.read_script("#!/bin/sh\nexit 0\n") == {} and launcher.read_script("") == {}
