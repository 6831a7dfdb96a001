"""No two compiles at once, and one per change: N hook processes that all find the cache stale
compile it once between them (counted from their decision records, not by timing)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import PYTHON, SHIPPED_POLICY, podman_precreate
from tiergate.policy import cache

N = 6


def _waiters(lock: Path) -> int:
    """Processes blocked on LOCK's flock, from /proc/locks (`-> FLOCK ... <dev>:<inode> ...`)."""
    ino = lock.stat().st_ino
    with open("/proc/locks", encoding="ascii") as fh:
        return sum(1 for line in fh if "->" in line and "FLOCK" in line and f":{ino} " in line)


def _start_together(policy: Path, cache_dir: Path, log: Path) -> list[dict]:
    """N hooks started while the test holds the compile lock; released once all N wait on it."""
    lock = cache_dir / cache.LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    args = [PYTHON, "-m", "tiergate.hook.stages", "precreate", "--policy", str(policy), "--cache-dir", str(cache_dir),
            "--log", str(log)]
    spec = json.dumps(podman_precreate()).encode()
    procs = []
    try:
        for _ in range(N):
            p = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            p.stdin.write(spec)
            p.stdin.close()
            procs.append(p)
        deadline = time.monotonic() + 120
        while _waiters(lock) < N and time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        assert _waiters(lock) == N, "every hook must be waiting for the lock before it is released"
    finally:
        os.close(fd)
        for p in procs:
            p.wait(timeout=300)
            p.stdout.close()
            p.stderr.close()
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["stage"] == "precreate"]  # (a stale policy adds its error record)
    assert len(records) == N and all("Traceback" not in json.dumps(r) for r in records)
    return records


@pytest.fixture
def stale(tmp_path: Path) -> tuple[Path, Path]:
    """A cache compiled from a policy file that has changed since."""
    policy = tmp_path / "etc" / "policy.toml"
    policy.parent.mkdir()
    shutil.copy(SHIPPED_POLICY, policy)
    cache_dir = tmp_path / "cache"
    cache.load_compiled(str(policy), str(cache_dir))
    st = policy.stat()
    os.utime(policy, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    return policy, cache_dir


def _generations(cache_dir: Path) -> int:
    return sum(1 for p in cache_dir.iterdir() if p.is_dir())


def test_n_hooks_on_a_stale_cache_compile_once(stale: tuple[Path, Path], tmp_path: Path) -> None:
    policy, cache_dir = stale
    records = _start_together(policy, cache_dir, tmp_path / "decisions.jsonl")
    assert sum(1 for r in records if r.get("policy_compiled")) == 1
    assert len({r["policy"] for r in records}) == 1 and not any(r.get("policy_error") for r in records)
    assert _generations(cache_dir) == 2  # the first compile's and this one's: no other compile stored one


def test_n_hooks_on_a_broken_save_try_to_compile_once(stale: tuple[Path, Path], tmp_path: Path) -> None:
    """The first finds it broken and says so for the others: all run on the last good policy."""
    policy, cache_dir = stale
    good = cache.load_compiled(str(policy), str(cache_dir))["digest"][:16]
    st = policy.stat()
    policy.write_text("version = 1\n[tiers.a\n")
    os.utime(policy, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    records = _start_together(policy, cache_dir, tmp_path / "decisions.jsonl")
    assert sum(1 for r in records if r.get("policy_compiled")) == 1
    assert {r["policy"] for r in records} == {good}
    assert all("invalid TOML" in r["policy_error"] for r in records)


def test_a_fresh_cache_compiles_nothing(stale: tuple[Path, Path], tmp_path: Path) -> None:
    """The control: once compiled (as install, apply and upgrades do), no start compiles."""
    policy, cache_dir = stale
    cache.load_compiled(str(policy), str(cache_dir))
    log = tmp_path / "decisions.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    subprocess.run([PYTHON, "-m", "tiergate.hook.stages", "precreate", "--policy", str(policy), "--cache-dir",
                    str(cache_dir), "--log", str(log)], input=json.dumps(podman_precreate()).encode(), env=env,
                   capture_output=True, timeout=120, check=False)
    (record,) = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert "policy_compiled" not in record and record["policy"]


def _run_installed(hooks: Path) -> dict:
    """The precreate hook exactly as podman would run it from its hooks.d registration; its record."""
    reg = json.loads((hooks / "99-tiergate-precreate.json").read_text())["hook"]
    log = Path(reg["args"][reg["args"].index("--log") + 1])
    before = len(log.read_text().splitlines()) if log.exists() else 0
    subprocess.run(reg["args"], executable=reg["path"], input=json.dumps(podman_precreate()).encode(), env={},
                   capture_output=True, timeout=120, check=False)
    records = [json.loads(line) for line in log.read_text().splitlines()[before:] if line.strip()]
    (record,) = [r for r in records if r["stage"] == "precreate"]
    return record


def test_install_and_policy_apply_compile_for_the_installed_hook(tmp_path: Path, capsys) -> None:
    """The hook runs its own pinned release: what install and `policy apply` (the CLI's code) compiled
    is fresh for it; only an edit that skipped `policy apply` costs a start a compile."""
    from tiergate.cli import main as cli

    live = tmp_path / "etc" / "policy.toml"
    live.parent.mkdir()
    shutil.copy(SHIPPED_POLICY, live)
    hooks, cache_dir = tmp_path / "hooks", tmp_path / "cache"
    assert cli.main(["install", "--engine", "podman", "--hooks-dir", str(hooks), "--bin-dir", str(tmp_path / "bin"),
                     "--policy", str(live), "--cache-dir", str(cache_dir), "--log", str(tmp_path / "log.jsonl")]) == 0
    assert f"compiled {live} into {cache_dir} (digest " in capsys.readouterr().out
    first = _run_installed(hooks)
    assert "policy_compiled" not in first and first["policy"]
    new = tmp_path / "new.toml"
    new.write_text(SHIPPED_POLICY.read_text().replace('default_tier = "baseline"', 'default_tier = "restricted"'))
    assert cli.main(["policy", "apply", str(new), "--to", str(live), "--cache-dir", str(cache_dir)]) == 0
    applied = _run_installed(hooks)
    assert "policy_compiled" not in applied and applied["policy"] != first["policy"]
    st = live.stat()
    os.utime(live, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # the control: an edit in place
    assert _run_installed(hooks).get("policy_compiled") is True
    assert "policy_compiled" not in _run_installed(hooks)
