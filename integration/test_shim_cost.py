"""The runtime shim's own cost on create and on exec, deterministically: callgrind instruction counts.

The installed shim's own part (BIN/tiergate-runtime, the compiled front, run as an engine runs
it: `SHIM ARGV`, with a PATH and cwd /, the policy compiled at install) is
measured up to its execve into the real runtime, which is a stub here so that only tiergate
is counted: served by its warm helper (the front alone), and a miss (the Python launcher the
front execs, BIN/lib/tiergate-runtime.py, running the start itself). create hardens a runc bundle that asks for the restricted tier; exec hardens a
--process file (as docker and containerd pass one) for a container runc created from that
hardened bundle. The reference is `python3 -I -S -c pass` of the same interpreter, measured in
the same run. Instruction counts repeat to ~0.1%, unlike wall time on a shared machine (issue 20).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

import harness
from tiergate.engines import front, warm

pytestmark = pytest.mark.runc

# Issue 20: the shim's own part at most 5 ms on create and on exec (~10 M instructions here, so
# ~1.5x the floor). Reached so far (restricted tier, runc bundle, warm cache): create 2.25x, exec
# 1.97x (from 2.28x and 2.02x: imports only a rare path needs moved to it), then create 2.04x, exec
# 1.84x (the launcher runs engines/boot.py compiled from the code file, no GC), then create 1.90x,
# exec 1.76x (only the image source that claims the bundle is imported, the spec schema walked as
# written, realpath asked of the kernel, the real runtime found once, fewer trust-check stats).
# Left, of ~16 M on create and ~13 M on exec beyond the interpreter, os and the launcher (~22 M):
# ~36 modules (~9.5 M: ~5 M unmarshalling their code, ~1.5 M in importlib, the rest their bodies),
# the policy cache's trust checks (~1 M) and tier file (~0.4 M), the decision log (~0.6 M), and on
# create the modifiers (~0.9 M) and the rewrite of config.json (~0.8 M, mostly JSON encoding).
# MAX_RATIO holds what was reached, with a small margin: lower it as the shim gets cheaper,
# never raise it.
GOAL_RATIO = 1.5
# With the warm helper (engines/warm.py) and the compiled front (engines/front.c) the shim process
# is the front alone up to its execve of the real runtime: create 0.10 M, exec 0.10 M (0.006x;
# 16.9 M, 0.85x, with the Python client it replaces); the helper's child does the work (decides,
# hardens, writes the record: ~3.2 M on exec beyond a pass-through, printed) and hands the
# runtime's path, argv and environment back. On a miss (no helper, one that declines) the front
# execs the Python launcher, which runs it: create 1.90x, exec 1.76x, held by MAX_RATIO.
MAX_RATIO = {"create": 1.95, "exec": 1.81}  # a miss: the Python launcher the front execs
WARM_MAX_RATIO = {"create": 0.02, "exec": 0.02}  # the front alone, its helper's child doing the work
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.fixture(scope="module")
def installed(it_dir):
    """(python, compiled front, Python launcher, log): the shim installed in front of a stub runtime,
    its policy compiled."""
    from tiergate.engines import launcher, shim

    d = it_dir / f"shim-cost-{os.getpid()}"
    d.mkdir(parents=True)
    stub = d / "stub-runtime"  # the shim's execv target: counted no further
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    bin_dir, log = d / "bin", d / "decisions.jsonl"
    shim.install(bin_dir, "integration shim cost", runtime=str(stub), cache_dir=str(d / "cache"), log=str(log),
                 say=lambda *_: None)
    assert launcher.precompile(bin_dir, {"cache_dir": str(d / "cache")}, say=lambda *_: None)
    py_launcher = bin_dir / shim.PY_LAUNCHER
    assert front.launcher_of(bin_dir / shim.SHIM) == str(py_launcher), "no compiled front (cc is on this host)"
    python = py_launcher.read_text().splitlines()[0][2:].split()[0]
    return python, str(bin_dir / shim.SHIM), str(py_launcher), log


def _last(log) -> dict:
    return json.loads(log.read_text().splitlines()[-1])


def helper_child(python: str, py_launcher: str, argv: list[str], key: str, log, out: Path, reset) -> int:
    """About the instructions of the helper's child that serves `argv` (the front's arguments): a
    helper started under callgrind (the Python launcher asked to start one, as the front asks it;
    valgrind follows its forks, each child writes out/cg.<pid>) serves a pass-through (`state`, its
    runtime named without a slash so the front leaves it to Python: the child only hands the runtime
    back), then `argv`. A child's total includes its parent's up
    to the fork, so the second's less the first's is its own work beyond a pass-through (and the
    helper's serving of the first)."""
    warm.stop(key + "-", say=lambda _line: None)
    out.mkdir()
    reset()
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", f"--log-file={out}/vg.%p",
                    python, "-IS", py_launcher, *argv[1:]], env={**ENV, front.SPAWN_ENV: "1"}, cwd="/",
                   capture_output=True, timeout=300, check=True)
    pid = harness.warm_helper_pid(key)
    state = [argv[0], *argv[argv.index("exec") - 2:argv.index("exec")], "state", argv[-1]]  # --root ROOT state ID
    # the front execs the real runtime itself for `state`; named without a slash, the helper's child resolves it
    stub = Path(argv[0]).parent.parent / "stub-runtime"
    subprocess.run(state, env={**ENV, "PATH": f"{stub.parent}:{ENV['PATH']}", "TIERGATE_RUNTIME": stub.name}, cwd="/",
                   capture_output=True, timeout=300, check=True)
    reset()
    subprocess.run(argv, env=ENV, cwd="/", capture_output=True, timeout=300, check=True)
    assert _last(log).get("warm") == pid, _last(log)

    def written():  # a child writes its profile as it exits, after the front has its answer
        done = sorted((p for p in out.glob("cg.*") if int(p.suffix[1:]) > pid and "\ntotals:" in p.read_text()),
                      key=lambda p: int(p.suffix[1:]))
        return done if len(done) == 2 else None

    first, second = harness.wait_until(written, timeout=120, what="the children's profiles")
    warm.stop(key + "-", say=lambda _line: None)
    return harness.callgrind_total(second) - harness.callgrind_total(first)


