"""`tiergate policy check` warnings: valid policies that probably do not say what was meant."""

from __future__ import annotations

from pathlib import Path

from tiergate.policy.compile import compile_file, warnings

POLICY = """
version = 1
default_tier = "base"
default_ceiling = "base"
[[trust]]
match = "*"
max_tier = "base"
[[trust]]
match = "localhost/*"
max_tier = "loose"
[tiers.base]
strictness = 10
capabilities = ["CAP_CHOWN"]
[tiers.loose]
extends = "base"
strictness = 5
capabilities = ["CAP_SYS_ADMIN"]
audit = true
[tiers.web]
extends = "base"
strictness = 12
network = "api"
[networks.api]
egress = "allowlist"
allow = [{ cidr = "192.0.2.0/24", ports = [443], proto = "tcp" }]
"""


def test_each_kind_of_warning(tmp_path: Path) -> None:
    """Unreachable trust rule, a child less strict than its parent, risky capabilities, audit mode,
    and an allowlist of documentation ranges: each named once; the policy still compiles."""
    path = tmp_path / "p.toml"
    path.write_text(POLICY)
    found = warnings(compile_file(path))
    assert found == [
        "trust[1] can never match: trust[0] matches every image first",
        "trust[1] lets images named 'localhost/*' reach loose: a name counts only when the engine recorded it "
        "from a registry pull with its digest (never a local tag, commit, import or load); prefer a digest rule",
        "tier loose (strictness 5) is less strict than the tier it extends, base (10): "
        "ceilings will rank it as more privileged",
        "tier loose grants capabilities beyond the engines' defaults: CAP_SYS_ADMIN",
        "tier loose is in audit mode: its decisions are logged, not enforced",
        "network policy api (tier web) allows only documentation address ranges: edit it for your services",
    ]


def test_shipped_policy_warns_only_about_placeholder_cidrs() -> None:
    """The shipped policy's only warnings are the role CIDRs an operator must edit."""
    import tiergate.configs

    shipped = Path(tiergate.configs.__file__).parent / "policy.toml"
    assert all("documentation address ranges" in w for w in warnings(compile_file(shipped)))


def test_namespace_that_may_run_unhardened_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(POLICY + '[tiers.open]\npassthrough = true\n[namespaces.kube-system]\nmax_tier = "open"\n'
                    '[namespaces.shop]\nmin_tier = "web"\n')
    found = [w for w in warnings(compile_file(path)) if w.startswith("namespace")]
    assert found == ["namespace kube-system: any image there may run open (unhardened); "
                     "only cluster administrators should be able to create pods in it"]


def test_name_rules_above_baseline_and_loosening_callers_warn(tmp_path: Path) -> None:
    """A name rule above baseline and caller_may_loosen are named; a name rule that only tightens is not."""
    path = tmp_path / "p.toml"
    path.write_text('''version = 1
caller_may_loosen = true
[[trust]]
match = "registry.example/infra/*"
max_tier = "privileged"
[[trust]]
match = "registry.example/*"
max_tier = "restricted"
[[trust]]
digest = "sha256:''' + "ab" * 32 + '''"
max_tier = "privileged"
[tiers.privileged]
passthrough = true
[tiers.baseline]
strictness = 10
[tiers.restricted]
strictness = 20
''')
    found = warnings(compile_file(path))
    assert [w for w in found if w.startswith("trust[")] == [
        "trust[0] lets images named 'registry.example/infra/*' reach privileged: a name counts only when the engine "
        "recorded it from a registry pull with its digest (never a local tag, commit, import or load); prefer a digest rule"]
    assert any(w.startswith("caller_may_loosen = true") for w in found)
