"""The hardening engine: (spec, tier, host facts) -> (hardened spec, changes). Pure.

The spec stays a plain JSON value so that fields tiergate does not know pass
through untouched, and so that no model has to be built on the start path.
"""

from __future__ import annotations

import marshal  # built in, loaded with the interpreter: no import cost

from tiergate.core.errors import Refusal
from tiergate.core.modifiers import annotate, devices, linux, mounts, namespaces, process, seccomp
from tiergate.core.names import ANN_AUDIT, PRIVATE_NAMESPACES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.contracts import Change, Facts, Tier

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
    mounts.kernel_fs,
    mounts.rootfs,
    linux.paths,
    linux.sysctls,
    linux.pids,
    annotate.network,
)
# The modifiers of MODIFIERS that read and write only $.process: what an exec's process
# (runc exec --process FILE) gets from its container's tier.


class Context:
    """What a modifier may read (tier, policy, facts) and how it reports (change, escalation, refuse)."""

    __slots__ = ("tier", "policy", "facts", "why", "changes", "refusals", "notes", "subject")

    def __init__(self, tier: Tier, policy: dict[str, Any], facts: Facts, why: str, subject: str = "a container") -> None:
        self.tier, self.policy, self.facts, self.why = tier, policy, facts, why
        self.subject = subject  # what a refusal names: "a container", "an exec"
        self.changes: list[Change] = []
        self.refusals: list[str] = []
        self.notes: list[tuple[str, str]] = list(facts.get("notes", ()))

    def change(self, field: str, what: str, why: str) -> None:
        self.changes.append({"field": field, "what": what, "why": why})

    def escalation(self, what: str) -> None:
        """The caller asked for something the tier forbids: clamp (recorded) or refuse, as the tier says."""
        if self.tier["on_escalation"] == "refuse":
            self.refusals.append(f"tier {self.tier['name']} refuses {self.subject} that {what}")
        else:
            self.note("clamped", what)

    def refuse(self, reason: str) -> None:
        self.refusals.append(reason)

    def note(self, key: str, value: str) -> None:
        if (key, value) not in self.notes:
            self.notes.append((key, value))


def harden(spec: dict[str, Any], tier: Tier, policy: dict[str, Any], facts: Facts | None = None,
           why: str = "") -> tuple[dict[str, Any], list[Change], list[tuple[str, str]]]:
    """Return (hardened copy of spec, changes, notes). Raises Refusal; SpecError on malformed input."""
    original = spec
    spec = clone(spec)
    ctx = _modify(spec, Context(tier, policy, facts or {}, why))
    if tier.get("audit"):
        return audit(original, spec, ctx)
    if ctx.refusals:
        raise Refusal("; ".join(ctx.refusals))  # every reason, on one line
    annotate.decision(spec, ctx)
    return spec, ctx.changes, ctx.notes


def audit(original: dict[str, Any], hardened: dict[str, Any],
          ctx: Context) -> tuple[dict[str, Any], list[Change], list[tuple[str, str]]]:
    """Audit (complain) mode: the container runs as asked; seccomp logs what the tier would deny.

    The change list is what enforcement would do, each marked "would"; refusals become notes.
    """
    spec = clone(original)
    profile = ctx.tier["seccomp"]
    if profile is not None:
        from tiergate.seccomp.audit import log_mode

        linux = spec.setdefault("linux", {}) if isinstance(spec.get("linux", {}), dict) else {}
        linux["seccomp"] = log_mode(profile)
    for reason in ctx.refusals:
        ctx.note("would refuse", reason)
    changes: list[Change] = [{**c, "what": "would: " + c["what"]} for c in ctx.changes if c["field"] != "$.linux.seccomp"]
    if profile is not None:
        changes.append({"field": "$.linux.seccomp", "what": f"{ctx.tier['seccomp_profile']} in log mode",
                        "why": "audit: syscalls the tier would deny, and AF_PACKET sockets, are logged (SCMP_ACT_LOG), not denied"})
    ctx.changes = changes
    ctx.note("audit", "enforcement off: the tier's decisions are logged, not applied")
    annotate.decision(spec, ctx)
    spec["annotations"][ANN_AUDIT] = "true"
    return spec, changes, ctx.notes


def clone(value: Any) -> Any:
    """A deep copy of a JSON value: marshal's C code (format 2: nothing shared in the copy, as
    nothing is in parsed JSON), a third cheaper than walking it in Python; copy.deepcopy's memo
    and dispatch cost more, and its import. Specs and processes are parsed JSON, which marshal
    always writes (anything else raises ValueError: an internal error, fail closed)."""
    return marshal.loads(marshal.dumps(value, 2))


def harden_exec(process: dict[str, Any], tier: Tier, policy: dict[str, Any], facts: Facts | None = None,
                why: str = "") -> tuple[dict[str, Any], list[Change], list[tuple[str, str]]]:
    """An exec into a running container: its process through the same MODIFIERS as a create.

    The exec joins the container's namespaces, mounts, seccomp filter and cgroup, which
    its create fixed (and hardened): the spec around the process stands for those (the
    container's own namespaces, nothing else asked for), and only the process's changes
    count. Returns (hardened copy of the process, changes, notes); raises Refusal.
    """
    spec = {"process": clone(process), "linux": {"namespaces": [{"type": kind} for kind in PRIVATE_NAMESPACES]}}
    ctx = _modify(spec, Context(tier, policy, facts or {}, why, "an exec"))
    changes: list[Change] = [c for c in ctx.changes if c["field"].startswith("$.process")]
    if tier.get("audit"):
        for reason in ctx.refusals:
            ctx.note("would refuse", reason)
        return clone(process), [{**c, "what": "would: " + c["what"]} for c in changes], ctx.notes
    if ctx.refusals:
        raise Refusal("; ".join(ctx.refusals))  # every reason, on one line
    return spec["process"], changes, ctx.notes


def _modify(spec: dict[str, Any], ctx: Context) -> Context:
    if not ctx.tier["passthrough"]:
        for modify in MODIFIERS:
            modify(spec, ctx)
    return ctx
