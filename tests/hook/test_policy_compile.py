"""tiergate.policy.compile: extends, name checks, contradictions, the compiled JSON form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import CORE_TIERS, SHIPPED_POLICY
from tiergate.core.capabilities import KNOWN
from tiergate.core.errors import PolicyError
from tiergate.policy.compile import compile_file, compile_policy
from tiergate.policy.load import parse

HEAD = 'version = 1\ndefault_tier = "a"\ndefault_ceiling = "a"\n'  # lines 1-3
TIER = '\n[tiers.a]\nstrictness = 1\n'  # lines 4-6; a key appended lands on line 7
NET = '\n[networks.none]\negress = "none"\ningress = "none"\ndns = "none"\n'


def compile_text(text: str) -> dict:
    return compile_policy(parse(text, "p.toml"), text, "p.toml")


def policy(*extra: str, head: str = HEAD) -> str:
    return head + TIER + "".join(extra)


# (id, text, line, message)
ERRORS = [
    ("extends cycle of three", policy('extends = "b"\n[tiers.b]\nextends = "c"\n[tiers.c]\nextends = "a"\n'), 7,
     "tier 'a': 'extends' makes a cycle (a -> b -> c -> a)"),
    ("extends itself", policy('extends = "a"\n'), 7, "tier 'a': 'extends' makes a cycle (a -> a)"),
    ("unknown parent", policy('\n[tiers.b]\nextends = "nope"\n'), 9, "tier 'b' extends unknown tier 'nope'"),
    ("unknown capability", policy('capabilities = ["CAP_CHOWN", "CAP_FLY"]\n'), 7, "tier 'a': unknown capability 'CAP_FLY'"),
    ("unknown seccomp profile", policy('seccomp = "nope"\n'), 7,
     "tier 'a': seccomp profile 'nope': unknown seccomp profile 'nope'"),
    ("seccomp_deny without a profile", policy('seccomp_deny = ["mount"]\n'), 7,
     "tier 'a': seccomp_deny needs a seccomp profile"),
    ("unknown network policy", policy('network = "web"\n'), 7, "tier 'a': unknown network policy 'web'; defined: none"),
    ("NET_ADMIN with a network policy", policy('capabilities = ["NET_ADMIN"]\nnetwork = "none"\n', NET), 7,
     "tier 'a' has network policy 'none' but grants CAP_NET_ADMIN, which would let the workload flush its own rules"),
    ("host network with a network policy", policy('host_namespaces = ["network"]\nnetwork = "none"\n', NET), 7,
     "tier 'a' has a network policy but allows the host network namespace, where it cannot be enforced"),
    ("NET_ADMIN with metadata closed", policy('capabilities = ["NET_ADMIN"]\n'), 7,
     "tier 'a' closes cloud metadata but grants CAP_NET_ADMIN, which would let the workload remove the block"),
    ("host network with metadata closed", policy('host_namespaces = ["network"]\n'), 7,
     "tier 'a' allows the host network namespace, where cloud metadata cannot be closed"),
    ("bad network policy", policy('\n[networks.web]\negress = "sometimes"\n'), 8,
     "network policy 'web': network.web: egress: must be one of none|allowlist|any, got 'sometimes'"),
    ("trust rule with match and digest", policy(f'\n[[trust]]\nmatch = "*"\ndigest = "{"a" * 64}"\nmax_tier = "a"\n'), 8,
     "a trust rule needs exactly one of 'match' or 'digest'"),
    ("trust rule with neither", policy('\n[[trust]]\nmax_tier = "a"\n'), 8,
     "a trust rule needs exactly one of 'match' or 'digest'"),
    ("trust rule with a bad digest", policy('\n[[trust]]\ndigest = "xyz"\nmax_tier = "a"\n'), 9, "invalid digest 'xyz'"),
    ("trust rule with a 12-hex digest prefix", policy('\n[[trust]]\ndigest = "sha256:0123456789ab"\nmax_tier = "a"\n'), 9,
     "invalid digest 'sha256:0123456789ab': a digest rule needs the full sha256 (64 hex digits)"),
    ("trust rule with a 63-hex digest", policy(f'\n[[trust]]\ndigest = "{"a" * 63}"\nmax_tier = "a"\n'), 9,
     "invalid digest"),
    ("unknown tier in trust", policy('\n[[trust]]\nmatch = "*"\nmax_tier = "a"\n\n[[trust]]\nmatch = "x"\nmax_tier = "zz"\n'),
     14, "unknown tier 'zz'; valid tiers: a"),
    ("unknown default_tier", policy(head=HEAD.replace('default_tier = "a"', 'default_tier = "gold"')), 2,
     "unknown tier 'gold'; valid tiers: a"),
    ("unknown default_ceiling", policy(head=HEAD.replace('default_ceiling = "a"', 'default_ceiling = "gold"')), 3,
     "unknown tier 'gold'; valid tiers: a"),
    ("unknown on_unknown_image tier", policy(head=HEAD + 'on_unknown_image = "gold"\n'), 4,
     "unknown tier 'gold'; valid tiers: a"),
    ("no tiers", HEAD, 1, "the policy defines no tiers"),
    ("bad tier name", policy("[tiers.Bad_Name]\n"), 7, "invalid tier name 'Bad_Name': use lowercase letters, digits and '-'"),
    ("unknown namespace", policy('host_namespaces = ["pidx"]\n'), 7,
     "tier 'a': unknown namespace 'pidx'; known: pid, network, ipc, uts, mount, cgroup, user, time"),
    ("relative masked path", policy('masked_paths = ["proc/kcore"]\n'), 7,
     "tier 'a': masked_paths entry 'proc/kcore' is not an absolute path"),
    ("relative device", policy('devices = ["dev/sda"]\n'), 7, "tier 'a': devices entry 'dev/sda' is not an absolute path"),
    ("negative strictness", policy().replace("strictness = 1", "strictness = -1"), 6, "tier 'a': strictness must be >= 0"),
    ("relative sensitive path", HEAD + '[sensitive]\npaths = ["etc"]\n' + TIER, 5, "sensitive path 'etc' is not absolute"),
    ("sysctl pattern with shell syntax", policy('sysctls = ["net;rm -rf /"]\n'), 7,
     "tier 'a': invalid sysctl pattern 'net;rm -rf /'"),
    ("relative writable mount", policy('writable_mounts = ["tmp"]\n'), 7, "tier 'a': mount path 'tmp' is not absolute"),
]


QUOTED = pytest.param(
    policy('[tiers."../etc"]\n'), 7, "invalid tier name '../etc': use lowercase letters, digits and '-'",
    id="path traversal as a quoted tier name",
)


@pytest.mark.parametrize(("text", "line", "message"),
                         [pytest.param(*e[1:], id=e[0]) for e in ERRORS] + [QUOTED])
def test_contradictions_and_unknown_names_are_file_line_errors(text: str, line: int, message: str) -> None:
    """Each bad policy is a PolicyError at the offending line; the reason starts with the expected sentence."""
    with pytest.raises(PolicyError) as info:
        compile_text(text)
    err = info.value
    assert (err.file, err.line) == ("p.toml", line), str(err)
    assert err.reason.startswith(message), err.reason
    assert "\n" not in str(err)


def test_net_admin_with_network_policy_can_be_allowed_explicitly() -> None:
    """allow_net_admin_with_network and allow_metadata are the documented opt-outs of the contradictions."""
    compiled = compile_text(policy('capabilities = ["NET_ADMIN"]\nnetwork = "none"\nallow_net_admin_with_network = true\n'
                                   'allow_metadata = true\n', NET))
    assert compiled["tiers"]["a"]["capabilities"] == ["CAP_NET_ADMIN"]
    assert compiled["tiers"]["a"]["network"]["name"] == "none"
    assert compiled["tiers"]["a"]["allow_metadata"] is True


def test_metadata_is_closed_unless_a_tier_opts_out_and_passthrough_may_share_the_host_network() -> None:
    """allow_metadata defaults to false and is inherited; a passthrough tier may use the host network."""
    compiled = compile_text(policy('\n[tiers.b]\nextends = "a"\nstrictness = 0\nallow_metadata = true\n'
                                   '\n[tiers.c]\nextends = "b"\nstrictness = 0\n'
                                   '\n[tiers.p]\nstrictness = 0\npassthrough = true\nhost_namespaces = ["network"]\n'
                                   'capabilities = ["NET_ADMIN"]\n'))
    t = compiled["tiers"]
    assert (t["a"]["allow_metadata"], t["b"]["allow_metadata"], t["c"]["allow_metadata"]) == (False, True, True)


@pytest.mark.parametrize("spelling", ["net_raw", "NET_RAW", "CAP_NET_RAW", " cap_net_raw "])
def test_capability_spellings_normalise(spelling: str) -> None:
    """`net_raw`, `NET_RAW` and `CAP_NET_RAW` all compile to CAP_NET_RAW."""
    compiled = compile_text(policy(f'capabilities = ["{spelling}"]\n'))
    assert compiled["tiers"]["a"]["capabilities"] == ["CAP_NET_RAW"]


def test_extends_chain_inherits_and_child_wins() -> None:
    """A grandchild inherits unset fields through the chain; the nearest setting wins."""
    text = policy(
        'capabilities = ["CAP_CHOWN", "CAP_KILL"]\nsysctls = ["net.*"]\npids_limit = 100\nno_new_privileges = false\n',
        '\n[tiers.b]\nextends = "a"\nstrictness = 2\npids_limit = 50\n',
        '\n[tiers.c]\nextends = "b"\nstrictness = 3\nno_new_privileges = true\n',
    )
    tiers = compile_text(text)["tiers"]
    c = tiers["c"]
    assert c["capabilities"] == ["CAP_CHOWN", "CAP_KILL"]  # from a, through b
    assert c["sysctls"] == ["net.*"]
    assert c["pids_limit"] == 50  # b beats a
    assert c["no_new_privileges"] is True  # c beats a
    assert c["strictness"] == 3 and c["extends"] == "b"
    assert tiers["b"]["no_new_privileges"] is False


def test_lists_are_replaced_not_merged_on_extends() -> None:
    """A child's list replaces its parent's: capabilities = [] means none, not the parent's."""
    text = policy(
        'capabilities = ["CAP_CHOWN", "CAP_KILL"]\nmasked_paths = ["/proc/kcore", "/proc/keys"]\n',
        '\n[tiers.b]\nextends = "a"\ncapabilities = []\nmasked_paths = ["/proc/acpi"]\n',
    )
    b = compile_text(text)["tiers"]["b"]
    assert b["capabilities"] == []
    assert b["masked_paths"] == ["/proc/acpi"]


