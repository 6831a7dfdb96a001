"""Mounts: no sensitive host paths or engine sockets; read-only rootfs and mounts where the tier says."""

from __future__ import annotations

import os

from ._spec import get, objects, strings

_HEX = frozenset("0123456789abcdef")
_DOCKER_FILES = ("hostname", "hosts", "resolv.conf", "mounts/shm")


def engine_owned(source: str) -> bool:
    """Files an engine bind-mounts from its own per-container directory (hosts, hostname,
    resolv.conf, .containerenv, shm) and named volumes: they live under /run,
    /var/lib/containers or /var/lib/docker but are not the host's."""
    parts = source.split("/")

    def container_id(i: int) -> bool:
        return 0 <= i < len(parts) and len(parts[i]) == 64 and set(parts[i]) <= _HEX

    # .../overlay-containers/<id>/userdata/<file>
    if len(parts) >= 4 and parts[-2] == "userdata" and parts[-4].endswith("-containers") and container_id(len(parts) - 3):
        return True
    # .../containers/<id>/<hostname|hosts|resolv.conf|mounts/shm>
    for tail in _DOCKER_FILES:
        n = tail.count("/") + 1
        if "/".join(parts[-n:]) == tail and len(parts) > n + 1 and parts[-n - 2] == "containers" and container_id(len(parts) - n - 1):
            return True
    # .../volumes/<name>/_data[/...]
    for i in range(len(parts) - 2):
        if parts[i] == "volumes" and parts[i + 1] and parts[i + 2] == "_data":
            return True
    return False
# Kernel filesystems the runtime itself needs as they are. (/dev may be "ro": runc
# creates the device nodes first, then remounts it; /dev/null stays writable.)
_LEAVE_WRITABLE = {"proc", "sysfs", "devpts", "cgroup", "cgroup2"}


def is_bind(mount: dict) -> bool:
    opts = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in opts or "rbind" in opts


def sensitive(path: str, sensitive_paths: list[str], sockets: list[str]) -> str | None:
    """The sensitive entry `path` is, is under, or holds (-v /var:/x exposes /var/lib/docker),
    or None. "/" matches only itself."""
    norm = "/" + os.path.normpath(path).lstrip("/") if path else ""  # POSIX keeps a leading "//"
    if os.path.basename(norm) in sockets:
        return f"engine socket {os.path.basename(norm)}"
    for s in sensitive_paths:
        if norm == s or (s != "/" and norm.startswith(s + "/")) or (norm != "/" and s.startswith(norm + "/")):
            return s
    return None


def sensitive_mounts(spec: dict, ctx) -> None:
    if ctx.tier["sensitive_mounts"]:
        return
    mounts = objects(spec, "mounts", "$")
    paths, sockets = ctx.policy["sensitive"]["paths"], ctx.policy["sensitive"]["sockets"]
    real = ctx.facts.get("realpaths", {})
    keep = []
    for i, m in enumerate(mounts):
        src = get(m, "source", str, f"$.mounts[{i}]") or ""
        dest = get(m, "destination", str, f"$.mounts[{i}]") or ""
        strings(m, "options", f"$.mounts[{i}]")
        hit = None
        if is_bind(m):
            norm = "/" + os.path.normpath(src).lstrip("/")
            resolved = real.get(src, norm)
            # An engine's own per-container file is exempt only if the path, spelled out and
            # resolved, stays one (no "volumes/x/_data/../../../etc").
            if not (engine_owned(norm) and engine_owned(resolved)):
                hit = sensitive(norm, paths, sockets) or sensitive(resolved, paths, sockets)
        if hit is None and os.path.basename(os.path.normpath(dest or "/")) in sockets:
            hit = f"engine socket {os.path.basename(dest)}"
        if hit is None:
            keep.append(m)
            continue
        ctx.escalation(f"bind-mounts sensitive host path {src} ({hit}) at {dest}")
        ctx.change(f"$.mounts[{i}]", f"removed bind mount {src} -> {dest}",
                   f"tier {ctx.tier['name']} forbids mounting {hit}")
    if len(keep) != len(mounts):
        spec["mounts"] = keep


def rootfs(spec: dict, ctx) -> None:
    """Read-only rootfs, the tier's tmpfs mounts, and (with writable_mounts) every other mount read-only."""
    tier = ctx.tier
    if tier["readonly_rootfs"]:
        root = get(spec, "root", dict, "$", create=True)
        if get(root, "readonly", bool, "$.root") is not True:
            root["readonly"] = True
            ctx.change("$.root.readonly", "set to true", f"tier {tier['name']} has a read-only root filesystem")
    mounts = objects(spec, "mounts", "$")
    have = {get(m, "destination", str, f"$.mounts[{i}]") for i, m in enumerate(mounts)}
    for dest, opts in tier["tmpfs"].items():
        if dest not in have:
            options = ["nosuid", "nodev", "noexec"] + [o for o in opts.split(",") if o]
            mounts.append({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": options})
            spec["mounts"] = mounts
            ctx.change("$.mounts", f"added tmpfs at {dest} ({opts or 'default size'})", f"tier {tier['name']} names it writable")
    writable = tier["writable_mounts"]
    if writable is None:
        return
    allowed = set(writable) | set(tier["tmpfs"])
    for i, m in enumerate(mounts):
        dest = m.get("destination")
        if dest in allowed or m.get("type") in _LEAVE_WRITABLE:
            continue
        opts = m.get("options") or []
        if "ro" in opts:
            continue
        m["options"] = [o for o in opts if o != "rw"] + ["ro"]
        ctx.change(f"$.mounts[{i}].options", f"made {dest} read-only",
                   f"tier {tier['name']} allows writes only to {', '.join(sorted(allowed)) or 'nothing'}")
