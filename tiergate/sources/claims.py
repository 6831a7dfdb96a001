"""Which image source a bundle belongs to, from its spec and path alone: no I/O, no imports.

Each source's lookup (docker.image_for_spec, storage.image_for_rootfs, cri.image_for_spec)
starts with its test here and returns None when it fails, so the shim asks here first and
imports only the source that claims the bundle: importing the three costs a create ~1.3 M
instructions (issue 20), and a runc or containerd bundle needs at most one of them.
A claim is only where to look: the source then checks the engine's own records.
"""

from __future__ import annotations

import os

HEX = frozenset("0123456789abcdef")
STORAGE_DRIVERS = ("overlay", "vfs", "btrfs", "zfs", "aufs")
# containerd's CRI plugin writes this one on every CRI task ("sandbox" or "container");
# CRI-O writes its own image annotations (a pod cannot set io.kubernetes.cri-o.* keys).
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CRIO_NAME = "io.kubernetes.cri-o.ImageName"
TASKS = "io.containerd.runtime.v2.task"


def is_hex(text: str, lo: int, hi: int) -> bool:
    return lo <= len(text) <= hi and set(text) <= HEX


def _hostname_source(path: str) -> tuple[str, str] | None:
    """(<data-root>/containers/<id>, <id>) for the source of docker's /etc/hostname bind mount."""
    head, name = os.path.split(path)
    parent, cid = os.path.split(head)
    if name == "hostname" and is_hex(cid, 64, 64) and os.path.basename(parent) == "containers" and parent != "/containers":
        return head, cid
    return None


def docker_dir(spec: dict) -> tuple[str, str] | None:
    """docker: (its per-container directory, container id) from the /etc/hostname bind mount, else None."""
    mounts = spec["mounts"] if isinstance(spec.get("mounts"), list) else []
    for m in mounts:
        if isinstance(m, dict) and m.get("destination") == "/etc/hostname" and isinstance(m.get("source"), str):
            found = _hostname_source(os.path.normpath(m["source"]))
            if found:
                return found
    return None


def storage_root(root_path: str) -> tuple[str, str, str] | None:
    """containers-storage: (graphroot, driver, layer id) of a rootfs path in it, else None."""
    parts = os.path.normpath(root_path).split("/")
    if parts and parts[-1] in ("merged", "diff"):
        parts.pop()
    if len(parts) < 3 or len(parts[-1]) != 64 or not set(parts[-1]) <= HEX:
        return None
    layer = parts.pop()
    if parts[-1] == "dir" and len(parts) >= 2 and parts[-2] == "vfs":
        parts.pop()
    driver = parts.pop()
    graph = "/".join(parts)
    if driver not in STORAGE_DRIVERS or not graph.startswith("/") or graph == "":
        return None
    return graph, driver, layer


def spec_storage_root(spec: dict) -> tuple[str, str, str] | None:
    """storage_root of the spec's root.path."""
    root = spec["root"] if isinstance(spec.get("root"), dict) else {}
    path = root.get("path")
    return storage_root(path) if isinstance(path, str) else None


def task_path(bundle_dir: str | None) -> tuple[str, str] | None:
    """(containerd namespace, container id) of a bundle <state>/io.containerd.runtime.v2.task/<ns>/<id>."""
    if not bundle_dir:
        return None
    head, cid = os.path.split(os.path.normpath(bundle_dir))
    parent, ns = os.path.split(head)
    if os.path.basename(parent) != TASKS or not ns or not cid:
        return None
    return ns, cid


def cri_kind(spec: dict, bundle_dir: str | None) -> str | None:
    """"containerd" for a containerd task with CRI annotations, "crio" for a CRI-O container, else None
    (an annotation alone claims nothing)."""
    annotations = spec["annotations"] if isinstance(spec.get("annotations"), dict) else {}
    if isinstance(annotations.get(CONTAINER_TYPE), str) and task_path(bundle_dir):
        return "containerd"
    if isinstance(annotations.get(CRIO_NAME), str) and annotations[CRIO_NAME]:
        return "crio"
    return None