def test_unset_fields_get_the_built_in_defaults() -> None:
    """A tier that sets nothing is strict by default: no capabilities, no_new_privs, no host anything."""
    a = compile_text(policy())["tiers"]["a"]
    assert a["capabilities"] == [] and a["no_new_privileges"] is True
    assert a["host_namespaces"] == [] and a["devices"] == [] and a["sensitive_mounts"] is False
    assert a["passthrough"] is False and a["on_escalation"] == "clamp" and a["seccomp"] is None


def test_trust_rules_compile_with_policy_default_over_ceiling() -> None:
    """Digests lose their sha256: prefix; a rule without over_ceiling takes the policy's."""
    text = policy(*[f'\n[[trust]]\ndigest = "sha256:{"ab" * 32}"\nmax_tier = "a"\n',
                    '\n[[trust]]\nmatch = "docker.io/*"\nmax_tier = "a"\nover_ceiling = "clamp"\n'],
                  head=HEAD + 'over_ceiling = "refuse"\n')
    trust = compile_text(text)["trust"]
    assert trust == [
        {"match": None, "digest": "ab" * 32, "max_tier": "a", "over_ceiling": "refuse"},
        {"match": "docker.io/*", "digest": None, "max_tier": "a", "over_ceiling": "clamp"},
    ]


