"""Resolve `extends`, check a policy, and compile it to the plain-JSON form the hot path reads.

Compilation does everything that does not depend on a container: inheritance,
name checks, seccomp profile generation, network policy validation. The result
is cached (see cache.py) so a container start only reads one JSON file.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import attrs

from tiergate.core import capabilities as caps
from tiergate.core import names
from tiergate.core.errors import PolicyError
from tiergate.policy.load import load, locate
from tiergate.policy.model import TIER_DEFAULTS, PolicyFile, TierSpec

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from tiergate.core.contracts import Tier

    Fail = Callable[..., PolicyError]  # raise fail(reason, *keys): the error at the policy file's line

FORMAT = 4  # bump when the compiled form changes: old caches are ignored


def compile_file(path: str | Path) -> dict[str, Any]:
    """Load, check and compile one policy file. Raises PolicyError (file:line: reason)."""
    path = Path(path).resolve()
    model, text = load(path)
    return compile_policy(model, text, str(path))


def compile_policy(model: PolicyFile, text: str, file: str) -> dict[str, Any]:
    def fail(reason: str, *keys: str | int) -> PolicyError:
        return PolicyError(reason, file, locate(text, list(keys)))

    if not model.tiers:
        raise fail("the policy defines no tiers", "tiers")
    for name in model.tiers:
        if not names.valid_tier_name(name):
            raise fail(f"invalid tier name {name!r}: use lowercase letters, digits and '-' ({names.TIER_NAME_RULE})",
                       "tiers", name)

    seccomp_dirs = [Path(file).parent / "seccomp", Path(names.configs_dir(), "seccomp")]
    networks = {name: _network(name, table, fail) for name, table in model.networks.items()}
    tiers = {name: _resolve(name, model.tiers, fail) for name in model.tiers}
    compiled_tiers = {name: _compile_tier(name, t, networks, seccomp_dirs, fail) for name, t in tiers.items()}
    for tier in compiled_tiers.values():
        tier["audit"] = tier["audit"] or (model.audit and not tier["passthrough"])

    def known(tier: str, *keys: str | int) -> None:
        if tier not in model.tiers:
            raise fail(f"unknown tier {tier!r}; valid tiers: {', '.join(sorted(model.tiers))}", *keys)

    known(model.default_tier, "default_tier")
    known(model.default_ceiling, "default_ceiling")
    if model.on_unknown_image != "refuse":
        known(model.on_unknown_image, "on_unknown_image")
    trust = []
    for i, rule in enumerate(model.trust):
        known(rule.max_tier, "trust", i, "max_tier")
        if (rule.match is None) == (rule.digest is None):
            raise fail("a trust rule needs exactly one of 'match' or 'digest'", "trust", i)
        if rule.match is not None and any(c in rule.match for c in "[]"):
            raise fail(f"trust rule pattern {rule.match!r}: only * and ? are wildcards", "trust", i, "match")
        if rule.digest is not None and not re.match(r"^(sha256:)?[0-9a-f]{64}$", rule.digest):
            raise fail(f"invalid digest {rule.digest!r}: a digest rule needs the full sha256 (64 hex digits); "
                       "a prefix could be searched for", "trust", i, "digest")
        trust.append({"match": rule.match, "digest": rule.digest and rule.digest.removeprefix("sha256:"),
                      "max_tier": rule.max_tier, "over_ceiling": rule.over_ceiling or model.over_ceiling})
    if model.sandbox_tier is not None:
        known(model.sandbox_tier, "sandbox_tier")
    namespaces = {}
    for ns, ns_rule in model.namespaces.items():
        for field in ("max_tier", "min_tier"):
            if getattr(ns_rule, field) is not None:
                known(getattr(ns_rule, field), "namespaces", ns, field)
        namespaces[ns] = {"max_tier": ns_rule.max_tier, "min_tier": ns_rule.min_tier,
                          "over_ceiling": ns_rule.over_ceiling or model.over_ceiling}
    sens = model.sensitive
    for p in sens.paths:
        if not p.startswith("/"):
            raise fail(f"sensitive path {p!r} is not absolute", "sensitive", "paths")

    return {
        "format": FORMAT,
        "file": file,
        "digest": hashlib.sha256(text.encode()).hexdigest(),
        "label_key": model.label_key,
        "default_tier": model.default_tier,
        "default_ceiling": model.default_ceiling,
        "on_unknown_image": model.on_unknown_image,
        "over_ceiling": model.over_ceiling,
        "caller_may_loosen": model.caller_may_loosen,
        "label_sources": list(dict.fromkeys(model.label_sources)),
        "on_error": {"*": model.on_error, **{name: e.on_error for name, e in model.engines.items() if e.on_error}},
        "sensitive": {"paths": sorted({os.path.normpath(p) for p in sens.paths}),
                      "sockets": sorted(set(sens.sockets))},
        "trust": trust,
        "sandbox_tier": model.sandbox_tier,
        "namespaces": namespaces,
        "tiers": compiled_tiers,
    }


def host_arches() -> tuple[str, ...] | None:
    """The compiled policy is per host (its cache lives there): filters name only its family's
    ABIs that its kernel runs (each listed one is another copy runc builds: seccomp/abis.py)."""
    import platform

    from tiergate.seccomp.abis import runnable

    family = names.SECCOMP_ARCH_FAMILIES.get(platform.machine())
    return runnable(family) if family else None


def _network(name: str, table: dict[str, Any], fail: Fail) -> dict[str, Any]:
    from tiergate.network.model import from_table, to_dict

    if not names.valid_tier_name(name):
        raise fail(f"invalid network policy name {name!r}", "networks", name)
    try:
        return to_dict(from_table(name, table))
    except ValueError as exc:
        raise fail(f"network policy {name!r}: {exc}", "networks", name) from None


def _resolve(name: str, specs: dict[str, TierSpec], fail: Fail) -> dict[str, Any]:
    """Flatten `extends` chains: the child's set fields win, lists are replaced, not merged."""
    chain: list[str] = []
    seen: set[str] = set()
    cur: str | None = name
    while cur is not None:
        if cur in seen:
            raise fail(f"tier {name!r}: 'extends' makes a cycle ({' -> '.join([*chain, cur])})", "tiers", name, "extends")
        if cur not in specs:
            raise fail(f"tier {chain[-1]!r} extends unknown tier {cur!r}", "tiers", chain[-1], "extends")
        seen.add(cur)
        chain.append(cur)
        cur = specs[cur].extends
    out = dict(TIER_DEFAULTS)
    out["description"] = ""
    for tier in reversed(chain):
        for key, value in attrs.asdict(specs[tier], recurse=False).items():
            if value is not None and key != "extends":
                out[key] = value
    out["description"] = specs[name].description or out["description"]
    out["extends"] = specs[name].extends
    return out


