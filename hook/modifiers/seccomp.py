"""Seccomp: the tier's compiled profile replaces whatever the caller asked for."""

from __future__ import annotations

from ._spec import get


def apply(spec: dict, ctx) -> None:
    profile = ctx.tier["seccomp"]
    if profile is None:
        return
    linux = get(spec, "linux", dict, "$", create=True)
    current = get(linux, "seccomp", dict, "$.linux")
    if current == profile:
        return
    linux["seccomp"] = profile
    before = "no profile (unconfined)" if current is None else "the caller's profile"
    ctx.change("$.linux.seccomp", f"replaced {before} with {ctx.tier['seccomp_profile']}",
               f"tier {ctx.tier['name']} allows only its own syscall set")
