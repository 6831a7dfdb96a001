"""Seccomp: the tier's profile, intersected with the one the engine or caller set (never a swap).

A pod's sandbox (pause) container gets it for its host's native ABI alone (native_only): pause
is the node's own image (containerd's sandbox_image), a native binary that makes a handful of
syscalls, and runc builds one copy of the filter per ABI on its create (baseline's with i386:
22.5 M instructions of libseccomp, native alone 7.3 M; ~8 ms of every pod start here). A
compat-ABI call from it meets the bad-arch action and is killed: tighter, never weaker.
"""

from __future__ import annotations

import os

from tiergate.oci.errors import SpecError
from tiergate.core.names import SECCOMP_ARCH_FAMILIES

from tiergate.core.spec import get

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.harden import Context


def apply(spec: dict[str, Any], ctx: Context) -> None:
    full = ctx.tier["seccomp"]
    if full is None:
        return
    sandbox = bool(ctx.facts.get("sandbox"))
    profile = native_only(full) if sandbox else full
    linux = get(spec, "linux", dict, "$", create=True)
    current = get(linux, "seccomp", dict, "$.linux")
    if current is not None and _same(current, profile):
        return  # the tier's own filter, perhaps re-serialised by the engine
    if current is None:
        linux["seccomp"] = profile
        ctx.change("$.linux.seccomp", f"replaced no profile (unconfined) with {ctx.tier['seccomp_profile']}"
                   + (", native ABI only (the pod's sandbox)" if sandbox else ""),
                   f"tier {ctx.tier['name']} allows only its own syscall set")
        return
    known = ctx.facts.get("seccomp")  # the edge's remembered intersection, for exactly this profile
    if known is not None and known["for"] == current:
        merged = known["intersection"]
    else:
        merged = intersection(full, current)
    if sandbox:
        merged = native_only(merged)
    if _same(current, merged):
        return  # already the intersection (a verify stage, a second pass), perhaps re-serialised by the engine
    linux["seccomp"] = merged
    ctx.change("$.linux.seccomp", f"intersected the caller's profile with {ctx.tier['seccomp_profile']}",
               f"tier {ctx.tier['name']} allows only its own syscall set, and what the caller denies stays denied")


def native_only(profile: dict[str, Any]) -> dict[str, Any]:
    """`profile` for this host's native ABI alone, when it lists it (else unchanged)."""
    family = SECCOMP_ARCH_FAMILIES.get(os.uname().machine)
    arches = profile.get("architectures") or []
    if not family or family[0] not in arches or len(arches) == 1:
        return profile
    return dict(profile, architectures=[family[0]])


def intersection(profile: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The tier's profile intersected with the spec's; SpecError when the spec's cannot be read."""
    from tiergate.seccomp.intersect import intersect

    try:
        return intersect(profile, current)
    except (AttributeError, KeyError, TypeError) as exc:
        raise SpecError(f"unreadable seccomp profile ({type(exc).__name__}: {exc})", "$.linux.seccomp") from None


def _same(current: dict[str, Any], profile: dict[str, Any]) -> bool:
    """Equal, or the same filter re-serialised (canonical() only when it could be: it costs ~1 ms)."""
    return current == profile or (len(current.get("syscalls") or ()) == len(profile.get("syscalls") or ())
                                  and canonical(current) == canonical(profile))


def canonical(profile: dict[str, Any]) -> object:
    """The filter a profile means, whatever defaults an engine wrote out or left out.

    Podman re-serialises config.json dropping `"valueTwo": 0`, for example; a
    verify stage must not call that weaker. Malformed input compares unequal.
    """
    try:
        rules = []
        for rule in profile.get("syscalls") or []:
            args = tuple(sorted((a["index"], a.get("value", 0), a.get("valueTwo", 0), a["op"])
                                for a in rule.get("args") or []))
            rules += [(name, rule["action"], rule.get("errnoRet"), args) for name in rule["names"]]
        return (profile.get("defaultAction"), profile.get("defaultErrnoRet"),
                tuple(sorted(profile.get("architectures") or [])), tuple(sorted(profile.get("flags") or [])),
                profile.get("listenerPath"), tuple(sorted(set(rules), key=lambda r: (r[0], r[1], r[2] or 0, r[3]))))
    except (AttributeError, KeyError, TypeError):
        return object()
