"""One enforcement pipeline for every engine path: image facts in; decision, host facts,
hardened spec, changes and what to record out.

    run(spec, policy, image, edge, record)      -> Hardened (choose, then enforce)
    choose(policy, image, spec)                 -> Chosen   (decision, tier, record)
    enforce(spec, policy, image, chosen, edge)  -> Hardened (spec, facts, changes, notes, record)
    enforce_process(process, policy, tier, ...) -> Hardened (an exec's process.json, the same modifiers)

podman's precreate and prestart (hook/stages.py) and the shim's create, run and
restore (shim/runtime.py) are thin callers; the shim's exec uses enforce_process.
The pipeline does no I/O itself: what it needs from the host (stat'ing mounts and
namespaces, loading an AppArmor profile, the engine's published ports) it asks the
caller's Edge for, and it never writes the caller's log record: each step returns
the fields to record, and the caller records them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs a start ~10 M instructions of imports: only type checkers read it
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

    from tiergate.core.contracts import Facts, Tier
    from tiergate.core.decide import Decision, Image

    Json = dict[str, Any]

from tiergate.core.harden import harden, harden_exec
from tiergate.core.spec import validate

EXEC_GAP = ("podman exec runs no hook: unless tiergate-runtime is podman's runtime (as the default install "
            "makes it), an exec'd process keeps the tier's capabilities but not no_new_privs, and exec "
            "--privileged gets every capability")


class Edge:
    """What the pipeline may ask the host, supplied by the entry point (I/O lives here).

    gather(spec, tier, notes, sockets) -> host facts (host.facts.gather: stats, AppArmor load);
    own_paths(policy_file) -> tiergate's own state and code paths;
    published(spec) -> the ports the caller published, from the engine's records ("80/tcp");
    network_hook: the createRuntime hook that programs the network namespace;
    netns_ready: the caller programs the namespace itself (it exists, or will stay empty);
    seccomp(policy digest, tier, profile) -> the tier's profile intersected with the spec's,
    remembered across starts (seccomp.memo), or None to leave it to the modifier.
    """

    __slots__ = ("engine", "gather", "own_paths", "published", "network_hook", "netns_ready", "seccomp")

    def __init__(self, engine: str, gather: Callable[..., Facts], own_paths: Callable[[str], list[Any]],
                 published: Callable[[Json], list[Any]] | None = None, network_hook: Json | None = None,
                 netns_ready: bool = False, seccomp: Callable[[str, Tier, Json], Json | None] | None = None) -> None:
        self.engine, self.gather, self.own_paths = engine, gather, own_paths
        self.published = published or (lambda spec: [])
        self.network_hook, self.netns_ready = network_hook, netns_ready
        self.seccomp = seccomp


class Chosen:
    """The decision and its tier, and what the caller records about them."""

    __slots__ = ("decision", "tier", "record")

    def __init__(self, decision: Decision, tier: Tier, record: Json) -> None:
        self.decision, self.tier, self.record = decision, tier, record


class Hardened:
    """The hardened spec (or process), the host facts it was hardened against, and what to record."""

    __slots__ = ("spec", "tier", "facts", "changes", "notes", "record")

    def __init__(self, spec: Json, tier: Tier, facts: Facts, changes: list[Any], notes: list[Any], record: Json) -> None:
        self.spec, self.tier, self.facts, self.changes, self.notes = spec, tier, facts, changes, notes
        self.record = record


def choose(policy: Json, image: Image, spec: Json) -> Chosen:
    """Decide the tier (Refusal when the policy says no); the caller records it before hardening,
    so a refusal there still says which tier refused."""
    from tiergate.core.decide import decide  # here: an exec (enforce_process) decides nothing

    validate(spec)  # before anything reads it: every path refuses the same malformed specs
    decision = decide(policy, image, spec.get("annotations") or {})
    tier = policy["tiers"][decision.tier]
    return Chosen(decision, tier, {"requested": decision.requested, "tier": decision.tier, "why": decision.why,
                                   "source": decision.source, "mode": "audit" if tier.get("audit") else "enforce"})


def host_facts(spec: Json, policy: Json, image: Image, tier: Tier, edge: Edge) -> Facts:
    """What the modifiers read about the host, asked of the edge."""
    notes = [("exec", EXEC_GAP)] if edge.engine == "podman" and not tier["passthrough"] else []
    facts = edge.gather(spec, tier, notes, policy["sensitive"]["sockets"])
    if not tier["passthrough"]:
        facts["own_paths"] = edge.own_paths(policy["file"])
    # A pod whose host namespace were clamped away would run broken (hostNetwork without
    # its network): under Kubernetes a forbidden host namespace is refused instead.
    facts["refuse_host_ns"] = bool(image.namespace)
    if image.sandbox:
        facts["sandbox"] = True
    if needs_netns(tier):
        if edge.network_hook is not None:
            facts["network_hook"] = edge.network_hook
        facts["network_applied"] = edge.netns_ready
    linux = spec.get("linux")
    current = linux.get("seccomp") if isinstance(linux, dict) else None
    generation = policy.get("generation")
    if tier["seccomp"] is not None and isinstance(current, dict) and edge.seccomp is not None and generation:
        # keyed on the compiled generation, not the policy text: an upgrade that changes a tier's
        # filter (profiles, compile.py, intersect.py) compiles a new generation with the same text
        merged = edge.seccomp(f"{policy['digest']}/{generation}", tier, current)
        if merged is not None:  # the modifier uses it only for this very profile (seccomp.apply)
            facts["seccomp"] = {"for": current, "intersection": merged}
    if tier["network"] is not None:
        items = list(image.exposed)
        if tier["network"].get("ingress") == "published":  # what the caller published, from the engine's records
            items += edge.published(spec)
        facts["ports"] = port_list(items)
    return facts


def enforce(spec: Json, policy: Json, image: Image, chosen: Chosen, edge: Edge) -> Hardened:
    """Harden `spec` to the chosen tier. Raises Refusal (every reason on one line), SpecError."""
    tier = chosen.tier
    facts = host_facts(spec, policy, image, tier, edge)
    hardened, changes, notes = harden(spec, tier, policy, facts, chosen.decision.why)
    return Hardened(hardened, tier, facts, changes, notes, _record(changes, notes, facts))


def run(spec: Json, policy: Json, image: Image, edge: Edge, record: Callable[[Json], None]) -> Hardened:
    """choose, then enforce, handing each step's record to `record` (rec.update) as it is made."""
    chosen = choose(policy, image, spec)
    record(chosen.record)
    done = enforce(spec, policy, image, chosen, edge)
    record(done.record)
    return done


