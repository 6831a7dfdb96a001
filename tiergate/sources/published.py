"""Ports the caller published (`-p`, `--expose`), from the engine's own records (HOT PATH: stdlib only).

Read only for tiers whose network policy says `ingress = "published"`; never
from an annotation, which whoever runs the container can set.

- docker: `<data-root>/containers/<id>/hostconfig.json` PortBindings (`-p`)
  and config.v2.json Config.ExposedPorts (`--expose`, `-p` and the image's
  EXPOSE), both written by dockerd before it calls the runtime, found and
  checked as sources/docker.py finds the image (root-owned, the right id).
- podman 4.3: its bolt database `<graphroot>/libpod/bolt_state.db` holds each
  container's config as one JSON value, `{"spec":{...},"id":"<id>",...,
  "newPortMappings":[{"container_port":..,"protocol":..,"range":..}],
  "exposedPorts":{"9999":["tcp"]}}`, written at `podman create`, before
  precreate. The container id comes from containers-storage (the layer of
  root.path), not from the spec. A quote inside a caller's string is escaped
  in that JSON, so `},"id":"<id>","name":` occurs only at the real config's
  top level. netavark's firewall state and the spec carry no port list.

What cannot be read gives no published ports: fewer open ports, never more.
Port strings are docker's form, "80/tcp".
"""

from __future__ import annotations

import os

MAX_RANGE = 1024  # `-p 1000-1999:...` is one mapping with range 1000; more are not opened
MAX_DB = 512 * 1024 * 1024


def _docker(spec: dict) -> list[str]:
    from tiergate.sources import docker

    found = docker.container_dir(spec)
    if found is None:
        return []
    out: list[str] = []
    for name, key in (("hostconfig.json", "PortBindings"), ("config.v2.json", "Config")):
        try:
            doc = docker._read_owned(os.path.join(found[0], name))
        except Exception:  # noqa: BLE001 - unreadable: nothing published
            continue
        if name == "config.v2.json":
            if doc.get("ID") != found[1]:
                continue
            doc = doc["Config"] if isinstance(doc.get("Config"), dict) else {}
            key = "ExposedPorts"
        ports = doc.get(key)
        if isinstance(ports, dict):
            out += [p for p in ports if isinstance(p, str)]
    return out


def _podman_container(graph: str, driver: str, layer: str) -> str | None:
    from tiergate.sources.storage import _container_entry

    try:
        entry = _container_entry(graph, driver, layer)
    except Exception:  # noqa: BLE001
        return None
    cid = entry.get("id") if entry else None
    return cid if isinstance(cid, str) and len(cid) == 64 and cid.isalnum() else None


def podman_config(db_path: str, cid: str) -> dict | None:
    """The container's config object in podman's bolt database, or None."""
    import mmap

    from tiergate.oci.errors import OciError
    from tiergate.oci.jsonio import value_at

    try:
        fd = os.open(db_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if not 0 < size <= MAX_DB:
            return None
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
            at = mm.find(b'},"id":"' + cid.encode() + b'","name":')
            start = mm.rfind(b'{"spec":', 0, at) if at >= 0 else -1
            if start < 0:
                return None
            end = mm.find(b"\0", at)  # a value never holds a NUL byte; the page's padding does
            raw = mm[start:end if end > 0 else size]
    finally:
        os.close(fd)
    try:
        doc, _ = value_at(raw.decode("utf-8", "replace"), 0, "podman's container config")
    except OciError:
        return None
    return doc if isinstance(doc, dict) and doc.get("id") == cid else None


def _podman(spec: dict) -> list[str]:
    from tiergate.sources.storage import split_root

    root = spec["root"] if isinstance(spec.get("root"), dict) else {}
    where = split_root(root["path"]) if isinstance(root.get("path"), str) else None
    if where is None:
        return []
    cid = _podman_container(*where)
    doc = podman_config(os.path.join(where[0], "libpod", "bolt_state.db"), cid) if cid else None
    if doc is None:
        return []
    out: list[str] = []
    for m in doc.get("newPortMappings") or []:
        if not isinstance(m, dict):
            continue
        port, span = m.get("container_port"), m.get("range") or 1
        if not (isinstance(port, int) and isinstance(span, int)) or span < 1:
            continue
        for proto in str(m.get("protocol") or "tcp").split(","):
            out += [f"{p}/{proto}" for p in range(port, min(port + min(span, MAX_RANGE), 65536))]
    exposed = doc.get("exposedPorts")
    if isinstance(exposed, dict):
        for port, protos in exposed.items():
            for proto in protos if isinstance(protos, list) else ["tcp"]:
                out.append(f"{port}/{proto}")
    return out


def ports(spec: dict, engine: str) -> list[str]:
    """What the caller published for this container, in the records of `engine`; [] if none or unknown."""
    if engine == "docker":
        return _docker(spec)
    if engine in ("podman", "podman-runtime"):
        return _podman(spec)
    return []
