"""Image facts for Kubernetes containers: containerd's CRI records, and CRI-O's annotations.

containerd (CRI plugin). The spec's io.kubernetes.cri.* annotations say a
container is a CRI one, but they are not the record: under CRI a pod's
annotations reach the spec only for keys the handler's pod_annotations /
container_annotations list (tiergate's installer lists io.tiergate.* alone),
and containerd writes its own io.kubernetes.cri.* keys after them; under
`ctr run` the caller sets any annotation. So the facts come from containerd's
own records, read without calling containerd:

- meta.db (bbolt, read-only and consistent under concurrent commits, see
  bolt.py): v1/<namespace>/containers/<id>, written by the CRI plugin before
  it asks for a task. A container's extension
  io.cri-containerd.container.metadata holds ImageRef, the id (config digest)
  of the image CRI resolved and unpacked for it; a sandbox's
  io.cri-containerd.sandbox.metadata holds the pod's namespace.
- the content store: blobs named by their sha256, checked against it, so
  the image config read (its Labels) is the one CRI resolved.
- the image's name counts (for trust rules) only when meta.db's images entry
  of that name still leads, through its manifest, to the same config digest.

No record (a ctr container, a wrong containerd root): an unknown image, and
the policy's on_unknown_image decides; never a guess from annotations.

CRI-O: io.kubernetes.cri-o.ImageName / ImageRef / Labels annotations, which
CRI-O writes itself (a pod cannot set io.kubernetes.cri-o.* keys).
Standard library only.
"""

from __future__ import annotations

import os
import stat

try:  # the builtin module: hashlib loads OpenSSL (~11 M instructions, ~5 ms) on every pod start
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # Python 3.12+ names it _sha2
    from hashlib import sha256

from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import parse

from tiergate.core.decide import Image
from tiergate.sources.claims import CONTAINER_TYPE, CRIO_NAME, HEX as _HEX, TASKS, cri_kind, task_path  # noqa: F401 (names of this source)
from tiergate.sources.docker import normalize_ref

CRIO_ID, CRIO_LABELS = "io.kubernetes.cri-o.ImageRef", "io.kubernetes.cri-o.Labels"
DEFAULT_ROOT = "/var/lib/containerd"
META_DB = "io.containerd.metadata.v1.bolt/meta.db"
BLOBS = "io.containerd.content.v1.content/blobs/sha256"
CONTAINER_EXT = b"io.cri-containerd.container.metadata"
SANDBOX_EXT = b"io.cri-containerd.sandbox.metadata"
MAX_BLOB = 8 * 1024 * 1024


def image_for_spec(spec: dict, bundle_dir: str | None = None, containerd_root: str | None = None) -> Image | None:
    """The image of a CRI container; None when this is neither a containerd task with CRI
    annotations nor a CRI-O container (an annotation alone claims nothing: the next source asks)."""
    kind = cri_kind(spec, bundle_dir)
    if kind == "containerd":
        return containerd_image(bundle_dir, containerd_root or DEFAULT_ROOT)
    if kind == "crio":
        return _crio(spec["annotations"])
    return None


# -- containerd -------------------------------------------------------------------

def containerd_image(bundle_dir: str | None, root: str) -> Image:
    from tiergate.sources import bolt  # only for containerd's tasks: docker's and runc's bundles skip it

    ns, cid = task_path(bundle_dir) or ("", "")
    db = os.path.join(root, META_DB)

    def lookup(snap: bolt.Snapshot) -> dict:
        containers = (b"v1", ns.encode(), b"containers")
        record = snap.get(*containers, cid.encode())
        if not isinstance(record, dict):
            return {}
        ext = snap.get(*containers, cid.encode(), b"extensions")
        out: dict = {"image": record.get(b"image") or b"", "ext": ext if isinstance(ext, dict) else {}}
        if out["image"]:
            target = snap.get(b"v1", ns.encode(), b"images", out["image"], b"target")
            out["target"] = target if isinstance(target, dict) else {}
        meta = _any_json(out["ext"].get(CONTAINER_EXT) or b"").get("Metadata")
        sandbox = meta.get("SandboxID") if isinstance(meta, dict) else None
        if isinstance(sandbox, str) and sandbox:  # the pod's namespace is in its sandbox's record
            sext = snap.get(*containers, sandbox.encode(), b"extensions")
            out["sandbox_ext"] = (sext or {}).get(SANDBOX_EXT) if isinstance(sext, dict) else None
        return out

    try:
        found = bolt.read(db, lookup)
    except FileNotFoundError:
        return Image.unknown(f"containerd's metadata {db} does not exist (set containerd_root at install)")
    except (OSError, bolt.BoltError) as exc:
        return Image.unknown(f"cannot read containerd's metadata {db}: {exc}")
    if not found:
        return Image.unknown(f"containerd has no record of container {cid[:64]} in namespace {ns[:64]}")
    ext = found["ext"]
    if SANDBOX_EXT in ext:
        pod_ns = pod_namespace(ext[SANDBOX_EXT])
        if pod_ns is None:
            return Image.unknown(f"containerd's sandbox record for {cid[:64]} names no pod namespace")
        return Image(refs=[], id="", labels={}, namespace=pod_ns, sandbox=True)
    if CONTAINER_EXT not in ext:
        return Image.unknown(f"container {cid[:64]} was not made by containerd's CRI plugin (no CRI record)")
    meta = _any_json(ext[CONTAINER_EXT]).get("Metadata")
    meta = meta if isinstance(meta, dict) else {}
    image_id = meta.get("ImageRef")
    if not isinstance(image_id, str) or not _is_digest(image_id):
        return Image.unknown(f"containerd's CRI record for {cid[:64]} has no image id")
    try:
        config = parse(_blob(root, image_id).decode("utf-8"), f"image config {image_id[:19]}")
    except (OSError, UnicodeDecodeError, OciError, ValueError) as exc:
        return Image.unknown(f"cannot read image config {image_id[:19]} from containerd's content store: {exc}")
    cfg = config["config"] if isinstance(config, dict) and isinstance(config.get("config"), dict) else {}
    raw = cfg["Labels"] if isinstance(cfg.get("Labels"), dict) else {}
    labels = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
    exposed = sorted(cfg["ExposedPorts"]) if isinstance(cfg.get("ExposedPorts"), dict) else []
    name = found["image"].decode("utf-8", "replace")
    refs = [normalize_ref(name)] if name and _names_config(root, found.get("target") or {}, image_id) else []
    pod_ns = pod_namespace(found.get("sandbox_ext") or b"")
    if pod_ns is None:
        return Image.unknown(f"containerd has no sandbox record for container {cid[:64]}'s pod")
    return Image(refs=refs, id=image_id, labels=labels, exposed=exposed, namespace=pod_ns)


