"""The process: capabilities in all five sets, no_new_privs, the AppArmor label."""

from __future__ import annotations

from tiergate.core.capabilities import ENGINE_DEFAULTS, SETS
from tiergate.core.names import PODMAN_PRIVILEGED
from tiergate.core.spec import get, strings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.harden import Context


def capabilities(spec: dict[str, Any], ctx: Context) -> None:
    proc = get(spec, "process", dict, "$")
    if proc is None:
        return
    capset = get(proc, "capabilities", dict, "$.process")
    if capset is None:
        return
    allowed = set(ctx.tier["capabilities"])
    asked: set[str] = set()
    for name in SETS:
        have = strings(capset, name, "$.process.capabilities")
        if have is None:
            continue
        keep = [c for c in have if c in allowed]
        if len(keep) != len(have):
            dropped = [c for c in have if c not in allowed]
            asked.update(c for c in dropped if c not in ENGINE_DEFAULTS)
            capset[name] = keep
            ctx.change(f"$.process.capabilities.{name}", f"dropped {', '.join(dropped)}",
                       f"tier {ctx.tier['name']} allows {', '.join(ctx.tier['capabilities']) or 'no capabilities'}")
    if asked:
        names = sorted(asked, key=lambda c: c != "CAP_SYS_ADMIN")  # the telling one first
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        ctx.escalation(f"asks for capabilities beyond the engine defaults: {shown} (--cap-add or --privileged)")


def privileged(spec: dict[str, Any], ctx: Context) -> None:
    """Name --privileged as such (podman says so; docker's is seen in its parts, which the other
    modifiers clamp)."""
    annotations = get(spec, "annotations", dict, "$") or {}
    if annotations.get(PODMAN_PRIVILEGED) == "TRUE":
        ctx.escalation("runs --privileged")


def no_new_privileges(spec: dict[str, Any], ctx: Context) -> None:
    proc = get(spec, "process", dict, "$")
    if proc is None or not ctx.tier["no_new_privileges"]:
        return
    if get(proc, "noNewPrivileges", bool, "$.process") is not True:
        proc["noNewPrivileges"] = True
        ctx.change("$.process.noNewPrivileges", "set to true",
                   "setuid binaries and file capabilities must not raise privileges")


def apparmor(spec: dict[str, Any], ctx: Context) -> None:
    """Set the tier's profile only when the edge loaded it (ctx.facts['apparmor'])."""
    proc = get(spec, "process", dict, "$")
    mode = ctx.tier["apparmor"]
    if proc is None or mode == "off":
        return
    loaded = ctx.facts.get("apparmor")
    if loaded:
        if get(proc, "apparmorProfile", str, "$.process") != loaded:
            proc["apparmorProfile"] = loaded
            ctx.change("$.process.apparmorProfile", f"set to {loaded}", f"tier {ctx.tier['name']}'s AppArmor profile")
    elif mode == "require":
        ctx.refuse(f"tier {ctx.tier['name']} requires AppArmor, which this host does not offer")
    else:
        ctx.note("apparmor", "unavailable on this host: the tier runs without its profile")