def test_shim_create_and_exec_cost_against_bare_python(installed, runc_bundle, runc_env, tmp_path):
    python, exe, py_launcher, log = installed
    root = str(runc_env["runc_root"])
    cid = f"tgcost-{uuid.uuid4().hex[:8]}"
    b = runc_bundle(args=["sleep", "60"])
    b.config["annotations"] = {"io.tiergate.tier": "restricted"}
    b.config.setdefault("linux", {})["cgroupsPath"] = f"{b.cgroup_parent}/{cid}"
    b.write()
    floor, _ = harness.instructions_until_exec([python, "-I", "-S", "-c", "pass"], tmp_path / "floor.out", env=ENV)
    key = warm.key_in(Path(py_launcher).read_text())
    assert key, "the installed shim launcher uses no warm helper"
    # no helper yet: this start runs in the launcher's process and starts one
    subprocess.run([exe, "--root", root, "create", "--bundle", str(b.dir), cid],
                   env=ENV, cwd="/", capture_output=True, timeout=60, check=True)
    pid = harness.warm_helper_pid(key)
    figures: dict = {}

    def measure(stage: str, argv: list[str], reset=lambda: None) -> None:
        for path in ("warm", "miss"):
            reset()
            # a miss (no root, no helper, or declined): the Python launcher the front execs runs it
            # (measured on its own: the front's part before that exec is the warm figure's size)
            count, proc = harness.instructions_until_exec(
                [exe, *argv] if path == "warm" else [python, "-IS", py_launcher, *argv],
                tmp_path / f"{stage}-{path}.out", env=ENV)
            assert proc.returncode == 0, proc.stderr[-2000:]
            last = _last(log)
            assert (last["stage"], last["tier"], last["outcome"]) == (stage, "restricted", "allowed"), last
            assert last.get("warm") == (pid if path == "warm" else None), (path, last)  # who ran it
            figures[stage, path] = count

    try:
        measure("create", ["--root", root, "create", "--bundle", str(b.dir), cid], b.write)  # a pristine bundle each time
        # the measured runs did the whole job: the bundle hardened to the tier it asked for
        hardened = json.loads(b.config_path.read_text())
        assert hardened["annotations"]["io.tiergate.tier"] == "restricted" and hardened["process"]["noNewPrivileges"]

        subprocess.run([runc_env["runc"], "--root", root, "create", "--bundle", str(b.dir), cid],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, timeout=30)
        process = tmp_path / "process.json"
        asked = json.dumps({
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"], "terminal": False,
            "capabilities": {k: ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                             for k in ("bounding", "effective", "permitted")}})
        measure("exec", ["--root", root, "exec", "--process", str(process), "--detach",
                         "--pid-file", str(tmp_path / "exec.pid"), cid], lambda: process.write_text(asked))
        done = json.loads(process.read_text())
        assert done["noNewPrivileges"] is True and done["capabilities"]["bounding"] == ["CAP_NET_BIND_SERVICE"], done
        child = helper_child(python, py_launcher, [exe, "--root", root, "exec", "--process", str(process), "--detach",
                                      "--pid-file", str(tmp_path / "exec.pid"), cid], key, log, tmp_path / "helper",
                             lambda: process.write_text(asked))
    finally:
        subprocess.run([runc_env["runc"], "--root", root, "delete", "--force", cid], capture_output=True, timeout=30)
        warm.stop(key + "-", say=lambda _line: None)

    print(f"\npython3 -I -S -c pass: {floor / 1e6:.2f} M instructions (goal {GOAL_RATIO}x)")
    print(f"the helper's child serving an exec (decides, hardens, records; not held), beyond a pass-through: "
          f"~{child / 1e6:.2f} M")
    for (stage, path), count in figures.items():
        budget = (MAX_RATIO if path == "miss" else WARM_MAX_RATIO)[stage]
        print(f"tiergate-runtime {stage}, {path}: {count / 1e6:.2f} M ({count / floor:.3f}x, held {budget}x)")
    for (stage, path), count in figures.items():
        budget = (MAX_RATIO if path == "miss" else WARM_MAX_RATIO)[stage]
        assert count <= budget * floor, (
            f"shim {stage} ({path}): {count / 1e6:.2f} M instructions, {count / floor:.3f}x python3 -I -S -c "
            f"pass's {floor / 1e6:.2f} M (budget {budget}x)")
