"""tiergate.sources.storage: image facts from a containers-storage tree; never raises."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import IMAGE, LAYER, blob_name, make_storage
from tiergate.sources import storage


def test_labels_names_digest_and_ports_are_found(tmp_path: Path) -> None:
    """A well-formed tree yields the image's refs, id, digest, labels and exposed ports."""
    root = make_storage(tmp_path, labels={"io.tiergate.tier": "restricted", "maintainer": "x"},
                        exposed={"80/tcp": {}, "53/udp": {}})
    image = storage.image_for_rootfs(root)
    assert image.known and image.problem == ""
    assert image.refs == ["docker.io/library/nginx:1.27"]
    assert image.id == IMAGE and image.digest == "9" * 64
    assert image.labels == {"io.tiergate.tier": "restricted", "maintainer": "x"}
    assert sorted(image.exposed) == ["53/udp", "80/tcp"]


@pytest.mark.parametrize("suffix", ["/merged", "/diff", "", "/merged/"])
def test_rootfs_path_shapes(tmp_path: Path, suffix: str) -> None:
    """merged, diff, the layer dir itself and a trailing slash all lead to the same container."""
    make_storage(tmp_path, labels={"io.tiergate.tier": "isolated"})
    image = storage.image_for_rootfs(f"{tmp_path}/overlay/{LAYER}{suffix}")
    assert image.labels == {"io.tiergate.tier": "isolated"}


def test_non_string_label_values_are_dropped(tmp_path: Path) -> None:
    """Only string label values are labels; a list or number cannot ask for a tier."""
    root = make_storage(tmp_path)
    blob = tmp_path / "overlay-images" / IMAGE / blob_name(IMAGE)
    blob.write_text(json.dumps({"config": {"Labels": {"io.tiergate.tier": ["privileged"], "n": 1, "ok": "y"}}}))
    assert storage.image_for_rootfs(root).labels == {"ok": "y"}


def test_container_without_image_has_no_labels(tmp_path: Path) -> None:
    """A container made from a bare rootfs (no image) is known, with no labels: the default tier applies."""
    root = make_storage(tmp_path)
    (tmp_path / "overlay-containers" / "containers.json").write_text(json.dumps([{"id": "c", "layer": LAYER, "image": ""}]))
    image = storage.image_for_rootfs(root)
    assert image.known and image.labels == {} and image.refs == []


def _write(tmp_path: Path, rel: str, data: bytes) -> None:
    (tmp_path / rel).write_bytes(data)


CONTAINERS = "overlay-containers/containers.json"
IMAGES = "overlay-images/images.json"
BLOB = f"overlay-images/{IMAGE}/{blob_name(IMAGE)}"

BROKEN = [
    ("containers.json missing", lambda p: (p / CONTAINERS).unlink(), "cannot open container metadata"),
    ("images.json missing", lambda p: (p / IMAGES).unlink(), "cannot open image metadata"),
    ("config blob missing", lambda p: (p / BLOB).unlink(), "cannot open image config"),
    ("containers.json half-written", lambda p: _write(p, CONTAINERS, b'[{"id": "x", "layer": "2d17'), "is not valid JSON"),
    ("images.json empty", lambda p: _write(p, IMAGES, b""), "is not valid JSON"),
    ("config blob truncated", lambda p: _write(p, BLOB, b'{"config": {"Labels": {"io.tiergate.tier": "priv'), "is not valid JSON"),
    ("containers.json binary garbage", lambda p: _write(p, CONTAINERS, os.urandom(512)), "is not valid JSON"),
    ("containers.json an object", lambda p: _write(p, CONTAINERS, b'{"containers": []}'), "containers.json is not a JSON array"),
    ("images.json null", lambda p: _write(p, IMAGES, b"null"), "images.json is not a JSON array"),
    ("containers.json deeply nested", lambda p: _write(p, CONTAINERS, b"[" * 200_000 + b"]" * 200_000), "is not valid JSON"),
    ("layer not used by any container", lambda p: _write(p, CONTAINERS, b"[]"), f"no container uses layer {LAYER[:12]}"),
    ("image not in images.json", lambda p: _write(p, IMAGES, b'[{"id": "other"}]'), f"image {IMAGE[:12]} is not in images.json"),
    ("containers.json a symlink", lambda p: ((p / CONTAINERS).rename(p / "real.json"), (p / CONTAINERS).symlink_to(p / "real.json")),
     "cannot open container metadata"),
    ("config blob a symlink to /etc/shadow", lambda p: ((p / BLOB).unlink(), (p / BLOB).symlink_to("/etc/shadow")),
     "cannot open image config"),
]


