"""The core's typed contracts (tiergate/core/contracts.py) are what the code produces: the
compiler's policy and tiers, facts.gather's facts on this host, harden()'s changes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import TIERS, docker_bundle, linux_inputs, load_json, podman_precreate, privileged_like, shipped_policy
from tiergate.core.contracts import Change, Facts, MountFact, Policy, Tier
from tiergate.core.errors import Refusal
from tiergate.core.harden import harden
from tiergate.host import facts as host


def _keys(typed) -> tuple[set, set]:
    return set(typed.__required_keys__), set(typed.__optional_keys__)


def test_compiled_policy_and_tiers_have_exactly_the_contract_keys() -> None:
    policy = shipped_policy()
    required, optional = _keys(Policy)
    assert required <= set(policy) <= required | optional
    for tier in policy["tiers"].values():
        assert set(tier) == set(Tier.__required_keys__), tier["name"]


@pytest.mark.parametrize("tier", TIERS)
def test_gathered_facts_are_the_contract(tier: str) -> None:
    """On this host, from the engines' own specs: only Facts keys, with the contract's shapes
    (host_ns holds lists of identities, never one string)."""
    policy = shipped_policy()
    t = policy["tiers"][tier]
    for spec in (podman_precreate(), docker_bundle(), privileged_like(), *map(load_json, linux_inputs())):
        facts = host.gather(spec, t, [], policy["sensitive"]["sockets"])
        assert set(facts) <= set(Facts.__optional_keys__), set(facts) - set(Facts.__optional_keys__)
        for kind, idents in facts.get("host_ns", {}).items():
            assert isinstance(idents, list) and all(isinstance(i, str) for i in idents), kind
        for fact in facts.get("mount_paths", {}).values():
            req, opt = _keys(MountFact)
            assert req <= set(fact) <= req | opt


def test_changes_are_the_contract() -> None:
    policy = shipped_policy()
    for name in TIERS:
        try:
            _, changes, _ = harden(privileged_like(), policy["tiers"][name], policy, {}, "test")
        except Refusal:
            continue
        assert all(set(c) == set(Change.__required_keys__) and all(isinstance(v, str) for v in c.values())
                   for c in changes)


def test_the_start_path_never_imports_the_contracts() -> None:
    """`typing` costs more than a decision: contracts are named under TYPE_CHECKING only."""
    code = ("import sys, tiergate.hook.stages, tiergate.core.harden, tiergate.host.facts, tiergate.core.spec; "
            "print(sorted(m for m in ('typing', 'tiergate.core.contracts') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
