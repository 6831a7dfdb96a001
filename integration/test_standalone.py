"""The repository stands alone: a copy with nothing beside it passes the unit tests.

The copy is made by integration/clone-tree.sh (the one .ci/run uses): a git
clone plus the working tree's changes, alone in an empty temporary directory.
The unit tests run there with this checkout's venv interpreter; anything they
read from outside the repository (a shared/ beside it, /work/shared) is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import harness
from harness import run_cmd

REPO = Path(__file__).resolve().parent.parent


def test_unit_tests_pass_in_a_clone_alone(tmp_path: Path) -> None:
    harness.require_binary("git")
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout: there is nothing to clone")
    clone = tmp_path / "tiergate"
    run_cmd(["bash", REPO / "integration" / "clone-tree.sh", clone], check=True, timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiergate"]
    assert not (clone / ".venv").exists() and (clone / "tests" / "data" / "oci-runtime-spec" / "LICENSE").is_file()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    proc = run_cmd([sys.executable, "-m", "pytest", "tests", "-q", "-x", "-p", "no:cacheprovider"],
                   cwd=clone, env=env, timeout=900)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"unit tests in the clone: rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary, summary
