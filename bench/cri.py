#!/usr/bin/env python3
"""Pod start and ExecSync under containerd's CRI plugin: the runc handler beside tiergate's (issue 18).

    sudo .venv/bin/python bench/cri.py [--rounds 20] [--execs 20]

A private node from integration/cri (containerd 1.6 + CRI, a CNI bridge in its
own namespace, images imported without a registry); tiergate installed into it
with `tiergate install --engine containerd --config`. Each round starts one pod
(RunPodSandbox + CreateContainer + StartContainer, wall time, as kubelet
calls them) per configuration, in an order rotated from round to round, after
one warm-up each; then ExecSync `true` alternately in a runc and a tiergate
pod. Prints medians (and quartiles) in ms. Run on demand, never as a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))

import cri  # noqa: E402
import harness  # noqa: E402

CONFIGS = {  # name -> (handler, image key)
    "runc": ("runc", "plain"),
    "tiergate baseline (unlabelled image)": ("tiergate", "plain"),
    "tiergate restricted (image label)": ("tiergate", "restricted"),
}


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return f"median {statistics.median(samples) * 1000:6.1f} ms  (q1 {q[0] * 1000:.1f}, q3 {q[2] * 1000:.1f}, n={len(samples)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--execs", type=int, default=20)
    args = ap.parse_args(argv)
    from tiergate.cli.main import main as tiergate

    work = Path(tempfile.mkdtemp(prefix="tg-bench-cri-", dir="/tmp"))
    node = None
    try:
        rootfs = harness.busybox_rootfs(work / "busybox")
        node = cri.CriNode(work / "node", rootfs.tar)
        node.write_config()
        if tiergate(["install", "--engine", "containerd", "--config", str(node.config), "--bin-dir", str(work / "bin"),
                     "--log", str(work / "decisions.jsonl"), "--cache-dir", str(work / "cache")]) != 0:
            return 1
        node.start()
        images = {"plain": node.import_image("localhost/bench-plain:1"),
                  "restricted": node.import_image("localhost/bench-restricted:1", {"io.tiergate.tier": "restricted"})}

        def pod(handler: str, image: str) -> tuple[float, str, str]:
            t = time.perf_counter()
            config = node.sandbox_config(f"b-{handler}")
            sid = node.run_pod(config, handler)
            cid = node.create(sid, config, images[image])
            node.start_container(cid)
            return time.perf_counter() - t, sid, cid

        names = list(CONFIGS)
        starts: dict[str, list[float]] = {n: [] for n in names}
        for name in names:  # warm-up
            node.remove_pod(pod(*CONFIGS[name])[1])
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                took, sid, _ = pod(*CONFIGS[name])
                starts[name].append(took)
                node.remove_pod(sid)
        execs: dict[str, list[float]] = {"runc": [], "tiergate": []}
        targets = {h: pod(h, "plain")[2] for h in execs}
        for i in range(args.execs + 1):
            for h in (("runc", "tiergate") if i % 2 else ("tiergate", "runc")):
                t = time.perf_counter()
                assert node.exec_sync(targets[h], "/bin/true").exit_code == 0
                if i:  # the first of each is a warm-up
                    execs[h].append(time.perf_counter() - t)
        print(f"\nPod start (RunPodSandbox + CreateContainer + StartContainer), {args.rounds} interleaved rounds:")
        for name in names:
            print(f"  {name:40s} {summary(starts[name])}")
        print(f"ExecSync /bin/true, {args.execs} alternating runs:")
        for h, samples in execs.items():
            print(f"  {h:40s} {summary(samples)}")
        return 0
    finally:
        if node is not None:
            node.stop()
        harness.remove_tree(work)


if __name__ == "__main__":
    sys.exit(main())
