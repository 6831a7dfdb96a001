"""The hardening engine: (spec, tier, host facts) -> (hardened spec, changes). Pure.

The spec stays a plain JSON value so that fields tiergate does not know pass
through untouched, and so that no model has to be built on the start path.
"""

from __future__ import annotations

import copy

from .errors import Refusal
from .modifiers import annotate, devices, linux, mounts, namespaces, process, seccomp

# Order matters only for readability of the change list; each modifier is idempotent.
MODIFIERS = (
    process.privileged,
    process.capabilities,
    process.no_new_privileges,
    seccomp.apply,
    process.apparmor,
    namespaces.apply,
    devices.apply,
    mounts.sensitive_mounts,
    mounts.rootfs,
    linux.paths,
    linux.sysctls,
    linux.pids,
    annotate.network,
)


class Context:
    """What a modifier may read (tier, policy, facts) and how it reports (change, escalation, refuse)."""

    __slots__ = ("tier", "policy", "facts", "why", "changes", "refusals", "notes")

    def __init__(self, tier: dict, policy: dict, facts: dict, why: str) -> None:
        self.tier, self.policy, self.facts, self.why = tier, policy, facts, why
        self.changes: list[dict] = []
        self.refusals: list[str] = []
        self.notes: list[tuple[str, str]] = list(facts.get("notes", ()))

    def change(self, field: str, what: str, why: str) -> None:
        self.changes.append({"field": field, "what": what, "why": why})

    def escalation(self, what: str) -> None:
        """The caller asked for something the tier forbids: clamp (recorded) or refuse, as the tier says."""
        if self.tier["on_escalation"] == "refuse":
            self.refusals.append(f"tier {self.tier['name']} refuses a container that {what}")
        else:
            self.note("clamped", what)

    def refuse(self, reason: str) -> None:
        self.refusals.append(reason)

    def note(self, key: str, value: str) -> None:
        if (key, value) not in self.notes:
            self.notes.append((key, value))


def harden(spec: dict, tier: dict, policy: dict, facts: dict | None = None, why: str = "") -> tuple[dict, list[dict], list[tuple[str, str]]]:
    """Return (hardened copy of spec, changes, notes). Raises Refusal; SpecError on malformed input."""
    spec = copy.deepcopy(spec)
    ctx = Context(tier, policy, facts or {}, why)
    if not tier["passthrough"]:
        for modify in MODIFIERS:
            modify(spec, ctx)
    if ctx.refusals:
        extra = f" (and {len(ctx.refusals) - 1} more)" if len(ctx.refusals) > 1 else ""
        raise Refusal(ctx.refusals[0] + extra)
    annotate.decision(spec, ctx)
    return spec, ctx.changes, ctx.notes