def test_shipped_policy_compiles(tmp_path: Path) -> None:
    """tiergate/configs/policy.toml compiles, has the four documented tiers, and the compiled form is JSON."""
    compiled = compile_file(SHIPPED_POLICY)
    assert tuple(compiled["tiers"])[:4] == CORE_TIERS
    assert json.loads(json.dumps(compiled)) == compiled
    t = compiled["tiers"]
    assert t["privileged"]["passthrough"] is True
    assert t["restricted"]["capabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert t["isolated"]["capabilities"] == [] and t["isolated"]["network"]["egress"] == "none"
    assert t["restricted"]["on_escalation"] == "refuse" and t["baseline"]["on_escalation"] == "clamp"
    assert t["baseline"]["strictness"] < t["restricted"]["strictness"] < t["isolated"]["strictness"]
    for name in [n for n in t if n != "privileged"]:
        assert t[name]["no_new_privileges"] is True and not t[name]["passthrough"]
        assert t[name]["seccomp"]["defaultAction"] != "SCMP_ACT_ALLOW"
        assert set(t[name]["capabilities"]) <= KNOWN
    assert t["isolated"]["pids_limit"] <= t["restricted"]["pids_limit"]


def test_compiled_form_records_file_and_digest(tmp_path: Path) -> None:
    """The compiled policy names its resolved file and the sha256 of its text."""
    import hashlib

    path = tmp_path / "p.toml"
    path.write_text(policy())
    compiled = compile_file(path)
    assert compiled["file"] == str(path.resolve())
    assert compiled["digest"] == hashlib.sha256(policy().encode()).hexdigest()


def test_compile_file_errors_name_the_resolved_file(tmp_path: Path) -> None:
    """compile_file reports errors at file:line of the policy it read."""
    path = tmp_path / "p.toml"
    path.write_text(policy('capabilities = ["CAP_FLY"]\n'))
    with pytest.raises(PolicyError) as info:
        compile_file(path)
    assert str(info.value) == f"{path.resolve()}:7: tier 'a': unknown capability 'CAP_FLY'"


def test_local_seccomp_profile_beside_the_policy_is_found(tmp_path: Path) -> None:
    """A seccomp profile in <policy dir>/seccomp/ is searched before the shipped ones."""
    from tiergate.core.names import configs_dir

    (tmp_path / "seccomp").mkdir()
    (tmp_path / "seccomp" / "mine.json").write_text((Path(configs_dir()) / "seccomp" / "restricted.json").read_text())
    path = tmp_path / "p.toml"
    path.write_text(policy('seccomp = "mine"\n'))
    compiled = compile_file(path)
    assert compiled["tiers"]["a"]["seccomp_profile"] == "mine"
    assert compiled["tiers"]["a"]["seccomp"]["syscalls"]
