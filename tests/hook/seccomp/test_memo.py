"""Seccomp intersections remembered across starts: used only for the very same engine profile,
under the same policy, from a trusted file; a remembered one never replaces the computation otherwise."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import podman_precreate, shipped_policy  # noqa: E402
from tiergate.core.harden import harden  # noqa: E402
from tiergate.seccomp import memo  # noqa: E402
from tiergate.seccomp.intersect import intersect  # noqa: E402


def _engine_profile() -> dict:
    return podman_precreate()["linux"]["seccomp"]


def test_the_same_profile_is_intersected_once(tmp_path, monkeypatch):
    tier = shipped_policy()["tiers"]["baseline"]
    current = _engine_profile()
    want = intersect(tier["seccomp"], current)
    assert memo.intersection(str(tmp_path), "d1", tier["name"], tier["seccomp"], current) == want
    assert oct((tmp_path / "seccomp" / "baseline.json").stat().st_mode & 0o777) == "0o600"

    def no_compute(*_a):
        raise AssertionError("computed again")

    monkeypatch.setattr("tiergate.seccomp.intersect.intersect", no_compute)
    assert memo.intersection(str(tmp_path), "d1", tier["name"], tier["seccomp"], json.loads(json.dumps(current))) == want


def test_another_profile_policy_or_an_untrusted_file_is_computed(tmp_path):
    tier = shipped_policy()["tiers"]["restricted"]
    current = _engine_profile()
    memo.intersection(str(tmp_path), "d1", tier["name"], tier["seccomp"], current)
    path = tmp_path / "seccomp" / "restricted.json"
    doc = json.loads(path.read_text())
    doc["pairs"][0][1] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}  # what a forger would want
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    forged = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    assert memo.intersection(str(tmp_path), "d1", tier["name"], tier["seccomp"], current) == forged  # the file is the cache's trust
    weaker = dict(current, defaultAction="SCMP_ACT_ALLOW")
    assert memo.intersection(str(tmp_path), "d1", tier["name"], tier["seccomp"], weaker) == intersect(tier["seccomp"], weaker)
    path.write_text(json.dumps(doc))
    assert memo.intersection(str(tmp_path), "d2", tier["name"], tier["seccomp"], current) == intersect(tier["seccomp"], current)  # new policy
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o660)  # group-writable: never read
    assert memo.intersection(str(tmp_path), "d1", tier["name"], tier["seccomp"], current) == intersect(tier["seccomp"], current)


def test_the_modifier_uses_a_remembered_intersection_only_for_its_own_profile():
    policy = shipped_policy()
    tier = policy["tiers"]["restricted"]
    spec = podman_precreate()
    bogus = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    plain, _, _ = harden(spec, tier, policy, {})
    other = dict(spec["linux"]["seccomp"], defaultErrnoRet=1)
    out, _, _ = harden(spec, tier, policy, {"seccomp": {"for": other, "intersection": bogus}})
    assert out["linux"]["seccomp"] == plain["linux"]["seccomp"] != bogus
    good = intersect(tier["seccomp"], spec["linux"]["seccomp"])
    out, _, _ = harden(spec, tier, policy, {"seccomp": {"for": spec["linux"]["seccomp"], "intersection": good}})
    assert out["linux"]["seccomp"] == plain["linux"]["seccomp"]


def test_a_recompiled_policy_never_reads_the_intersections_of_its_previous_generation(tmp_path):
    """An upgrade can change a tier's filter with the policy text unchanged: the memo is keyed on the
    compiled generation, so what the old generation remembered is never used by the new one."""
    from tiergate.core import pipeline
    from tiergate.core.decide import Image
    from tiergate.host.edge import host_edge
    from tiergate.policy import cache

    policy_file = tmp_path / "policy.toml"
    policy_file.write_text((Path(cache.configs_dir()) / "policy.toml").read_text())
    cache_dir = tmp_path / "cache"
    spec = podman_precreate()
    edge = host_edge("podman", str(cache_dir), None, None)

    def facts():
        policy = cache.load_compiled(str(policy_file), str(cache_dir))
        tier = policy["tiers"]["restricted"]
        return policy, tier, pipeline.host_facts(spec, policy, Image(), tier, edge)

    policy, tier, first = facts()
    assert first["seccomp"]["intersection"] == intersect(tier["seccomp"], spec["linux"]["seccomp"])
    memo_file = cache_dir / "seccomp" / "restricted.json"
    doc = json.loads(memo_file.read_text())
    assert policy["generation"] in doc["policy"]
    forged = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    doc["pairs"][0][1] = forged  # what the old generation remembered, made obvious
    memo_file.write_text(json.dumps(doc))
    assert facts()[2]["seccomp"]["intersection"] == forged  # same generation: remembered (the test can fail)
    st = policy_file.stat()
    os.utime(policy_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same text, recompiled: a new generation
    again, tier, second = facts()
    assert again["generation"] != policy["generation"] and again["digest"] == policy["digest"]
    assert second["seccomp"]["intersection"] == intersect(tier["seccomp"], spec["linux"]["seccomp"]) != forged
