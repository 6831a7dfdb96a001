"""Rootless podman without cgroup delegation: the pids limit becomes RLIMIT_NPROC, or a one-line refusal;
per-user install paths (no root, no engines)."""

from __future__ import annotations

import pytest

from tiergate.core.errors import Refusal
from tiergate.host.facts import cgroup_limits
from tiergate.core.harden import harden

from helpers import podman_precreate, shipped_policy

NO_CGROUPS = {"cgroup_limits": False}


def nproc(spec: dict) -> list[dict]:
    return [r for r in spec["process"].get("rlimits", []) if r["type"] == "RLIMIT_NPROC"]


def test_restricted_gets_rlimit_nproc_instead_of_a_pids_limit():
    policy = shipped_policy()
    tier = policy["tiers"]["restricted"]
    spec = podman_precreate()
    spec["linux"]["resources"].pop("pids", None)  # podman's own default (2048) would win: tested below
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NPROC", "hard": 1 << 40, "soft": 1024},
                                  {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    out, changes, notes = harden(spec, tier, policy, dict(NO_CGROUPS))
    assert "pids" not in out.get("linux", {}).get("resources", {})
    assert nproc(out) == [{"type": "RLIMIT_NPROC", "hard": tier["pids_limit"], "soft": tier["pids_limit"]}]
    assert {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024} in out["process"]["rlimits"]
    assert any(k == "pids" and "RLIMIT_NPROC" in v for k, v in notes)
    again, changes2, _ = harden(out, tier, policy, dict(NO_CGROUPS))  # idempotent
    assert nproc(again) == nproc(out) and not [c for c in changes2 if "rlimits" in c["field"]]


def test_never_weaker_than_what_was_asked():
    policy = shipped_policy()
    tier = policy["tiers"]["restricted"]
    spec = podman_precreate()
    spec.setdefault("linux", {}).setdefault("resources", {})["pids"] = {"limit": 50}
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NPROC", "hard": 30, "soft": 30}]
    out, _, _ = harden(spec, tier, policy, dict(NO_CGROUPS))
    assert nproc(out)[0]["hard"] == 30 and "pids" not in out["linux"]["resources"]
    spec["process"]["rlimits"] = []
    assert nproc(harden(spec, tier, policy, dict(NO_CGROUPS))[0])[0]["hard"] == 50


def test_a_tier_keeping_setuid_is_refused_in_one_line():
    policy = shipped_policy()
    tier = dict(policy["tiers"]["baseline"], pids_limit=100)  # baseline keeps CAP_SETUID
    with pytest.raises(Refusal) as err:
        harden(podman_precreate(), tier, policy, dict(NO_CGROUPS))
    assert "pids_limit 100" in str(err.value) and "\n" not in str(err.value)
    out, _, _ = harden(podman_precreate(), tier, policy, {"cgroup_limits": True})  # with cgroups: the limit
    assert out["linux"]["resources"]["pids"]["limit"] == 100 and nproc(out) == nproc(podman_precreate())


def test_cgroup_limits_probe(tmp_path):
    uid_map, cg, root = tmp_path / "uid_map", tmp_path / "cgroup", tmp_path / "sys"
    uid_map.write_text("         0          0 4294967295\n")
    assert cgroup_limits(str(uid_map), str(cg), str(root))  # not in a user namespace
    uid_map.write_text("0 1000 1\n1 100000 65536\n")
    cg.write_text("12:pids:/user.slice\n0::/user.slice/u\n")
    assert not cgroup_limits(str(uid_map), str(cg), str(root))  # hybrid: v1 controllers
    cg.write_text("0::/user.slice/u\n")
    (root / "user.slice/u").mkdir(parents=True)
    (root / "user.slice/u/cgroup.controllers").write_text("cpu memory\n")
    assert not cgroup_limits(str(uid_map), str(cg), str(root))  # v2, pids not delegated
    (root / "user.slice/u/cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroup_limits(str(uid_map), str(cg), str(root))


def test_user_paths_stay_in_home():
    from tiergate.cli.install import user_paths

    paths = user_paths("/home/u")
    assert all(str(v).startswith("/home/u/") for v in paths.values())


def test_owner_uid_sees_through_the_user_namespace(tmp_path):
    import os

    from tiergate.telemetry.record import owner_uid

    m = tmp_path / "uid_map"
    m.write_text(f"{os.geteuid()} 1234 1\n")  # as a rootless hook sees it: uid 0 (here: ours) is host uid 1234
    assert owner_uid(str(m)) == 1234
    m.write_text("0 0 4294967295\n")
    assert owner_uid(str(m)) == os.geteuid()
    assert owner_uid(str(tmp_path / "absent")) == os.geteuid()