def enforce_process(process: Json, policy: Json, tier: Tier, facts: Facts, why: str) -> Hardened:
    """An exec's process (runc exec --process FILE, or built from its flags) hardened to its
    container's tier through the same modifiers (harden.harden_exec); refusals name "an exec"."""
    hardened, changes, notes = harden_exec(process, tier, policy, facts, why)
    return Hardened(hardened, tier, facts, changes, notes, _record(changes, notes, facts))


def _record(changes: list[Any], notes: list[Any], facts: Facts) -> Json:
    out: Json = {"changes": [f"{c['field']}: {c['what']}" for c in changes],
                 "notes": [f"{k}: {v}" for k, v in notes if k != "exec"]}
    if "ports" in facts:
        out["ports"] = [f"{p['port']}/{p['proto']}" for p in facts["ports"]]
    return out


def on_error(policy: Json | None, engine: str) -> str:
    """What tiergate's own failure does to a container of `engine` (every engine path asks here):
    "allow" only when the operator chose availability for it; no policy known: "refuse"."""
    if not policy:
        return "refuse"
    table = policy.get("on_error") or {}
    return table.get(engine) or table.get("*") or "refuse"


def needs_netns(tier: Mapping[str, Any]) -> bool:
    """Does this tier program the container's network namespace (metadata block, network policy)?"""
    return tier["network"] is not None or closes_metadata(tier)


def closes_metadata(tier: Mapping[str, Any]) -> bool:
    """Does this tier close cloud metadata (network.metadata)? Every enforcing tier unless it opts
    out (audit tiers only log). Here, not in network/: precreate asks without loading the network code."""
    return not (tier["passthrough"] or tier.get("allow_metadata") or tier.get("audit"))


def port_list(items: Iterable[object]) -> list[Json]:
    """[{"port", "proto"}] from "80/tcp" strings, without duplicates; anything else is dropped."""
    out: list[Json] = []
    for item in items:
        port, _, proto = str(item).partition("/")
        if port.isdigit() and 0 < int(port) < 65536:
            entry = {"port": int(port), "proto": proto if proto in ("tcp", "udp") else "tcp"}
            if entry not in out:
                out.append(entry)
    return out
