"""Image facts for Kubernetes containers, from the annotations containerd's CRI plugin and CRI-O write.

containerd (CRI): io.kubernetes.cri.image-name (the reference the pod asked
for). CRI-O: io.kubernetes.cri-o.ImageName, io.kubernetes.cri-o.ImageRef (the
image id) and io.kubernetes.cri-o.Labels (the container's and pod's labels,
JSON). Neither carries the image's own labels: a pod asks for a tier with a
pod annotation (which both engines copy into the spec) or a pod label, within
the ceiling the image reference earns. These annotations are the engine's
word: whoever can set them can call the engine's API, i.e. is root.
Standard library only.
"""

from __future__ import annotations

from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import parse

from ..decide import Image
from .docker import normalize_ref

IMAGE_NAME = ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName")
IMAGE_ID = "io.kubernetes.cri-o.ImageRef"
LABELS = "io.kubernetes.cri-o.Labels"


def image_for_spec(spec: dict) -> Image | None:
    """The image a CRI engine named; None when the spec carries no CRI image annotation."""
    annotations = spec.get("annotations") if isinstance(spec.get("annotations"), dict) else {}
    name = next((annotations[k] for k in IMAGE_NAME if isinstance(annotations.get(k), str) and annotations[k]), None)
    if name is None:
        return None
    labels: dict = {}
    raw = annotations.get(LABELS)
    if isinstance(raw, str):
        try:
            parsed = parse(raw, f"annotation {LABELS}")
        except OciError:
            return Image.unknown(f"annotation {LABELS} is not valid JSON")
        if isinstance(parsed, dict):
            labels = {k: v for k, v in parsed.items() if isinstance(k, str) and isinstance(v, str)}
    image_id = annotations.get(IMAGE_ID) if isinstance(annotations.get(IMAGE_ID), str) else ""
    refs = [normalize_ref(name)] if not name.startswith("sha256:") else []
    return Image(refs=refs, id=image_id if not image_id.count("@") else "", labels=labels)