def pod_namespace(raw: object) -> str | None:
    """The pod's Kubernetes namespace from a CRI sandbox record (io.cri-containerd.sandbox.metadata)."""
    meta = _any_json(raw).get("Metadata")
    config = meta.get("Config") if isinstance(meta, dict) else None
    metadata = config.get("metadata") if isinstance(config, dict) else None
    ns = metadata.get("namespace") if isinstance(metadata, dict) else None
    return ns if isinstance(ns, str) else None


def _is_digest(value: str) -> bool:
    return value.startswith("sha256:") and len(value) == 71 and set(value[7:]) <= _HEX


def _blob(root: str, digest: str) -> bytes:
    """A content-store blob, checked against its digest (a regular file, not a link, bounded)."""
    if not _is_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest[:80]!r}")
    path = os.path.join(root, BLOBS, digest[7:])
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BLOB:
            raise ValueError(f"{path} is not a regular file under {MAX_BLOB} bytes")
        data = os.read(fd, MAX_BLOB + 1)
    finally:
        os.close(fd)
    if sha256(data).hexdigest() != digest[7:]:
        raise ValueError(f"{path} does not match its digest")
    return data


def _names_config(root: str, target: dict, image_id: str) -> bool:
    """Does the image record's target (a manifest or an index of them) lead to this config digest?"""
    digest = (target.get(b"digest") or b"").decode("ascii", "replace")
    try:
        doc = parse(_blob(root, digest).decode("utf-8"), "image manifest")
        if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):  # an index: one level down
            for entry in doc["manifests"][:64]:
                child = entry.get("digest") if isinstance(entry, dict) else None
                if isinstance(child, str) and os.path.exists(os.path.join(root, BLOBS, child.removeprefix("sha256:"))):
                    sub = parse(_blob(root, child).decode("utf-8"), "image manifest")
                    if isinstance(sub, dict) and (sub.get("config") or {}).get("digest") == image_id:
                        return True
            return False
        return isinstance(doc, dict) and isinstance(doc.get("config"), dict) and doc["config"].get("digest") == image_id
    except (OSError, UnicodeDecodeError, OciError, ValueError, AttributeError):
        return False


def _any_json(raw: object) -> dict:
    """The JSON inside a protobuf google.protobuf.Any (field 1 type_url, field 2 value) as containerd stores it."""
    if not isinstance(raw, bytes):
        return {}  # absent, or a bucket where a value belongs
    value, i = b"", 0
    try:
        while i < len(raw):
            key, i = _varint(raw, i)
            if key & 7 != 2:
                return {}
            size, i = _varint(raw, i)
            if key >> 3 == 2:
                value = raw[i:i + size]
            i += size
        doc = parse(value.decode("utf-8"), "containerd record")
    except (IndexError, UnicodeDecodeError, OciError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = raw[i]
        out |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


# -- CRI-O -------------------------------------------------------------------------

def _crio(annotations: dict) -> Image:
    name = annotations[CRIO_NAME]
    labels: dict = {}
    raw = annotations.get(CRIO_LABELS)
    if isinstance(raw, str):
        try:
            parsed = parse(raw, f"annotation {CRIO_LABELS}")
        except OciError:
            return Image.unknown(f"annotation {CRIO_LABELS} is not valid JSON")
        if isinstance(parsed, dict):
            labels = {k: v for k, v in parsed.items() if isinstance(k, str) and isinstance(v, str)}
    image_id = annotations[CRIO_ID] if isinstance(annotations.get(CRIO_ID), str) else ""
    refs = [normalize_ref(name)] if not name.startswith("sha256:") else []
    # The pod's labels are the caller's (a request that may only tighten), never the image's;
    # an annotated name is no pull record, so it lifts no ceiling (Image.pulled stays empty).
    return Image(refs=refs, id=image_id if not image_id.count("@") else "", container_labels=labels)
