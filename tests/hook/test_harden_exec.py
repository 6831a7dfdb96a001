"""An exec's process goes through the create's modifiers (harden.harden_exec): for every tier and
every host fact that changes a process, it comes out as the same process in a container spec
would from harden(): dropping a modifier from the exec path makes them differ."""

from __future__ import annotations

import itertools

import pytest
from tests.hook.helpers import REQUIRED_NAMESPACES, TIERS, all_caps, docker_bundle, shipped_policy

from tiergate.core.errors import Refusal
from tiergate.core.harden import harden, harden_exec

POLICY = shipped_policy()
DOCKER = docker_bundle()["process"]  # what docker's exec --process file holds: the create's process


def _caps(names) -> dict:
    return {k: list(names) for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}


PROCESSES = {
    "flags only": {},
    "docker exec": DOCKER,
    "docker exec --privileged": {**DOCKER, "capabilities": _caps(all_caps())},
    "setuid-capable": {**DOCKER, "noNewPrivileges": False, "apparmorProfile": "unconfined",
                       "rlimits": [{"type": "RLIMIT_NPROC", "hard": 1 << 20, "soft": 1 << 20}],
                       "capabilities": _caps(["CAP_KILL", "CAP_SETUID", "CAP_NET_RAW"])},
}
FACTS = {  # what changes a process: cgroups (pids as RLIMIT_NPROC), a loaded AppArmor profile, --privileged
    "rootful": {"cgroup_limits": True, "apparmor": None},
    "rootless, AppArmor": {"cgroup_limits": False, "apparmor": "tiergate-test"},
    "privileged": {"cgroup_limits": True, "apparmor": None, "privileged": True},
}
VARIANTS = {"as shipped": {}, "clamp": {"on_escalation": "clamp"}, "AppArmor required": {"apparmor": "require"}}


def _result(run):
    try:
        process, changes, _ = run()
    except Refusal as exc:
        return "refused", str(exc).replace("refuses a container that", "refuses an exec that")
    return process, sorted(c["field"] + c["what"] for c in changes if c["field"].startswith("$.process"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("facts", FACTS)
@pytest.mark.parametrize("proc", PROCESSES)
@pytest.mark.parametrize("name", TIERS)
def test_exec_process_hardened_as_in_a_container(name, proc, facts, variant):
    tier = {**POLICY["tiers"][name], **VARIANTS[variant]}
    process = PROCESSES[proc]
    spec = {"ociVersion": "1.0.2", "process": process, "root": {"path": "/rootfs"},
            "linux": {"namespaces": [{"type": kind} for kind in REQUIRED_NAMESPACES]}}

    def create():
        out, changes, notes = harden(spec, tier, POLICY, dict(FACTS[facts]), "test")
        return out["process"], changes, notes

    want = _result(create)
    got = _result(lambda: harden_exec(process, tier, POLICY, dict(FACTS[facts]), "test"))
    assert got == want


def test_the_exec_path_changes_processes():
    """The comparison above is not vacuous: each process fact and field is changed for some tier."""
    changed = set()
    for name in TIERS:
        for proc, facts, variant in itertools.product(PROCESSES.values(), FACTS.values(), VARIANTS.values()):
            try:
                _, changes, _ = harden_exec(proc, {**POLICY["tiers"][name], **variant}, POLICY, dict(facts), "test")
            except Refusal:
                changed.add("refused")
                continue
            changed.update(c["field"].split(".")[2] for c in changes)
    assert {"capabilities", "noNewPrivileges", "apparmorProfile", "rlimits", "refused"} <= changed
