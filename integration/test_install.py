"""`tiergate install/uninstall --engine podman`: a round trip leaves the hooks dir and bin dir as they were,
both are idempotent and say what they did, foreign files stay. (The hooks' effect on real podman
containers is proven in test_podman.py, which installs with this same command.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness import file_tree as tree
from tiergate_fixtures import REPO, tiergate

from tiergate.engines import front

PRE, POST = "99-tiergate-precreate.json", "99-tiergate-prestart.json"


def install(hooks: Path, bin_dir: Path, *extra: str) -> list[str]:
    return tiergate("install", "--engine", "podman", "--hooks-dir", hooks, "--bin-dir", bin_dir,
                    *extra).stdout.splitlines()


def uninstall(hooks: Path, bin_dir: Path) -> list[str]:
    return tiergate("uninstall", "--engine", "podman", "--hooks-dir", hooks, "--bin-dir", bin_dir).stdout.splitlines()


@pytest.fixture
def dirs(tmp_path):
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    (hooks / "50-foreign.json").write_text('{"version": "1.0.0"}\n')
    (hooks / "notes.txt").write_text("not a hook\n")
    return hooks, tmp_path / "libexec-tiergate"  # its parent exists: see test_missing_parent_dirs


def test_round_trip(dirs, tmp_path):
    hooks, bin_dir = dirs
    before = tree(tmp_path)
    first = install(hooks, bin_dir, "--log", str(tmp_path / "log.jsonl"))
    assert f"wrote {hooks / PRE}" in first and f"wrote {bin_dir / 'tiergate-hook'}" in first
    assert f"absent {hooks / POST}" in first
    installed = tree(tmp_path)
    second = install(hooks, bin_dir, "--log", str(tmp_path / "log.jsonl"))
    assert second and all(line.startswith(("unchanged ", "absent ")) for line in second), second
    assert tree(tmp_path) == installed
    removed = uninstall(hooks, bin_dir)
    assert f"removed {hooks / PRE}" in removed and f"removed {bin_dir / 'tiergate-hook'}" in removed
    assert tree(tmp_path) == before
    again = uninstall(hooks, bin_dir)
    assert again and all(line.startswith("absent ") for line in again), again
    assert tree(tmp_path) == before
    assert not (tmp_path / "log.jsonl").exists()  # install itself logs no decision


def test_prestart_round_trip(dirs, tmp_path):
    """--prestart adds the verify hook; installing again without it removes exactly that file."""
    hooks, bin_dir = dirs
    before = tree(tmp_path)
    install(hooks, bin_dir, "--prestart")
    assert {p.name for p in hooks.iterdir()} == {"50-foreign.json", "notes.txt", PRE, POST}
    assert install(hooks, bin_dir, "--prestart").count(f"unchanged {hooks / POST}") == 1
    out = install(hooks, bin_dir)
    assert f"removed {hooks / POST}" in out
    assert {p.name for p in hooks.iterdir()} == {"50-foreign.json", "notes.txt", PRE}
    uninstall(hooks, bin_dir)
    assert tree(tmp_path) == before


def test_bin_dir_with_foreign_file_is_kept(dirs, tmp_path):
    hooks, bin_dir = dirs
    bin_dir.mkdir(parents=True)
    (bin_dir / "other-tool").write_text("#!/bin/sh\n")
    before = tree(tmp_path)
    install(hooks, bin_dir)
    uninstall(hooks, bin_dir)
    assert tree(tmp_path) == before


def test_uninstall_keeps_a_same_named_foreign_hook(dirs, tmp_path):
    """A 99-tiergate-precreate.json that does not call our launcher is not ours to remove."""
    hooks, bin_dir = dirs
    foreign = {"version": "1.0.0", "hook": {"path": "/usr/bin/true"}, "when": {"always": True},
               "stages": ["precreate"]}
    (hooks / PRE).write_text(json.dumps(foreign))
    out = uninstall(hooks, bin_dir)
    assert f"kept {hooks / PRE}: not written by tiergate" in out
    assert json.loads((hooks / PRE).read_text()) == foreign


def test_hook_json_and_launcher(dirs, tmp_path):
    """hooks.d 1.0.0 with absolute paths, only the schema's keys; a real interpreter, isolated (-IS)."""
    hooks, bin_dir = dirs
    install(hooks, bin_dir, "--prestart", "--log", str(tmp_path / "d.jsonl"), "--cache-dir", str(tmp_path / "c"))
    for name, stage in ((PRE, "precreate"), (POST, "prestart")):
        doc = json.loads((hooks / name).read_text())
        assert set(doc) == {"version", "hook", "when", "stages"} and doc["version"] == "1.0.0"
        assert doc["stages"] == [stage] and doc["when"] == {"always": True}
        path = doc["hook"]["path"]
        assert os.path.isabs(path) and os.access(path, os.X_OK)
        assert doc["hook"]["args"] == ["tiergate-hook", stage, "--log", str(tmp_path / "d.jsonl"),
                                       "--cache-dir", str(tmp_path / "c")]
    exe = bin_dir / "tiergate-hook"
    shebang = Path(front.launcher_of(exe) or exe).read_text().splitlines()[0]  # the front's Python launcher
    interp = shebang[2:].split()[0]
    assert shebang.endswith(" -IS") and os.path.isabs(interp) and os.access(interp, os.X_OK)
    assert "shims" not in interp  # a version manager's shim costs ~90 ms per container start
    proc = subprocess.run([str(exe)], env={}, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and proc.stderr.startswith("tiergate-hook: usage: tiergate-hook")


def test_broken_policy_is_not_installed(dirs, tmp_path):
    hooks, bin_dir = dirs
    before = tree(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[tiers.x\n")
    proc = tiergate("--policy", bad, "install", "--engine", "podman", "--hooks-dir", hooks, "--bin-dir", bin_dir,
                    check=False)
    assert proc.returncode == 2 and str(bad) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    bad.unlink()
    assert tree(tmp_path) == before


def test_policy_path_is_absolute(dirs, tmp_path, monkeypatch):
    hooks, bin_dir = dirs
    policy = REPO / "tiergate" / "configs" / "policy.toml"
    tiergate("--policy", os.path.relpath(policy, REPO), "install", "--engine", "podman", "--hooks-dir", hooks,
             "--bin-dir", bin_dir)
    args = json.loads((hooks / PRE).read_text())["hook"]["args"]
    assert args[args.index("--policy") + 1] == str(policy)


def test_missing_parent_dirs_are_removed_again(tmp_path):
    before = tree(tmp_path)
    hooks, bin_dir = tmp_path / "etc/containers/oci/hooks.d", tmp_path / "usr/local/libexec/tiergate"
    install(hooks, bin_dir)
    uninstall(hooks, bin_dir)
    assert tree(tmp_path) == before


def test_hook_and_runtime_round_trip_with_a_shared_bin_dir(dirs, tmp_path):
    """`--hooks-dir` + `--config`: the hook AND the shim as podman's default runtime; docker sharing the
    bin dir keeps the launcher through a podman uninstall; both uninstalls restore every tree."""
    hooks, bin_dir = dirs
    conf_d, daemon_json = tmp_path / "containers.conf.d", tmp_path / "daemon.json"
    before = tree(tmp_path)
    args = ["--engine", "podman", "--hooks-dir", hooks, "--config", conf_d, "--bin-dir", bin_dir]
    out = tiergate("install", *args).stdout.splitlines()
    assert f"wrote {conf_d / '99-tiergate.conf'}" in out and f"wrote {hooks / PRE}" in out
    assert 'runtime = "tiergate"' in (conf_d / "99-tiergate.conf").read_text()
    installed = tree(tmp_path)
    again = tiergate("install", *args).stdout.splitlines()
    assert all(line.startswith(("unchanged ", "absent ", "podman now")) for line in again), again
    assert tree(tmp_path) == installed
    tiergate("install", "--engine", "docker", "--daemon-json", daemon_json, "--bin-dir", bin_dir)
    tiergate("uninstall", *args)
    assert os.access(bin_dir / "tiergate-hook", os.X_OK) and os.access(bin_dir / "tiergate-runtime", os.X_OK)
    assert not (conf_d / "99-tiergate.conf").exists() and not (hooks / PRE).exists()
    tiergate("uninstall", "--engine", "docker", "--daemon-json", daemon_json, "--bin-dir", bin_dir)
    assert tree(tmp_path) == before


def test_no_runtime_writes_nothing(dirs, tmp_path):
    hooks, bin_dir = dirs
    before = tree(tmp_path)
    proc = tiergate("install", "--engine", "podman", "--hooks-dir", hooks, "--config", tmp_path / "c.d",
                    "--bin-dir", bin_dir, "--runtime", str(tmp_path / "no-such-runc"), check=False)
    assert proc.returncode != 0 and "no-such-runc" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert tree(tmp_path) == before
