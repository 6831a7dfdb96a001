"""Kernel knobs: masked and read-only /proc and /sys paths, sysctls, the pids limit."""

from __future__ import annotations

from .. import glob
from ._spec import get, strings


def paths(spec: dict, ctx) -> None:
    linux = get(spec, "linux", dict, "$", create=True)
    for key, tier_key, why in (("maskedPaths", "masked_paths", "hidden from the container"),
                               ("readonlyPaths", "readonly_paths", "read-only in the container")):
        want = ctx.tier[tier_key]
        if not want:
            continue
        have = strings(linux, key, "$.linux") or []
        missing = [p for p in want if p not in have]
        if missing:
            linux[key] = have + missing
            ctx.change(f"$.linux.{key}", f"added {', '.join(missing)}", f"kernel interfaces {why} in tier {ctx.tier['name']}")


def sysctls(spec: dict, ctx) -> None:
    linux = get(spec, "linux", dict, "$", create=True)
    table = get(linux, "sysctl", dict, "$.linux")
    if not table:
        return
    patterns = ctx.tier["sysctls"]
    for name in list(table):
        if not any(glob.match(p, name) for p in patterns):
            ctx.escalation(f"sets sysctl {name}")
            del table[name]
            ctx.change(f"$.linux.sysctl.{name}", "removed", f"tier {ctx.tier['name']} does not allow this sysctl")


def pids(spec: dict, ctx) -> None:
    limit = ctx.tier["pids_limit"]
    if not limit:
        return
    linux = get(spec, "linux", dict, "$", create=True)
    resources = get(linux, "resources", dict, "$.linux", create=True)
    pids = get(resources, "pids", dict, "$.linux.resources", create=True)
    have = get(pids, "limit", int, "$.linux.resources.pids")
    if have is None or have <= 0 or have > limit:
        pids["limit"] = limit
        ctx.change("$.linux.resources.pids.limit", f"set to {limit}", f"tier {ctx.tier['name']} caps processes (fork bombs)")
