"""AppArmor per tier with real podman: "prefer" runs and says so, "require" refuses; enforcement where the kernel has it.

These machines have no AppArmor in the kernel, so the prefer/require behaviour
is what is shown here; the enforcing test runs where AppArmor is enabled.
"""

from __future__ import annotations

import json
import secrets

import pytest

from tiergate.host import apparmor
from tiergate_fixtures import STATUS_SH, Hooks, refusal_line, tg, tg_images, tg_policy, tiergate  # noqa: F401

ENABLED = apparmor.host_enabled()

REQUIRE_POLICY = """
version = 1
default_tier = "aa"
default_ceiling = "aa"
[[trust]]
match = "*"
max_tier = "aa"
[tiers.aa]
description = "test: AppArmor required"
strictness = 10
capabilities = ["CAP_NET_BIND_SERVICE"]
seccomp = "baseline"
apparmor = "require"
"""


@pytest.mark.skipif(ENABLED, reason="AppArmor is enabled in this kernel: the unavailable path cannot be shown here")
def test_prefer_runs_without_the_profile_and_says_so(tg: Hooks, tg_images, podman) -> None:
    """Baseline prefers AppArmor: on a host without it the container runs, hardened, and its
    decision (annotation and log) says the profile was unavailable."""
    name = f"tg-aa-{secrets.token_hex(3)}"
    proc = tg.run(tg_images["baseline"], "sh", "-c", STATUS_SH, args=["--name", name], rm=False)
    assert proc.returncode == 0, proc.stderr
    assert "NoNewPrivs:\t1" in proc.stdout and "Seccomp:\t2" in proc.stdout
    notes = tg.annotations(name).get("io.tiergate.notes", "")
    assert "apparmor: unavailable" in notes, notes
    assert any("apparmor: unavailable" in n for n in tg.last().get("notes", []))
    spec_profile = json.loads(tg.podman_cmd("inspect", "--format", "{{json .AppArmorProfile}}", name,
                                            check=True).stdout)
    assert not spec_profile  # set only when the profile is loaded


@pytest.mark.skipif(ENABLED, reason="AppArmor is enabled in this kernel: require is satisfied there")
def test_require_refuses_with_one_clear_line(podman, tg_images, tmp_path) -> None:
    """A tier that requires AppArmor refuses to start on a host without it; the user sees why."""
    policy = tmp_path / "policy.toml"
    policy.write_text(REQUIRE_POLICY)
    hooks = Hooks(podman, tmp_path / "tg", policy=policy)
    proc = hooks.run(tg_images["unlabelled"], "true")
    assert proc.returncode != 0
    assert "requires AppArmor, which this host does not offer" in refusal_line(proc)
    assert hooks.last()["outcome"] == "refused"


def test_doctor_and_explain_say_whether_apparmor_is_in_force(tmp_path) -> None:
    """doctor's AppArmor row and explain's note agree with the kernel."""
    rows = {r["name"]: r for r in json.loads(tiergate("doctor", "--json", check=False).stdout)["checks"]}
    row = next(v for k, v in rows.items() if "apparmor" in k.lower())
    assert (row["status"] == "ok") == ENABLED, row
    spec = tmp_path / "config.json"
    spec.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"args": ["true"], "cwd": "/"},
                                "root": {"path": "rootfs"}}))
    text = tiergate("explain", "--tier", "baseline", "--config", spec).stdout
    if ENABLED:
        assert "apparmorProfile: set to tiergate-baseline" in text.replace("$.process.", "")
    else:
        assert "apparmor: unavailable" in text


@pytest.mark.skipif(not ENABLED, reason="AppArmor is not enabled in this kernel")
def test_profile_is_loaded_and_enforced(tg: Hooks, tg_images) -> None:
    """Where AppArmor is enabled: the container runs confined by tiergate-<tier>, and a write
    under /proc/sys that the profile denies fails."""
    proc = tg.run(tg_images["baseline"], "sh", "-c", "cat /proc/self/attr/current; echo 1 > /proc/sys/kernel/ns_last_pid")
    assert "tiergate-baseline" in proc.stdout
    assert proc.returncode != 0
