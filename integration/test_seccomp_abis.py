"""A tier's filter lists only the ABIs this kernel runs, and every answer stays the same, seen in runc.

Each ABI a filter lists is another copy runc has libseccomp build on every create and
exec (seccomp/abis.py). The probe (integration/probes/abis.c) makes raw syscalls on
x86_64, i386 and x32 in a runc container: with no filter (the control: the calls
run, or fail as the kernel fails them), under the tier's filter as the policy
compiled it on this host, and under the same filter listing every ABI of the family
(as before). x86_64 and i386 get identical answers from both filters; where the
kernel runs no x32 the compiled filter leaves it out, and an x32 call, which
failed with ENOSYS or EPERM before, now ends its caller (SIGSYS).
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import pytest

from harness import run_cmd
from tiergate_fixtures import compiled_policy

pytestmark = pytest.mark.runc

PROBE_SRC = Path(__file__).resolve().parent / "probes" / "abis.c"
TIERS = ("baseline", "isolated")  # with i386, and without it (socket rules by argument)
SIGSYS = 31


def answers(output: str) -> dict[tuple[str, str], str]:
    out = {}
    for line in output.splitlines():
        head, sep, result = line.partition(" = ")
        if sep:
            abi, name = head.split()
            out[abi, name] = result
    return out


@pytest.fixture(scope="module")
def runs(runc_env, busybox_rootfs, tmp_path_factory):
    """{"control" | (tier, "compiled" | "every ABI"): {(abi, call): answer}}."""
    import harness
    from tiergate.core.names import SECCOMP_ARCH_FAMILIES
    from tiergate.seccomp.profiles import compile_profile

    if platform.machine() != "x86_64":
        pytest.skip(f"the probe is x86 machine code; this host is {platform.machine()}")
    if not shutil.which("gcc"):
        pytest.skip("gcc is missing (apt-get install gcc)")
    d = tmp_path_factory.mktemp("seccomp-abis")
    root = busybox_rootfs.copy_to(d / "rootfs")
    run_cmd([shutil.which("gcc"), "-static", "-O1", "-o", str(root / "bin/abis"), str(PROBE_SRC)], check=True, timeout=120)
    tiers = compiled_policy()["tiers"]
    filters: dict = {"control": None}
    for t in TIERS:
        tier = tiers[t]
        filters[t, "compiled"] = tier["seccomp"]
        filters[t, "every ABI"] = compile_profile(tier["seccomp_profile"], list(tier["seccomp_deny"]),
                                                  arches=SECCOMP_ARCH_FAMILIES["x86_64"],
                                                  extra_allow=list(tier.get("seccomp_allow") or ()))
    out = {}
    for key, flt in filters.items():
        bundle = harness.RuncBundle(d / ("-".join(key) if isinstance(key, tuple) else key).replace(" ", "-"), root,
                                    None, args=["/bin/abis"], runc_root=runc_env["runc_root"],
                                    runc=runc_env["runc"], cgroup_parent=runc_env["cgroup_parent"])
        if flt is not None:
            bundle.config["linux"]["seccomp"] = flt
        proc = bundle.run(timeout=60)
        assert proc.returncode == 0, (key, proc.stderr[-500:])
        out[key] = answers(proc.stdout)
        harness.remove_tree(bundle.dir)
    return out


def test_control_runs_the_calls(runs):
    control = runs["control"]
    assert len(control) == 30
    assert control["x86_64", "getppid"] == control["i386", "getppid"] == "1"  # pid 1: the probe itself
    assert control["x86_64", "unshare-user"] == "0"  # the calls the tiers refuse work without a filter
    assert int(control["x86_64", "socket-vsock"]) != -38


@pytest.mark.parametrize("tier", TIERS)
def test_every_native_and_i386_answer_is_unchanged(runs, tier):
    compiled, every = runs[tier, "compiled"], runs[tier, "every ABI"]
    assert compiled["x86_64", "umount2"] == "-1" and compiled["x86_64", "unshare-user"] == "-1"  # the tier's EPERM
    assert compiled["x86_64", "io_uring_setup"] == compiled["x86_64", "nfsservctl"] == "-38"  # its default, ENOSYS
    for key, answer in every.items():
        if key[0] != "x32":
            assert compiled[key] == answer, key
    if tier == "isolated":  # no i386 in this tier: socketcall would pass AF_INET by
        assert {compiled["i386", name] for _, name in compiled} == {f"signal {SIGSYS}"}


@pytest.mark.parametrize("tier", TIERS)
def test_x32_is_left_out_only_where_the_kernel_runs_none(runs, tier):
    from tiergate.seccomp.abis import x32_runs

    compiled, every, control = runs[tier, "compiled"], runs[tier, "every ABI"], runs["control"]
    names = [name for abi, name in control if abi == "x32"]
    if x32_runs():
        assert control["x32", "getppid"] == "1"
        assert all(compiled["x32", n] == every["x32", n] for n in names)
        return
    assert {control["x32", n] for n in names} == {"-38"}  # this kernel runs no x32 call
    assert all(every["x32", n].startswith("-") for n in names)  # refused with an errno before
    assert {compiled["x32", n] for n in names} == {f"signal {SIGSYS}"}  # refused by SIGSYS now
