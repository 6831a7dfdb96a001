"""Image facts from containers-storage (podman, buildah, CRI-O), read without calling the engine.

Podman holds the container's lock while hooks run, so asking podman would
deadlock; its storage metadata is plain JSON on disk. The precreate spec's
root.path is `<graphroot>/overlay/<layer>/merged`: the graphroot comes from
it, which honours storage.conf, --root and rootless storage alike.
"""

from __future__ import annotations

import base64
import os
import re

import json

from tiergate.oci.errors import OciError

from ..decide import Image

_ROOT = re.compile(r"^(?P<graph>/.+)/(?P<driver>overlay|vfs|btrfs|zfs|aufs)/(?:dir/)?(?P<layer>[0-9a-f]{64})(?:/merged|/diff)?/?$")
MAX_METADATA = 256 * 1024 * 1024


def _read(path: str, what: str):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise OciError(f"cannot open {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_METADATA + 1)
    if len(data) > MAX_METADATA:
        raise OciError(f"{what} {path} is larger than {MAX_METADATA} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # half-written or corrupt: the policy decides
        raise OciError(f"{what} {path} is not valid JSON ({str(exc)[:80]})") from None


def split_root(root_path: str) -> tuple[str, str, str] | None:
    """(graphroot, driver, layer id) for a containers-storage rootfs path, else None."""
    m = _ROOT.match(os.path.normpath(root_path))
    return (m["graph"], m["driver"], m["layer"]) if m else None


def image_for_rootfs(root_path: str) -> Image:
    """Never raises: what cannot be read becomes Image.unknown(reason) for the policy to judge."""
    where = split_root(root_path)
    if where is None:
        return Image.unknown(f"rootfs {root_path[:200]} is not in containers-storage")
    graph, driver, layer = where
    try:
        containers = _read(os.path.join(graph, f"{driver}-containers", "containers.json"), "container metadata")
        entry = next((c for c in _list(containers, "containers.json") if c.get("layer") == layer), None)
        if entry is None:
            return Image.unknown(f"no container uses layer {layer[:12]}")
        image_id = entry.get("image") or ""
        if not image_id:
            return Image(refs=[], id="", labels={})  # created from a bare rootfs: no image, no labels
        images = _read(os.path.join(graph, f"{driver}-images", "images.json"), "image metadata")
        image = next((i for i in _list(images, "images.json") if i.get("id") == image_id), None)
        if image is None:
            return Image.unknown(f"image {image_id[:12]} is not in images.json")
        key = "sha256:" + image_id
        blob = os.path.join(graph, f"{driver}-images", image_id, "=" + base64.b64encode(key.encode()).decode())
        config = _read(blob, "image config")
        cfg = config.get("config") if isinstance(config, dict) else None
        cfg = cfg if isinstance(cfg, dict) else {}
        labels = cfg.get("Labels") if isinstance(cfg.get("Labels"), dict) else {}
        exposed = cfg.get("ExposedPorts") if isinstance(cfg.get("ExposedPorts"), dict) else {}
        names = [n for n in image.get("names") or [] if isinstance(n, str)]
        # Trust rules judge the reference the container was created from, not every alias
        # the same image id carries (podman records it in the container's metadata).
        ran = _metadata(entry).get("image-name")
        if isinstance(ran, str) and ran:
            names = [ran]
        return Image(refs=names, id=image_id, labels={k: v for k, v in labels.items() if isinstance(v, str)},
                     exposed=list(exposed), digest=str(image.get("digest") or ""))
    except OciError as exc:
        return Image.unknown(str(exc))


def _metadata(entry: dict) -> dict:
    raw = entry.get("metadata")
    try:
        meta = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _list(value, what: str) -> list[dict]:
    if not isinstance(value, list):
        raise OciError(f"{what} is not a JSON array")
    return [v for v in value if isinstance(v, dict)]
