#!/usr/bin/env python3
"""Pod start and ExecSync under containerd's CRI plugin: runc beside tiergate's handler (issues 18, 20).

    sudo .venv/bin/python bench/cri.py [--rounds 20] [--execs 20]

A private node from integration/cri (containerd 1.6 + CRI, a CNI bridge in its
own namespace, images imported without a registry); tiergate installed into it
with `tiergate install --engine containerd --config`, and a `noop` handler
whose runc is a Python script that execs runc unchanged (the floor of any
Python shim). Each round starts one pod (RunPodSandbox + CreateContainer +
StartContainer, wall time, as kubelet calls them) per configuration, in an
order rotated from round to round, after one warm-up each; then ExecSync
`true` in a runc pod (without and with RuntimeDefault), a no-op and a tiergate
pod, rotated. bench/bench.py runs this as its `cri` section; alone it prints
medians. Run on demand, never as a test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))

import cri  # noqa: E402  (integration/cri: the private CRI node)
import harness  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
CONFIGS = {  # name -> (handler, image key, RuntimeDefault seccomp: "container", "pod" (sandbox too) or "")
    "runc": ("runc", "plain", ""),
    "runc + RuntimeDefault seccomp": ("runc", "plain", "container"),
    "runc + RuntimeDefault seccomp, pod level (sandbox too)": ("runc", "plain", "pod"),
    "no-op Python shim": ("noop", "plain", ""),
    "tiergate baseline (unlabelled image)": ("tiergate", "plain", ""),
    "tiergate restricted (image label)": ("tiergate", "restricted", ""),
}
EXEC_HANDLERS = {  # name -> (handler, RuntimeDefault seccomp): tiergate's exec builds its tier's filter too
    "runc": ("runc", False), "runc + RuntimeDefault seccomp": ("runc", True),
    "no-op Python shim": ("noop", False), "tiergate": ("tiergate", False)}


def add_noop_handler(node: cri.CriNode, work: Path) -> None:
    """A `noop` runtime handler: runc's options with BinaryName a Python script that execs runc."""
    runc = harness.require_binary("runc")
    noop = work / "noop-runc"
    noop.write_text(f"#!{SYSTEM_PYTHON} -IS\nimport os, sys\nos.execv({runc!r}, [{runc!r}, *sys.argv[1:]])\n")
    noop.chmod(0o755)
    conf = tomllib.loads(node.config.read_text())
    runtimes = conf["plugins"][cri.CRI]["containerd"]["runtimes"]
    runtimes["noop"] = {**runtimes["runc"], "options": {**runtimes["runc"]["options"], "BinaryName": str(noop)}}
    node.config.write_text(harness.toml_dumps(conf))


def measure(rounds: int, execs: int, *, work: Path, rootfs_tar: Path | None = None, say=print) -> dict:
    """{"pods": {config: [seconds]}, "exec": {handler: [seconds]}}; removes everything it made."""
    from tiergate.cli.main import main as tiergate

    work.mkdir(parents=True, exist_ok=True)
    node = None
    try:
        rootfs_tar = rootfs_tar or harness.busybox_rootfs(work / "busybox").tar
        node = cri.CriNode(work / "node", rootfs_tar)
        node.write_config()
        with contextlib.redirect_stdout(io.StringIO()) as said:
            rc = tiergate(["install", "--engine", "containerd", "--config", str(node.config), "--bin-dir",
                           str(work / "bin"), "--log", str(work / "decisions.jsonl"), "--cache-dir", str(work / "cache")])
        if rc != 0:
            raise RuntimeError(f"tiergate install --engine containerd failed: {said.getvalue()[-300:]}")
        add_noop_handler(node, work)
        node.start()
        images = {"plain": node.import_image("localhost/bench-plain:1"),
                  "restricted": node.import_image("localhost/bench-restricted:1", {"io.tiergate.tier": "restricted"})}

        def pod(handler: str, image: str, seccomp: str = "") -> tuple[float, str, str]:
            t = time.perf_counter()
            config = node.sandbox_config(f"b-{handler}", seccomp_default=seccomp == "pod")
            sid = node.run_pod(config, handler)
            cid = node.create(sid, config, images[image], seccomp_default=bool(seccomp))
            node.start_container(cid)
            return time.perf_counter() - t, sid, cid

        names = list(CONFIGS)
        starts: dict[str, list[float]] = {n: [] for n in names}
        for name in names:  # warm-up
            node.remove_pod(pod(*CONFIGS[name])[1])
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                took, sid, _ = pod(*CONFIGS[name])
                starts[name].append(took)
                node.remove_pod(sid)
            say(f"  cri pod start round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {statistics.median(v) * 1000:.0f}" for n, v in starts.items()))
        times: dict[str, list[float]] = {n: [] for n in EXEC_HANDLERS}
        targets = {n: pod(h, "plain", "container" if rd else "")[2] for n, (h, rd) in EXEC_HANDLERS.items()}
        order = list(EXEC_HANDLERS)
        for i in range(execs + 1):
            for n in order[i % len(order):] + order[:i % len(order)]:
                t = time.perf_counter()
                if node.exec_sync(targets[n], "/bin/true").exit_code != 0:
                    raise RuntimeError(f"ExecSync in the {n} pod failed")
                if i:  # the first of each is a warm-up
                    times[n].append(time.perf_counter() - t)
        return {"pods": starts, "exec": times}
    finally:
        if node is not None:
            node.stop()
        harness.remove_tree(work)


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return f"median {statistics.median(samples) * 1000:6.1f} ms  (q1 {q[0] * 1000:.1f}, q3 {q[2] * 1000:.1f}, n={len(samples)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--execs", type=int, default=20)
    args = ap.parse_args(argv)
    res = measure(args.rounds, args.execs, work=Path(tempfile.mkdtemp(prefix="tg-bench-cri-", dir="/tmp")))
    print(f"\nPod start (RunPodSandbox + CreateContainer + StartContainer), {args.rounds} interleaved rounds:")
    for name, samples in res["pods"].items():
        print(f"  {name:40s} {summary(samples)}")
    print(f"ExecSync /bin/true, {args.execs} rotated runs:")
    for name, samples in res["exec"].items():
        print(f"  {name:40s} {summary(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
