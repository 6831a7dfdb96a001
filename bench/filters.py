#!/usr/bin/env python3
"""What runc pays to build each seccomp filter (issue 20): BPF length, libseccomp's work, `runc exec` time.

    sudo .venv/bin/python bench/filters.py [--rounds 20]

runc 1.1 has libseccomp build the filter from the spec in `runc init`, on every
create and every exec. Per profile: `bpf`, the instructions of the program
libseccomp emits for every listed ABI (what the kernel loads); `build_minstr`,
the millions of instructions libseccomp executes to build and export it
(callgrind, counted inside ffi_call around pyseccomp's calls, which are runc's:
one rule per syscall and condition on every ABI, then the export; repeats
exactly); `exec_ms`, `runc exec <ctr> true` wall time in a detached runc
container carrying the filter, rounds interleaved. Profiles: none, containerd
1.6's RuntimeDefault (tests/data/seccomp), each shipped profile as the policy
compiles it on this host, and the same listing every ABI of the host's family
(the shape before seccomp/abis.py). bench/bench.py runs this as its `filters`
section; alone it prints a table. Run on demand, never as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(REPO))

import harness  # noqa: E402

RUNTIME_DEFAULT = REPO / "tests" / "data" / "seccomp" / "containerd-1.6-runtime-default.json"


def profiles() -> dict[str, dict | None]:
    """name -> OCI seccomp object (None: no filter)."""
    from tiergate.core.names import SECCOMP_ARCH_FAMILIES
    from tiergate.policy.compile import host_arches
    from tiergate.seccomp.profiles import compile_profile, list_profiles

    import platform

    out: dict[str, dict | None] = {"none": None, "containerd RuntimeDefault": json.loads(RUNTIME_DEFAULT.read_text())}
    family = SECCOMP_ARCH_FAMILIES.get(platform.machine())
    for name in list_profiles():
        out[f"tier {name}"] = compile_profile(name, arches=host_arches())
        every = compile_profile(name, arches=family)
        if every != out[f"tier {name}"]:
            out[f"tier {name}, every ABI"] = every
    return out


def build(path: str) -> int:
    """(Run under callgrind) build and export the filter as runc does; print its BPF length."""
    from tiergate.seccomp.build import to_filter

    with tempfile.TemporaryFile() as fh:
        to_filter(json.loads(Path(path).read_text()), all_arches=True).export_bpf(fh)
        print(f"bpf={fh.tell() // 8}")
    return 0


def libseccomp_work(profile: dict, work: Path) -> tuple[int, float]:
    """(BPF instructions, millions of instructions libseccomp executed) for one profile."""
    src = work / f"p-{uuid.uuid4().hex[:8]}.json"
    src.write_text(json.dumps(profile))
    proc = subprocess.run([harness.require_binary("valgrind"), "--tool=callgrind", "--toggle-collect=ffi_call",
                           "--callgrind-out-file=/dev/null", sys.executable, __file__, "--build", str(src)],
                          capture_output=True, text=True, timeout=600)
    bpf = re.search(r"bpf=(\d+)", proc.stdout)
    collected = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not bpf or not collected:
        raise RuntimeError(f"callgrind of the filter build failed: {proc.stderr[-300:]}")
    return int(bpf.group(1)), round(int(collected.group(1)) / 1e6, 2)


def exec_times(filters: dict[str, dict | None], rounds: int, work: Path, say=print) -> dict[str, dict[str, list[float]]]:
    """`runc exec true` per filter, one detached container each, rounds rotated: {"wall": [s], "cpu": [s]}
    (cpu: user + system of runc exec and runc init, which it reaps; the wall time here moves in steps of
    ~32 ms, runc's own polling, so cpu separates the filters better)."""
    runc = harness.require_binary("runc")
    rootfs = harness.busybox_rootfs(work / "busybox").path
    base = harness.runc_base_spec(runc)
    base["root"] = {"path": str(rootfs), "readonly": True}
    base["process"].update(terminal=False, args=["/bin/sleep", "3600"])
    root, parent = work / "runc-root", f"/tiergate-bench-{os.getpid()}-filters"
    made: dict[str, str] = {}
    argv = [runc, "--root", str(root)]
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        for i, (name, flt) in enumerate(filters.items()):
            bundle, cid = work / f"bundle{i}", f"tgf-{uuid.uuid4().hex[:10]}"
            bundle.mkdir()
            spec = json.loads(json.dumps(base))
            spec["linux"]["cgroupsPath"] = f"{parent}/{cid}"
            if flt is not None:
                spec["linux"]["seccomp"] = flt
            (bundle / "config.json").write_text(json.dumps(spec))
            if subprocess.run([*argv, "run", "-d", "--bundle", str(bundle), cid], timeout=60, **quiet).returncode:
                raise RuntimeError(f"runc run -d failed for {name}")
            made[name] = cid
        times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in made}
        names = list(made)
        for r in range(rounds + 1):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t, ru = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                if subprocess.run([*argv, "exec", made[name], "/bin/true"], timeout=60, **quiet).returncode:
                    raise RuntimeError(f"runc exec failed for {name}")
                wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
                if r:  # round 0 warms up
                    times[name]["wall"].append(wall)
                    times[name]["cpu"].append(after.ru_utime - ru.ru_utime + after.ru_stime - ru.ru_stime)
            if r:
                say(f"  runc exec round {r}/{rounds} (cpu ms): " + ", ".join(
                    f"{n} {statistics.median(v['cpu']) * 1000:.1f}" for n, v in times.items()))
        return times
    finally:
        for cid in made.values():
            subprocess.run([*argv, "delete", "--force", cid], timeout=60, **quiet)
        harness.remove_cgroup(parent)


def measure(rounds: int, *, work: Path, say=print) -> dict[str, dict]:
    """{profile: {"bpf", "build_minstr", "arches", "exec_ms": [..], "exec_cpu_ms": [..]}}; removes what it made."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        filters = profiles()
        out: dict[str, dict] = {}
        for name, flt in filters.items():
            bpf, minstr = libseccomp_work(flt, work) if flt else (0, 0.0)
            out[name] = {"bpf": bpf, "build_minstr": minstr, "arches": (flt or {}).get("architectures", [])}
            say(f"  {name}: {bpf} BPF instructions, libseccomp {minstr} M instructions")
        for name, samples in exec_times(filters, rounds, work, say).items():
            out[name]["exec_ms"] = [round(s * 1000, 2) for s in samples["wall"]]
            out[name]["exec_cpu_ms"] = [round(s * 1000, 2) for s in samples["cpu"]]
        return out
    finally:
        harness.remove_tree(work)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        return build(args.build)
    res = measure(args.rounds, work=Path(tempfile.mkdtemp(prefix="tg-bench-filters-", dir="/tmp")))
    print(f"\n{'profile':34s} {'ABIs':>4s} {'BPF':>5s} {'libseccomp M':>12s} {'runc exec cpu ms':>16s} {'wall ms':>8s}")
    for name, r in res.items():
        print(f"{name:34s} {len(r['arches']):4d} {r['bpf']:5d} {r['build_minstr']:12.1f} "
              f"{statistics.median(r['exec_cpu_ms']):16.1f} {statistics.median(r['exec_ms']):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
