"""What runc pays to build a tier's filter: no more than containerd's RuntimeDefault, same decisions.

runc 1.1 has libseccomp build the filter from the spec on every create and every
exec, and libseccomp's cost grows faster than the BPF program it emits (2.5.4,
baseline's filter: 388 instructions for x86_64 alone cost 7.3 M instructions to
build, 1,122 for x86_64 + x86 + x32 cost 34.8 M). So the program's length is the
deterministic measure here (bench/bench.py's `seccomp` section reports the build
instructions and `runc exec` times). Identity is checked on that very program:
the BPF runc would load for the compiled profile against the one for the same
rules written naively (one rule per syscall, rules repeating the default
action, every ABI of the family), evaluated as the kernel does on every syscall
number and the argument values the rules compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import docker_bundle, podman_precreate, seccomp_arg_vectors, seccomp_samples, shipped_policy  # noqa: E402
from seccomp_testlib import X32_SYSCALL_BIT, bpf_program, bpf_verdict, in_child  # noqa: E402
from tiergate.core.names import SECCOMP_ARCH_FAMILIES  # noqa: E402
from tiergate.policy.compile import host_arches  # noqa: E402
from tiergate.seccomp import profiles as P  # noqa: E402
from tiergate.seccomp.abis import x32_runs  # noqa: E402
from tiergate.seccomp.intersect import intersect  # noqa: E402
from tiergate.seccomp.syscalls import syscall_number  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "data" / "seccomp"
# containerd 1.6.20's RuntimeDefault for a container with CRI's default capabilities (what runc gets).
RUNTIME_DEFAULT = json.loads((DATA / "containerd-1.6-runtime-default.json").read_text())
FAMILY = SECCOMP_ARCH_FAMILIES["x86_64"]
NO_X32 = tuple(a for a in FAMILY if a != "SCMP_ARCH_X32")  # host_arches() on a kernel that runs no x32 (this one)
POLICY = shipped_policy()
TIERS = {n: t for n, t in POLICY["tiers"].items() if t["seccomp"]}
RET_KILL_THREAD = 0x00000000
RET_ACTION = 0xFFFF0000


def compiled(tier: dict, arches: tuple[str, ...]) -> dict:
    return P.compile_profile(tier["seccomp_profile"], list(tier["seccomp_deny"]), arches=arches,
                             extra_allow=list(tier.get("seccomp_allow") or ()))


def naive(tier: dict) -> dict:
    """The same rules as spelled before: one rule per syscall and condition, default-action rules
    included, in source order, every architecture of the family the profile lists."""
    res = P.resolve(tier["seccomp_profile"])
    drop = set(tier["seccomp_deny"]) | set(tier.get("seccomp_allow") or ())
    rules = []
    for name, action, errno, args, *_ in [e for e in res["entries"] if e[0] not in drop]:
        rule = {"names": [name], "action": action, **({"errnoRet": errno} if errno is not None else {})}
        if args:
            rule["args"] = [{"index": i, "value": v, "valueTwo": v2, "op": op} for i, op, v, v2 in args]
        rules.append(rule)
    rules += [{"names": [n], "action": "SCMP_ACT_ERRNO", "errnoRet": 1} for n in tier["seccomp_deny"]]
    rules += [{"names": [n], "action": "SCMP_ACT_ALLOW"} for n in tier.get("seccomp_allow") or ()]
    return {"defaultAction": res["defaultAction"], "defaultErrnoRet": res["defaultErrnoRet"],
            "architectures": [a for a in res["architectures"] if a in FAMILY], "syscalls": rules}


@pytest.mark.parametrize("name", sorted(TIERS))
def test_no_tier_filter_is_longer_than_runtime_default(name: str) -> None:
    """On a kernel without x32 (this machine's; nearly every x86_64 distribution kernel)."""
    rd = len(bpf_program(RUNTIME_DEFAULT))
    mine = len(bpf_program(compiled(TIERS[name], NO_X32)))
    assert mine <= rd, f"{name}: {mine} BPF instructions for runc to build, RuntimeDefault {rd}"


@pytest.mark.parametrize("engine", ["containerd RuntimeDefault", "podman default", "docker default"])
@pytest.mark.parametrize("name", sorted(TIERS))
def test_intersecting_an_engine_default_costs_less_than_it(name: str, engine: str) -> None:
    """Where the engine already set its default profile, tiergate hands runc the intersection."""
    caller = {"containerd RuntimeDefault": RUNTIME_DEFAULT, "podman default": podman_precreate()["linux"]["seccomp"],
              "docker default": docker_bundle()["linux"]["seccomp"]}[engine]
    merged = intersect(compiled(TIERS[name], NO_X32), caller)
    assert len(bpf_program(merged)) <= len(bpf_program(caller))


def test_the_policy_lists_the_abis_this_kernel_runs() -> None:
    assert host_arches() == (FAMILY if x32_runs() else NO_X32)
    for name, tier in TIERS.items():
        assert set(tier["seccomp"]["architectures"]) <= set(host_arches()), name
        if not x32_runs():
            assert tier["seccomp"] == compiled(tier, NO_X32), name  # what the cost test measured


def test_the_x32_probe_survives_a_filter_that_kills_x32() -> None:
    only_x86_64 = {"defaultAction": "SCMP_ACT_ALLOW",
                   "syscalls": [{"names": ["acct"], "action": "SCMP_ACT_ERRNO"}]}  # native arch only: x32 is a bad arch
    assert in_child(x32_runs, only_x86_64) is False


def test_without_a_probe_x32_stays_listed(monkeypatch) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr("os.fork", no_fork)
    assert x32_runs() is True  # keeping an ABI only costs; leaving one out may kill


@pytest.mark.parametrize("name", sorted({t["seccomp_profile"]: n for n, t in TIERS.items()}.values()))
def test_every_call_gets_the_same_answer_as_the_naive_filter(name: str) -> None:
    tier = TIERS[name]
    old, new = naive(tier), compiled(tier, NO_X32)
    assert len(new["syscalls"]) < len(old["syscalls"])
    before, after = bpf_program(old), bpf_program(new)
    vectors = list(seccomp_arg_vectors(seccomp_samples(old)))
    conditional = {n for r in old["syscalls"] if r.get("args") for n in r["names"]}
    checked = 0
    for arch in new["architectures"]:
        assert arch in old["architectures"]
        numbers = {syscall_number(n, arch) for n in conditional} - {None}
        for nr in [*range(1024), X32_SYSCALL_BIT - 1]:
            for args in vectors if nr in numbers else [[0] * 6]:
                assert bpf_verdict(after, arch, nr, args) == bpf_verdict(before, arch, nr, args), (arch, nr, args)
                checked += 1
    assert checked > 1000
    for arch in set(old["architectures"]) - set(new["architectures"]):
        assert arch == "SCMP_ARCH_X32" and not x32_runs()  # left out only where the kernel runs none of it
        # x32's range: refused before (the allowed ones fail with ENOSYS in the kernel), killed now
        for nr in (39 | X32_SYSCALL_BIT, X32_SYSCALL_BIT, 0x7FFFFFFF, 0xFFFFFFFE):
            assert bpf_verdict(before, arch, nr) & RET_ACTION != RET_KILL_THREAD, nr
            assert bpf_verdict(after, arch, nr) & RET_ACTION == RET_KILL_THREAD, nr
        assert bpf_verdict(after, arch, 0xFFFFFFFF) == bpf_verdict(before, arch, 0xFFFFFFFF)  # -1: libseccomp's own
