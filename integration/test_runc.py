"""runc accepts what tiergate writes (issue 3's proof): `tiergate render --tier T` on runc's
default spec, then `runc run` on a busybox-static rootfs; the unhardened bundle is the control."""

from __future__ import annotations

import json

import pytest

from harness import caps_from_hex, probe_status
from tiergate_fixtures import compiled_policy, probe_lines, probe_script, tiergate

pytestmark = pytest.mark.runc

TIERS = ("privileged", "baseline", "restricted", "isolated")
PROBES = {
    "unshare": "unshare -U true",
    "pids": "i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done",
}
SCRIPT = probe_script(PROBES)


@pytest.fixture(scope="module")
def results(runc_env, busybox_rootfs, tmp_path_factory):
    """{tier or "control": (rendered spec, runc result)}: one runc run per tier and one unhardened."""
    import harness

    out = {}
    base_dir = tmp_path_factory.mktemp("runc-tiers")
    for tier in (None, *TIERS):
        bundle = harness.RuncBundle(base_dir / (tier or "control"), busybox_rootfs.path, None,
                                    args=["sh", "-c", SCRIPT], runc_root=runc_env["runc_root"],
                                    runc=runc_env["runc"], cgroup_parent=runc_env["cgroup_parent"])
        if tier:
            src = bundle.dir / "unhardened.json"
            src.write_text(json.dumps(bundle.config))
            bundle.config = json.loads(tiergate("render", "--tier", tier, "--config", src).stdout)
        out[tier or "control"] = (bundle.config, bundle.run(timeout=60))
        harness.remove_tree(bundle.dir)
    return out


def test_control(results):
    """runc spec's own defaults: its three capabilities, NoNewPrivs 1, no seccomp; the probes succeed."""
    spec, proc = results["control"]
    assert proc.returncode == 0, proc.stderr
    status = probe_status(proc.stdout)
    assert caps_from_hex(status["CapEff"]) == {"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
    assert status["Seccomp"] == "0" and status["NoNewPrivs"] == "1"
    assert probe_lines(proc.stdout) == {"unshare": True, "pids": True}


@pytest.mark.parametrize("tier", TIERS)
def test_tier_inside_runc(results, tier):
    spec, proc = results[tier]
    assert proc.stdout, proc.stderr
    status = probe_status(proc.stdout)
    t = compiled_policy()["tiers"][tier]
    runc_defaults = set(results["control"][0]["process"]["capabilities"]["effective"])
    want = runc_defaults if t["passthrough"] else runc_defaults & set(t["capabilities"])
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert caps_from_hex(status[field]) == want, field
    assert status["NoNewPrivs"] == "1"  # runc's spec already sets it
    assert status["Seccomp"] == ("0" if t["passthrough"] else "2")
    probes = probe_lines(proc.stdout)
    assert probes["unshare"] is bool(t["passthrough"]), proc.stdout
    assert probes["pids"] is (tier != "isolated"), proc.stdout  # isolated: pids limit 256
    if tier == "isolated":
        assert spec["linux"]["resources"]["pids"]["limit"] == t["pids_limit"] == 256


@pytest.mark.parametrize("tier", TIERS)
def test_rendered_spec_records_the_tier(results, tier):
    spec, _ = results[tier]
    ann = spec.get("annotations", {})
    assert ann["io.tiergate.tier"] == tier
    assert ann["io.tiergate.why"] == f"--tier {tier} given on the command line"
    assert ann["io.tiergate.policy"] == compiled_policy()["digest"][:16]