@pytest.mark.parametrize(("breakit", "problem"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_metadata_is_an_unknown_image_with_a_reason(tmp_path: Path, breakit, problem: str) -> None:
    """Missing, corrupt, half-written, symlinked metadata: Image.unknown naming the problem, never an exception."""
    root = make_storage(tmp_path, labels={"io.tiergate.tier": "privileged"})
    breakit(tmp_path)
    image = storage.image_for_rootfs(root)
    assert not image.known and image.labels == {}
    assert problem in image.problem
    assert "\n" not in image.problem and len(image.problem) < 500


def test_huge_metadata_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A metadata file over the cap is not parsed: unknown image (cap lowered to keep the test small)."""
    monkeypatch.setattr(storage, "MAX_METADATA", 4096)
    root = make_storage(tmp_path)
    _write(tmp_path, IMAGES, b"[" + b'{"id": "x"},' * 1000 + b'{"id": "y"}]')
    image = storage.image_for_rootfs(root)
    assert not image.known and image.problem.endswith("is larger than 4096 bytes")


@pytest.mark.parametrize("root", [
    "/", "rootfs", "/tmp/rootfs", "/var/lib/containers/storage/overlay/notahexlayer/merged",
    "/var/lib/containers/storage/ext4/" + LAYER + "/merged", "", "\x00", "/x/overlay/" + LAYER[:-1] + "/merged",
], ids=["slash", "relative", "tmp", "bad layer", "unknown driver", "empty", "nul", "short layer"])
def test_rootfs_outside_storage_is_unknown(root: str) -> None:
    """A root.path that is not <graphroot>/<driver>/<layer>[/merged] is not guessed at."""
    image = storage.image_for_rootfs(root)
    assert not image.known and "is not in containers-storage" in image.problem


def test_long_rootfs_path_is_cut_in_the_problem() -> None:
    image = storage.image_for_rootfs("/x" * 10_000)
    assert not image.known and len(image.problem) < 300


def test_non_string_image_id_is_an_unknown_image(tmp_path: Path) -> None:
    """containers.json naming a non-string image id is corrupt metadata: unknown, no exception."""
    root = make_storage(tmp_path)
    _write(tmp_path, CONTAINERS, json.dumps([{"id": "c", "layer": LAYER, "image": 12345}]).encode())
    image = storage.image_for_rootfs(root)
    assert not image.known


def test_metadata_path_that_is_a_directory_is_an_unknown_image(tmp_path: Path) -> None:
    """containers.json replaced by a directory: unknown, no exception."""
    root = make_storage(tmp_path)
    (tmp_path / CONTAINERS).unlink()
    (tmp_path / CONTAINERS).mkdir()
    image = storage.image_for_rootfs(root)
    assert not image.known


def test_split_root() -> None:
    """split_root gives (graphroot, driver, layer) or None."""
    assert storage.split_root(f"/var/lib/containers/storage/overlay/{LAYER}/merged") == (
        "/var/lib/containers/storage", "overlay", LAYER)
    assert storage.split_root(f"/home/u/.local/share/containers/storage/vfs/dir/{LAYER}") == (
        "/home/u/.local/share/containers/storage", "vfs", LAYER)
    assert storage.split_root("/tmp/rootfs") is None
