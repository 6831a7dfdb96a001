"""Seccomp: the tier's compiled profile replaces whatever the caller asked for."""

from __future__ import annotations

from ._spec import get


def apply(spec: dict, ctx) -> None:
    profile = ctx.tier["seccomp"]
    if profile is None:
        return
    linux = get(spec, "linux", dict, "$", create=True)
    current = get(linux, "seccomp", dict, "$.linux")
    if current is not None and canonical(current) == canonical(profile):
        return  # the same filter, perhaps re-serialised by the engine
    linux["seccomp"] = profile
    before = "no profile (unconfined)" if current is None else "the caller's profile"
    ctx.change("$.linux.seccomp", f"replaced {before} with {ctx.tier['seccomp_profile']}",
               f"tier {ctx.tier['name']} allows only its own syscall set")


def canonical(profile: dict) -> object:
    """The filter a profile means, whatever defaults an engine wrote out or left out.

    Podman re-serialises config.json dropping `"valueTwo": 0`, for example; a
    verify stage must not call that weaker. Malformed input compares unequal.
    """
    try:
        rules = []
        for rule in profile.get("syscalls") or []:
            args = tuple(sorted((a["index"], a.get("value", 0), a.get("valueTwo", 0), a["op"])
                                for a in rule.get("args") or []))
            rules.append((tuple(sorted(rule["names"])), rule["action"], rule.get("errnoRet"), args))
        return (profile.get("defaultAction"), profile.get("defaultErrnoRet"),
                tuple(sorted(profile.get("architectures") or [])), tuple(sorted(profile.get("flags") or [])),
                profile.get("listenerPath"), tuple(sorted(rules, key=repr)))
    except (AttributeError, KeyError, TypeError):
        return object()
