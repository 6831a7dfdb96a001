"""The runtime shim's own cost on create and on exec, deterministically: callgrind instruction counts.

The installed shim's Python part (BIN/lib/tiergate-runtime.py, run as its /bin/sh front runs
it: `python -IS LAUNCHER ARGV`, with a PATH and cwd /, the policy compiled at install) is
measured up to its execv into the real runtime, which is a stub here so that only tiergate
is counted. create hardens a runc bundle that asks for the restricted tier; exec hardens a
--process file (as docker and containerd pass one) for a container runc created from that
hardened bundle. The reference is `python3 -I -S -c pass` of the same interpreter, measured in
the same run. Instruction counts repeat to ~0.1%, unlike wall time on a shared machine (issue 20).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

import harness

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
MAX_RATIO = {"create": 1.95, "exec": 1.81}
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.fixture(scope="module")
def installed(it_dir):
    """(python, launcher, log): the shim installed in front of a stub runtime, its policy compiled."""
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
    python = py_launcher.read_text().splitlines()[0][2:].split()[0]
    return python, str(py_launcher), log


def _last(log) -> dict:
    return json.loads(log.read_text().splitlines()[-1])


def test_shim_create_and_exec_cost_against_bare_python(installed, runc_bundle, runc_env, tmp_path):
    python, py_launcher, log = installed
    root = str(runc_env["runc_root"])
    cid = f"tgcost-{uuid.uuid4().hex[:8]}"
    b = runc_bundle(args=["sleep", "60"])
    b.config["annotations"] = {"io.tiergate.tier": "restricted"}
    b.config.setdefault("linux", {})["cgroupsPath"] = f"{b.cgroup_parent}/{cid}"
    b.write()
    floor, _ = harness.instructions_until_exec([python, "-I", "-S", "-c", "pass"], tmp_path / "floor.out", env=ENV)
    figures = {}

    count, proc = harness.instructions_until_exec(
        [python, "-IS", py_launcher, "--root", root, "create", "--bundle", str(b.dir), cid],
        tmp_path / "create.out", env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the measured run did the whole job: the bundle hardened to the tier it asked for
    assert (_last(log)["stage"], _last(log)["tier"], _last(log)["outcome"]) == ("create", "restricted", "allowed")
    hardened = json.loads(b.config_path.read_text())
    assert hardened["annotations"]["io.tiergate.tier"] == "restricted" and hardened["process"]["noNewPrivileges"]
    figures["create"] = count

    subprocess.run([runc_env["runc"], "--root", root, "create", "--bundle", str(b.dir), cid],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, timeout=30)
    try:
        process = tmp_path / "process.json"
        process.write_text(json.dumps({
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"], "terminal": False,
            "capabilities": {k: ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                             for k in ("bounding", "effective", "permitted")}}))
        count, proc = harness.instructions_until_exec(
            [python, "-IS", py_launcher, "--root", root, "exec", "--process", str(process), "--detach",
             "--pid-file", str(tmp_path / "exec.pid"), cid], tmp_path / "exec.out", env=ENV)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        subprocess.run([runc_env["runc"], "--root", root, "delete", "--force", cid], capture_output=True, timeout=30)
    assert (_last(log)["stage"], _last(log)["tier"], _last(log)["outcome"]) == ("exec", "restricted", "allowed")
    done = json.loads(process.read_text())
    assert done["noNewPrivileges"] is True and done["capabilities"]["bounding"] == ["CAP_NET_BIND_SERVICE"], done
    figures["exec"] = count

    print(f"\npython3 -I -S -c pass: {floor / 1e6:.2f} M instructions (goal {GOAL_RATIO}x)")
    for stage, count in figures.items():
        print(f"tiergate-runtime {stage}: {count / 1e6:.2f} M ({count / floor:.3f}x, held {MAX_RATIO[stage]}x)")
    for stage, count in figures.items():
        assert count <= MAX_RATIO[stage] * floor, (
            f"shim {stage}: {count / 1e6:.2f} M instructions, {count / floor:.3f}x python3 -I -S -c pass's "
            f"{floor / 1e6:.2f} M (budget {MAX_RATIO[stage]}x)")
