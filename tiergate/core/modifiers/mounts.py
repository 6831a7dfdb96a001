"""Mounts: judged by the host paths they really expose; read-only rootfs and mounts where the tier says.

A mount exposes host paths when it is a bind (any type with bind/rbind), an
overlay (its lower, upper and work dirs), a kernel filesystem that is the
host's (devtmpfs, debugfs, ...) or a filesystem mounted from a host path.
Each such path is judged as written, as resolved, and by every host path the
edge found for the same files (a named volume bind-mounted from `/` is `/`).
"""

from __future__ import annotations

import os

from tiergate.core import glob
from tiergate.core.spec import get, objects, strings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.contracts import MountFact, Tier
    from tiergate.core.harden import Context

_HEX = frozenset("0123456789abcdef")
_DOCKER_FILES = ("hostname", "hosts", "resolv.conf", "mounts/shm")
_CRI_FILES = ("hostname", "hosts", "resolv.conf", "shm")  # containerd CRI: .../io.containerd.grpc.v1.cri/sandboxes/<id>/

# Kernel filesystems with one host-wide instance: mounting one is mounting that host path.
KERNEL_FS = {"devtmpfs": "/dev", "debugfs": "/sys/kernel/debug", "tracefs": "/sys/kernel/tracing",
             "securityfs": "/sys/kernel/security", "bpf": "/sys/fs/bpf", "configfs": "/sys/kernel/config",
             "efivarfs": "/sys/firmware/efi/efivars", "pstore": "/sys/fs/pstore", "fusectl": "/sys/fs/fuse/connections",
             "binfmt_misc": "/proc/sys/fs/binfmt_misc"}
# Types whose source is only a label (the container's own instance, or overlay's dirs in its options).
_LABEL_TYPES = frozenset({"tmpfs", "ramfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay", "shm"})
_OVERLAY_DIRS = ("lowerdir", "upperdir", "workdir")


def _container_id(part: str) -> bool:
    return len(part) == 64 and set(part) <= _HEX


def engine_file(source: str) -> bool:
    """A file or dir an engine made for one container (hosts, hostname, resolv.conf,
    .containerenv, shm, an overlay volume's upper dir): under /run, /var/lib/containers,
    /var/lib/docker or /var/lib/containerd but not the host's."""
    parts = source.split("/")
    if ".." in parts:
        return False
    # .../<x>-containers/<id>/userdata/...
    for i in range(len(parts) - 3):
        if parts[i].endswith("-containers") and _container_id(parts[i + 1]) and parts[i + 2] == "userdata" and parts[i + 3]:
            return True
    # .../containers/<id>/<hostname|hosts|resolv.conf|mounts/shm>
    for tail in _DOCKER_FILES:
        n = tail.count("/") + 1
        if "/".join(parts[-n:]) == tail and len(parts) > n + 1 and parts[-n - 2] == "containers" and _container_id(parts[-n - 1]):
            return True
    # .../io.containerd.grpc.v1.cri/sandboxes/<id>/<hostname|hosts|resolv.conf|shm>
    return (len(parts) > 3 and parts[-1] in _CRI_FILES and _container_id(parts[-2]) and parts[-3] == "sandboxes"
            and parts[-4] == "io.containerd.grpc.v1.cri")


def volume_data(source: str) -> bool:
    """Inside a named volume's .../volumes/<name>/_data: the engine's own storage, unless the
    edge finds the same files at another host path (a volume made with device=/ and o=bind)."""
    parts = source.split("/")
    return ".." not in parts and any(parts[i] == "volumes" and parts[i + 1] and parts[i + 2] == "_data"
                                     for i in range(len(parts) - 2))


def engine_owned(source: str) -> bool:
    return engine_file(source) or volume_data(source)


# Kernel filesystems the runtime itself needs as they are. (/dev may be "ro": runc
# creates the device nodes first, then remounts it; /dev/null stays writable.)
_LEAVE_WRITABLE = {"proc", "sysfs", "devpts", "cgroup", "cgroup2"}
# Host-wide kernel state a container only reads, in every tier but passthrough (Docker's default).
_READ_ONLY_FS = ("sysfs", "cgroup", "cgroup2")