def _compile_tier(name: str, t: dict[str, Any], networks: dict[str, Any], seccomp_dirs: list[Path],
                  fail: Fail) -> Tier:
    allowed = []
    for cap in t["capabilities"]:
        norm = caps.normalize(cap)
        if norm not in caps.KNOWN:
            raise fail(f"tier {name!r}: unknown capability {cap!r}", "tiers", name, "capabilities")
        allowed.append(norm)
    for ns in t["host_namespaces"]:
        if ns not in names.NAMESPACES:
            raise fail(f"tier {name!r}: unknown namespace {ns!r}; known: {', '.join(names.NAMESPACES)}",
                       "tiers", name, "host_namespaces")
    for key in ("masked_paths", "readonly_paths", "devices"):
        for p in t[key]:
            if not p.startswith("/"):
                raise fail(f"tier {name!r}: {key} entry {p!r} is not an absolute path", "tiers", name, key)
    for pattern in t["sysctls"]:
        if not re.match(r"^[a-z0-9_.*?-]+$", pattern):
            raise fail(f"tier {name!r}: invalid sysctl pattern {pattern!r}", "tiers", name, "sysctls")
    network = None
    if t["network"] is not None:
        if t["network"] not in networks:
            raise fail(f"tier {name!r}: unknown network policy {t['network']!r}; defined: "
                       f"{', '.join(sorted(networks)) or 'none'}", "tiers", name, "network")
        network = networks[t["network"]]
        if "CAP_NET_ADMIN" in allowed and not t["allow_net_admin_with_network"]:
            raise fail(f"tier {name!r} has network policy {t['network']!r} but grants CAP_NET_ADMIN, "
                       "which would let the workload flush its own rules", "tiers", name, "capabilities")
        if "network" in t["host_namespaces"]:
            raise fail(f"tier {name!r} has a network policy but allows the host network namespace, "
                       "where it cannot be enforced", "tiers", name, "host_namespaces")
    if not t["passthrough"] and not t["allow_metadata"]:  # the metadata block (tiergate/network/metadata.py)
        if "CAP_NET_ADMIN" in allowed:
            raise fail(f"tier {name!r} closes cloud metadata but grants CAP_NET_ADMIN, which would let the "
                       "workload remove the block; drop it or set allow_metadata = true", "tiers", name, "capabilities")
        if "network" in t["host_namespaces"]:
            raise fail(f"tier {name!r} allows the host network namespace, where cloud metadata cannot be "
                       "closed; set allow_metadata = true or drop it", "tiers", name, "host_namespaces")
    if t["strictness"] < 0:
        raise fail(f"tier {name!r}: strictness must be >= 0", "tiers", name, "strictness")
    seccomp = None
    if t["seccomp"] not in (None, "keep"):
        from tiergate.seccomp.profiles import SeccompProfileError, compile_profile

        try:
            seccomp = compile_profile(t["seccomp"], list(t["seccomp_deny"]), search_dirs=seccomp_dirs,
                                      arches=host_arches(), extra_allow=list(t["seccomp_allow"]))
        except SeccompProfileError as exc:
            raise fail(f"tier {name!r}: seccomp profile {t['seccomp']!r}: {exc}", "tiers", name, "seccomp") from None
    elif t["seccomp_deny"] or t["seccomp_allow"]:
        key = "seccomp_deny" if t["seccomp_deny"] else "seccomp_allow"
        raise fail(f"tier {name!r}: {key} needs a seccomp profile", "tiers", name, key)
    for key in ("writable_binds", "mutable_bind_paths"):
        for pattern in t[key] or []:
            if not pattern.startswith("/") or any(c in pattern for c in "[]"):
                raise fail(f"tier {name!r}: {key} entry {pattern!r} is not an absolute path (globs: * and ?)",
                           "tiers", name, key)
    for dest in (t["writable_mounts"] or []) + list(t["tmpfs"]):
        if not dest.startswith("/"):
            raise fail(f"tier {name!r}: mount path {dest!r} is not absolute", "tiers", name, "writable_mounts")
    return {
        "name": name,
        "description": t["description"],
        "extends": t["extends"],
        "strictness": t["strictness"],
        "passthrough": t["passthrough"],
        "audit": t["audit"],
        "on_escalation": t["on_escalation"],
        "capabilities": sorted(set(allowed), key=caps.NAMES.index),
        "no_new_privileges": t["no_new_privileges"],
        "seccomp": seccomp,
        "seccomp_profile": t["seccomp"],
        "seccomp_deny": sorted(set(t["seccomp_deny"])),  # in the filter already; kept for `explain`
        "apparmor": t["apparmor"],
        "apparmor_profile": None if t["apparmor"] == "off" else f"tiergate-{name}",
        "masked_paths": sorted(set(t["masked_paths"])),
        "readonly_paths": sorted(set(t["readonly_paths"])),
        "readonly_rootfs": t["readonly_rootfs"],
        "writable_mounts": None if t["writable_mounts"] is None else sorted(set(t["writable_mounts"])),
        "tmpfs": dict(sorted(t["tmpfs"].items())),
        "host_namespaces": sorted(set(t["host_namespaces"])),
        "devices": sorted(set(t["devices"])),
        "sensitive_mounts": t["sensitive_mounts"],
        "writable_binds": None if t["writable_binds"] is None else sorted(set(t["writable_binds"])),
        "mutable_bind_paths": sorted(set(t["mutable_bind_paths"])),
        "sysctls": list(t["sysctls"]),
        "pids_limit": t["pids_limit"],
        "network": network,
        "allow_metadata": t["allow_metadata"],
    }



