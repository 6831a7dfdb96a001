"""Record the decision in the spec (io.tiergate.*) and hand the network policy on to createRuntime."""

from __future__ import annotations

from tiergate.core.spec import get, objects
from tiergate.core.names import (ANN_NETWORK, ANN_NOTES, ANN_POLICY, ANN_PORTS, ANN_TIER, ANN_WHY,
                                 ANNOTATION_PREFIX)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.harden import Context


def network(spec: dict[str, Any], ctx: Context) -> None:
    """Tiers that program the network namespace (network policy, metadata block) get a createRuntime
    hook unless the edge programs it itself (the namespace exists already, or the shim does it)."""
    policy = ctx.tier["network"]
    hook = ctx.facts.get("network_hook")
    if hook is None or ctx.facts.get("network_applied"):
        return
    what = f"network policy {policy['name']}" if policy is not None else "the cloud metadata block"
    hooks = get(spec, "hooks", dict, "$", create=True)
    stage = objects(hooks, "createRuntime", "$.hooks")
    if hook not in stage:
        hooks["createRuntime"] = stage + [hook]
        ctx.change("$.hooks.createRuntime", f"added {hook['path']} {' '.join(hook.get('args', [])[1:])}",
                   f"applies {what} inside the container's namespace before it starts")


def decision(spec: dict[str, Any], ctx: Context) -> None:
    annotations = get(spec, "annotations", dict, "$", create=True)
    want = {
        ANN_TIER: ctx.tier["name"],
        ANN_WHY: ctx.why,
        ANN_POLICY: ctx.policy["digest"][:16],
    }
    if ctx.tier["network"] is not None:
        want[ANN_NETWORK] = ctx.tier["network"]["name"]
        if ctx.facts.get("ports"):
            want[ANN_PORTS] = ",".join(f"{p['port']}/{p['proto']}" for p in ctx.facts["ports"])
    # Notes describe what this pass clamped; a pass that changed nothing keeps the first pass's record.
    again = not ctx.changes and all(annotations.get(k) == want[k] for k in (ANN_TIER, ANN_POLICY))
    kept = annotations.get(ANN_NOTES) if again else None
    if isinstance(kept, str):
        want[ANN_NOTES] = kept
    elif ctx.notes:
        want[ANN_NOTES] = "; ".join(f"{k}: {v}" for k, v in ctx.notes)
    # Only what tiergate wrote is read back (createRuntime: tier, ports; exec: tier; status: why,
    # notes): a caller's io.tiergate.* annotation is no fact, so every other one goes.
    for key in [k for k in annotations if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX) and k not in want]:
        del annotations[key]
    for key, value in want.items():
        if annotations.get(key) != value:
            annotations[key] = value