def options(mount: dict[str, Any]) -> list[str]:
    return strings(mount, "options", "$.mounts[]") or []


def is_bind(mount: dict[str, Any]) -> bool:
    opts = options(mount)
    return mount.get("type") == "bind" or "bind" in opts or "rbind" in opts


def host_paths(mount: dict[str, Any]) -> list[str]:
    """The host paths a mount exposes (see the module docstring); [] for the container's own filesystems."""
    typ, src = mount.get("type"), mount.get("source") or ""
    if is_bind(mount):
        return [src]
    if typ == "overlay":
        out = []
        for opt in options(mount):
            key, _, value = opt.partition("=")
            if key in _OVERLAY_DIRS:
                out += [p for p in value.split(":") if p]
        return out
    if typ in KERNEL_FS:
        return [KERNEL_FS[typ]]
    return [src] if typ not in _LABEL_TYPES and src.startswith("/") else []


def written_paths(mount: dict[str, Any]) -> list[str]:
    """The host paths writes through the mount land in (an overlay writes only to its upper and work dirs)."""
    if mount.get("type") == "overlay" and not is_bind(mount):
        return [v for o in options(mount) for k, _, v in [o.partition("=")]
                if k in ("upperdir", "workdir") and v]
    return host_paths(mount)


def normalize(path: str) -> str:
    return os.path.normpath("/" + path.lstrip("/")) if path else ""  # "/" first: POSIX keeps a leading "//"


def sensitive(path: str, sensitive_paths: list[str], sockets: list[str]) -> str | None:
    """The sensitive entry `path` is, is under, or holds (-v /var:/x exposes /var/lib/docker),
    or None. "/" matches only itself."""
    norm = normalize(path)
    if os.path.basename(norm) in sockets:
        return f"engine socket {os.path.basename(norm)}"
    for s in sensitive_paths:
        if norm == s or (s != "/" and norm.startswith(s + "/")) or (norm != "/" and s.startswith(norm + "/")):
            return s
    return None


def candidates(path: str, fact: MountFact | None) -> list[str]:
    """Every host path a source stands for: as written, resolved, and its aliases (edge facts)."""
    out = [normalize(path)]
    if fact:
        out += [fact["real"], *fact.get("aliases", ())]
    return list(dict.fromkeys(out))


def judge(path: str, fact: MountFact | None, sens: list[str], sockets: list[str], tier: Tier) -> tuple[str, str] | None:
    """(kind, reason) a tier without sensitive_mounts may not mount `path` for, or None."""
    if not path.startswith("/"):
        return "relative host path", "resolved by the runtime against its bundle directory, unknown here"
    for c in candidates(path, fact):
        if not engine_owned(c):
            hit = sensitive(c, sens, sockets)
            if hit:
                return "sensitive host path", hit if c == normalize(path) else f"{hit}, as {c}"
    if not fact:
        return None
    if fact.get("socket"):
        return "sensitive host path", f"directory holding engine socket {fact['socket']}"
    if fact.get("mutable") and not any(glob.match(p, fact["real"]) for p in tier.get("mutable_bind_paths") or ()):
        return "swappable host path", f"{fact['mutable']}: it could be swapped between check and mount"
    return None


def sensitive_mounts(spec: dict[str, Any], ctx: Context) -> None:
    """Every mount is judged by the host paths it exposes: sensitive paths, tiergate's own state,
    engine sockets, directories holding one, paths a non-root user can swap."""
    mounts = objects(spec, "mounts", "$")
    tier = ctx.tier
    facts = ctx.facts.get("mount_paths", {})
    sens = sorted(set(ctx.policy["sensitive"]["paths"]) | set(ctx.facts.get("own_paths", ())))
    sockets = ctx.policy["sensitive"]["sockets"]
    keep = []
    for i, m in enumerate(mounts):
        src = get(m, "source", str, f"$.mounts[{i}]") or ""
        dest = get(m, "destination", str, f"$.mounts[{i}]") or ""
        strings(m, "options", f"$.mounts[{i}]")
        hit = None
        if not tier["sensitive_mounts"]:
            for path in host_paths(m):
                hit = judge(path, facts.get(path), sens, sockets, tier)
                if hit:
                    break
            if hit is None and os.path.basename(os.path.normpath(dest or "/")) in sockets:
                hit = "sensitive host path", f"engine socket {os.path.basename(dest)}"
        if hit is None:
            keep.append(m)
            _readonly_host_bind(m, i, facts, ctx)
            continue
        kind, reason = hit
        verb, what = ("bind-mounts", "bind mount") if is_bind(m) else (f"mounts ({m.get('type')})", f"{m.get('type')} mount")
        ctx.escalation(f"{verb} {kind} {src} ({reason}) at {dest}")
        ctx.change(f"$.mounts[{i}]", f"removed {what} {src} -> {dest}", f"tier {tier['name']} forbids mounting {reason}")
    if len(keep) != len(mounts):
        spec["mounts"] = keep


