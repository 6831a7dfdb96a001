"""Kernel knobs: masked and read-only /proc and /sys paths, sysctls, the pids limit."""

from __future__ import annotations

from tiergate.core import glob
from tiergate.core.spec import get, strings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.harden import Context


def paths(spec: dict[str, Any], ctx: Context) -> None:
    linux = get(spec, "linux", dict, "$", create=True)
    for key, want, why in (("maskedPaths", ctx.tier["masked_paths"], "hidden from the container"),
                           ("readonlyPaths", ctx.tier["readonly_paths"], "read-only in the container")):
        if not want:
            continue
        have = strings(linux, key, "$.linux") or []
        missing = [p for p in want if p not in have]
        if missing:
            linux[key] = have + missing
            ctx.change(f"$.linux.{key}", f"added {', '.join(missing)}", f"kernel interfaces {why} in tier {ctx.tier['name']}")


def sysctls(spec: dict[str, Any], ctx: Context) -> None:
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


def pids(spec: dict[str, Any], ctx: Context) -> None:
    limit = ctx.tier["pids_limit"]
    if not limit:
        return
    if ctx.facts.get("cgroup_limits") is False:
        return nproc_instead(spec, ctx, limit)
    linux = get(spec, "linux", dict, "$", create=True)
    resources = get(linux, "resources", dict, "$.linux", create=True)
    pids = get(resources, "pids", dict, "$.linux.resources", create=True)
    have = get(pids, "limit", int, "$.linux.resources.pids")
    if have is None or have <= 0 or have > limit:
        pids["limit"] = limit
        ctx.change("$.linux.resources.pids.limit", f"set to {limit}", f"tier {ctx.tier['name']} caps processes (fork bombs)")


def nproc_instead(spec: dict[str, Any], ctx: Context, limit: int) -> None:
    """Rootless without cgroup delegation: runc cannot set a pids limit (every start would fail).

    RLIMIT_NPROC (soft = hard, which the workload cannot raise: that needs CAP_SYS_RESOURCE in the
    host's user namespace) bounds the processes of the container's uid in its user namespace: the
    container's processes, plus the same user's other rootless containers running as that uid, so
    it is never weaker than the pids limit, only shared. It holds only while no process can change
    uid: a tier that keeps CAP_SETUID (or lets setuid binaries work) is refused instead.
    """
    name = ctx.tier["name"]
    proc = get(spec, "process", dict, "$", create=True)
    caps = get(proc, "capabilities", dict, "$.process") or {}
    bounding = strings(caps, "bounding", "$.process.capabilities") or []
    if "CAP_SETUID" in bounding or not proc.get("noNewPrivileges"):
        ctx.refuse(f"tier {name} needs pids_limit {limit}, which cannot be applied here (rootless, no cgroup v2 "
                   "delegation), and RLIMIT_NPROC does not hold while the tier keeps CAP_SETUID or setuid binaries")
        return
    linux = get(spec, "linux", dict, "$")
    resources = get(linux, "resources", dict, "$.linux") if linux else None
    pids = get(resources, "pids", dict, "$.linux.resources") if resources else None
    if pids is not None and resources is not None:
        asked = get(pids, "limit", int, "$.linux.resources.pids")
        if asked is not None and 0 < asked < limit:
            limit = asked  # never weaker than what the caller asked either
        del resources["pids"]
        ctx.change("$.linux.resources.pids", "removed", "rootless without cgroup delegation: runc cannot set it")
    rlimits = get(proc, "rlimits", list, "$.process") or []
    rest = [r for r in rlimits if not (isinstance(r, dict) and r.get("type") == "RLIMIT_NPROC")]
    have = [r for r in rlimits if isinstance(r, dict) and r.get("type") == "RLIMIT_NPROC"]
    hard = min([limit, *(r["hard"] for r in have if isinstance(r.get("hard"), int) and r["hard"] >= 0)])
    want = {"type": "RLIMIT_NPROC", "hard": hard, "soft": hard}
    if have != [want]:
        proc["rlimits"] = [*rest, want]
        ctx.change("$.process.rlimits", f"RLIMIT_NPROC set to {hard}",
                   f"tier {name} caps processes; without cgroups, per uid in the user namespace")
    ctx.note("pids", f"pids_limit {limit} applied as RLIMIT_NPROC {hard} (no cgroup delegation: shared by the "
             "user's containers running as the same uid)")


def pids_update(resources: dict[str, Any], ctx: Context) -> None:
    """`runc update` resources (docker update, podman update): the tier's pids limit holds after
    create too. 0 leaves the limit as it is (runc); below 0 is unlimited; cgroup v2 `unified`
    pids.* keys would bypass the field."""
    limit = ctx.tier["pids_limit"]
    if not limit:
        return
    pids: Any = resources.get("pids")
    have = pids.get("limit") if isinstance(pids, dict) else None
    if isinstance(have, int) and not isinstance(have, bool) and (have < 0 or have > limit):
        ctx.escalation(f"raises its pids limit to {'unlimited' if have < 0 else have} by update (the tier caps it at {limit})")
        pids["limit"] = limit
        ctx.change("$.pids.limit", f"set to {limit}", f"tier {ctx.tier['name']} caps processes (fork bombs)")
    unified = resources.get("unified")
    if isinstance(unified, dict) and any(str(k).startswith("pids.") for k in unified):
        ctx.escalation(f"writes cgroup pids files by update ({', '.join(sorted(str(k) for k in unified if str(k).startswith('pids.')))})")
        for key in [k for k in unified if str(k).startswith("pids.")]:
            del unified[key]
        ctx.change("$.unified", "dropped pids.*", f"tier {ctx.tier['name']} sets the pids limit")
