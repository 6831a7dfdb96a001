"""Devices: no host device nodes and no device-cgroup access beyond the tier's list.

uid 0 can read a block device with no capabilities at all, so --privileged's
device list and its allow-all cgroup rule are clamped as a whole.
"""

from __future__ import annotations

from tiergate.core.spec import get, objects

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.harden import Context

# (type, major, minor) the engines and runc always allow; None = any minor.
_STANDARD = {("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9), ("c", 5, 0),
             ("c", 5, 1), ("c", 5, 2), ("c", 136, None), ("c", 10, 200)}
DENY_ALL = {"allow": False, "access": "rwm"}


def apply(spec: dict[str, Any], ctx: Context) -> None:
    """A device is the host's (type, major, minor), whatever path it gets inside: the allow-list
    names host paths, which the edge stats (facts["devices"])."""
    linux = get(spec, "linux", dict, "$", create=True)
    allowed_paths = set(ctx.tier["devices"])
    host = {_key(t, ma, mi) for t, ma, mi in ctx.facts.get("devices", {}).values()}
    devices = objects(linux, "devices", "$.linux")
    kept: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    for i, dev in enumerate(devices):
        get(dev, "path", str, f"$.linux.devices[{i}]")
        kind = get(dev, "type", str, f"$.linux.devices[{i}]")
        for key in ("major", "minor"):
            get(dev, key, int, f"$.linux.devices[{i}]")
        (kept if _key(kind, dev.get("major"), dev.get("minor")) in host else removed).append(dev)
    if removed:
        linux["devices"] = kept
        names = [str(d.get("path")) for d in removed]  # a device without a path: shown, not a TypeError
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        ctx.escalation(f"asks for host devices ({shown})")
        ctx.change("$.linux.devices", f"removed {len(removed)} host devices ({shown})",
                   f"tier {ctx.tier['name']} allows {', '.join(sorted(allowed_paths)) or 'no host devices'}")

    resources = get(linux, "resources", dict, "$.linux")
    rules = objects(resources, "devices", "$.linux.resources") if resources else []
    for i, rule in enumerate(rules):
        where = f"$.linux.resources.devices[{i}]"
        get(rule, "type", str, where)
        get(rule, "access", str, where)
        for key in ("major", "minor"):
            get(rule, key, int, where)
    ok = _STANDARD | {(d.get("type"), d.get("major"), d.get("minor")) for d in kept}
    wide = [r for r in rules if r.get("allow") is True and _grants_access(r) and not _standard(r, ok)]
    if wide or (rules and rules[0] != DENY_ALL) or (kept and not rules):
        new = [DENY_ALL] + [r for r in rules if r.get("allow") is True and r not in wide]
        for d in kept:
            rule = {"allow": True, "type": d.get("type"), "major": d.get("major"), "minor": d.get("minor"), "access": "rwm"}
            if rule not in new:
                new.append(rule)
        if new != rules:
            if wide:
                ctx.escalation("asks for device-cgroup access to host devices")
            resources = get(linux, "resources", dict, "$.linux", create=True)
            resources["devices"] = new
            ctx.change("$.linux.resources.devices", "deny all, then allow only standard and tier devices",
                       f"tier {ctx.tier['name']} limits device access")


def _key(kind: object, major: object, minor: object) -> tuple[object, object, object]:
    return ("c" if kind == "u" else kind, major, minor)


def _grants_access(rule: dict[str, Any]) -> bool:
    access = rule.get("access", "rwm")
    return not isinstance(access, str) or "r" in access or "w" in access


def _standard(rule: dict[str, Any], ok: set[tuple[object, object, object]]) -> bool:
    key = (rule.get("type"), rule.get("major"), rule.get("minor"))
    return key in ok or (key[0], key[1], None) in ok