def _readonly_host_bind(m: dict[str, Any], i: int, facts: dict[str, Any], ctx: Context) -> None:
    """writable_binds: host paths a mount writes to stay writable only when the policy names them."""
    writable = ctx.tier.get("writable_binds")
    if writable is None or "ro" in options(m):
        return
    for path in written_paths(m):
        fact = facts.get(path)
        names = candidates(path, fact)
        if all(engine_owned(c) for c in names) or any(glob.match(p, c) for p in writable for c in names):
            continue
        m["options"] = [o for o in options(m) if o != "rw"] + ["ro"]
        ctx.change(f"$.mounts[{i}].options", f"made host path {path} at {m.get('destination')} read-only",
                   f"tier {ctx.tier['name']} writes only to host paths its policy names "
                   f"(writable_binds: {', '.join(writable) or 'none'})")
        return


def kernel_fs(spec: dict[str, Any], ctx: Context) -> None:
    """sysfs and the cgroup filesystem read-only, as in an ordinary container (--privileged asks rw)."""
    for i, m in enumerate(objects(spec, "mounts", "$")):
        if m.get("type") not in _READ_ONLY_FS:
            continue
        opts = strings(m, "options", f"$.mounts[{i}]") or []
        if "ro" not in opts:
            m["options"] = [o for o in opts if o != "rw"] + ["ro"]
            ctx.change(f"$.mounts[{i}].options", f"made {m.get('destination')} ({m['type']}) read-only",
                       f"tier {ctx.tier['name']} lets no container write host-wide kernel state")


def rootfs(spec: dict[str, Any], ctx: Context) -> None:
    """Read-only rootfs, the tier's tmpfs mounts, and (with writable_mounts) every other mount read-only."""
    tier = ctx.tier
    if tier["readonly_rootfs"]:
        root = get(spec, "root", dict, "$", create=True)
        if get(root, "readonly", bool, "$.root") is not True:
            root["readonly"] = True
            ctx.change("$.root.readonly", "set to true", f"tier {tier['name']} has a read-only root filesystem")
    mounts = objects(spec, "mounts", "$")
    have = {get(m, "destination", str, f"$.mounts[{i}]") for i, m in enumerate(mounts)}
    for at, extra in tier["tmpfs"].items():
        if at not in have:
            tmpfs_options = ["nosuid", "nodev", "noexec"] + [o for o in extra.split(",") if o]
            mounts.append({"destination": at, "type": "tmpfs", "source": "tmpfs", "options": tmpfs_options})
            spec["mounts"] = mounts
            ctx.change("$.mounts", f"added tmpfs at {at} ({extra or 'default size'})", f"tier {tier['name']} names it writable")
    writable = tier["writable_mounts"]
    if writable is None:
        return
    allowed = set(writable) | set(tier["tmpfs"])
    for i, m in enumerate(mounts):
        dest = m.get("destination")
        if dest in allowed or m.get("type") in _LEAVE_WRITABLE:
            continue
        opts = options(m)
        if "ro" in opts:
            continue
        m["options"] = [o for o in opts if o != "rw"] + ["ro"]
        ctx.change(f"$.mounts[{i}].options", f"made {dest} read-only",
                   f"tier {tier['name']} allows writes only to {', '.join(sorted(allowed)) or 'nothing'}")