# -- warnings: a valid policy that probably does not say what its author meant ------------
# (runc's checks/warns split: errors above refuse the policy, these only inform.)

_DOC_RANGES = ("192.0.2.", "198.51.100.", "203.0.113.", "2001:db8:")


def warnings(compiled: dict[str, Any]) -> list[str]:
    """One line per finding, in a stable order."""
    tiers = compiled["tiers"]
    out: list[str] = []
    for i, rule in enumerate(compiled["trust"]):
        if rule["match"] == "*":
            for j in range(i + 1, len(compiled["trust"])):
                out.append(f"trust[{j}] can never match: trust[{i}] matches every image first")
            break
    floor = min(tiers[compiled["default_ceiling"]]["strictness"],
                tiers["baseline"]["strictness"] if "baseline" in tiers else 1 << 30)
    for i, rule in enumerate(compiled["trust"]):
        if rule["match"] is not None and tiers[rule["max_tier"]]["strictness"] < floor:
            out.append(f"trust[{i}] lets images named {rule['match']!r} reach {rule['max_tier']}: a name counts only "
                       "when the engine recorded it from a registry pull with its digest (never a local tag, "
                       "commit, import or load); prefer a digest rule")
    if compiled.get("caller_may_loosen"):
        out.append("caller_may_loosen = true: a caller's label or annotation may ask for a weaker tier than "
                   "the image's own, up to its ceiling")
    for name, tier in tiers.items():
        parent = tiers.get(tier["extends"]) if tier["extends"] else None
        if parent and tier["strictness"] < parent["strictness"]:
            out.append(f"tier {name} (strictness {tier['strictness']}) is less strict than the tier it extends, "
                       f"{parent['name']} ({parent['strictness']}): ceilings will rank it as more privileged")
        risky = sorted(set(tier["capabilities"]) - caps.ENGINE_DEFAULTS)
        if risky and not tier["passthrough"]:
            out.append(f"tier {name} grants capabilities beyond the engines' defaults: {', '.join(risky)}")
        if tier["audit"]:
            out.append(f"tier {name} is in audit mode: its decisions are logged, not enforced")
        net = tier["network"]
        if net and net["allow"] and all(a["cidr"].startswith(_DOC_RANGES) for a in net["allow"]):
            out.append(f"network policy {net['name']} (tier {name}) allows only documentation address ranges: "
                       "edit it for your services")
        if net and net["allow_link_local"] and not tier["allow_metadata"] and not tier["passthrough"]:
            out.append(f"network policy {net['name']} allows link-local, but tier {name} closes cloud metadata "
                       "and link-local (allow_metadata = false): they stay closed")
    for ns, rule in sorted((compiled.get("namespaces") or {}).items()):
        if rule["max_tier"] and tiers[rule["max_tier"]]["passthrough"]:
            out.append(f"namespace {ns}: any image there may run {rule['max_tier']} (unhardened); "
                       "only cluster administrators should be able to create pods in it")
    return list(dict.fromkeys(out))
