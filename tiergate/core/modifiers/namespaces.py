"""Namespaces: a container shares no namespace with the host unless its tier allows it."""

from __future__ import annotations

from tiergate.core.spec import get, objects
from tiergate.core.names import PRIVATE_NAMESPACES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.harden import Context

POD_FIELDS = {"network": "hostNetwork", "pid": "hostPID", "ipc": "hostIPC"}  # what a pod spec calls them


def apply(spec: dict[str, Any], ctx: Context) -> None:
    linux = get(spec, "linux", dict, "$", create=True)
    entries = objects(linux, "namespaces", "$.linux")
    linux["namespaces"] = entries  # `objects` returns a fresh list for a missing or empty one
    allowed = set(ctx.tier["host_namespaces"])
    host = ctx.facts.get("host_ns", {})
    inode = ctx.facts.get("ns_paths", {})
    present = {}
    for i, ns in enumerate(entries):
        kind = get(ns, "type", str, f"$.linux.namespaces[{i}]")
        path = get(ns, "path", str, f"$.linux.namespaces[{i}]")
        present[kind] = ns
        # Unknown identity (path unreadable) counts as the host's: fail closed.
        if path and kind not in allowed and (inode.get(path) is None or inode.get(path) in host.get(kind, ())):
            ctx.escalation(f"joins the host's {kind} namespace ({path})")
            del ns["path"]
            ctx.change(f"$.linux.namespaces[{i}].path", f"removed {path}", f"tier {ctx.tier['name']} forbids host namespaces")
    for kind in PRIVATE_NAMESPACES:  # a missing entry means the host's namespace
        if kind in present or kind in allowed:
            continue
        if kind == "network" and ctx.tier["network"] is not None:
            ctx.refuse(f"tier {ctx.tier['name']} has a network policy, which cannot be enforced "
                       "in the host's network namespace (--network host)")
        if ctx.facts.get("refuse_host_ns"):
            ctx.refuse(f"tier {ctx.tier['name']} forbids the host's {kind} namespace "
                       f"({POD_FIELDS.get(kind, kind)}); clamped away, the pod would not work")
            continue
        ctx.escalation(f"shares the host's {kind} namespace (--{'net' if kind == 'network' else kind} host)")
        entries.append({"type": kind})
        ctx.change("$.linux.namespaces", f"added a private {kind} namespace",
                   f"tier {ctx.tier['name']} forbids host namespaces")
