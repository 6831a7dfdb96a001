"""containerd's CRI records read by the shim: a bbolt snapshot and the content store (tiergate/sources)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tiergate.core.decide import decide
from tiergate.sources import bolt, cri

from helpers import BoltWriter, containerd_any, shipped_policy

CID, SID = "c" * 64, "s" * 64
NAME = b"registry.example/app:1"


def blob(root, doc: dict) -> str:
    data = json.dumps(doc).encode()
    digest = hashlib.sha256(data).hexdigest()
    d = root / cri.BLOBS
    d.mkdir(parents=True, exist_ok=True)
    (d / digest).write_bytes(data)
    return "sha256:" + digest


def node(tmp_path, labels=None, *, retag: bool = False, namespace="shop", extra_keys: int = 0):
    """A containerd root with one pod (sandbox SID, container CID running NAME) and the bundle dir of `which`."""
    root = tmp_path / "root"
    config = blob(root, {"config": {"Labels": labels or {}, "ExposedPorts": {"80/tcp": {}}}})
    other = blob(root, {"config": {"Labels": {}}})
    manifest = blob(root, {"config": {"digest": other if retag else config}, "layers": []})
    sandbox = containerd_any("github.com/containerd/cri/pkg/store/sandbox/Metadata",
                             {"Version": "v1", "Metadata": {"ID": SID, "Config": {"metadata": {"name": "p", "namespace": namespace}}}})
    container = containerd_any("github.com/containerd/cri/pkg/store/container/Metadata",
                               {"Version": "v1", "Metadata": {"ID": CID, "SandboxID": SID, "ImageRef": config}})
    containers = {SID.encode(): {b"image": b"pause:1", b"extensions": {cri.SANDBOX_EXT: sandbox}},
                  CID.encode(): {b"image": NAME, b"snapshotKey": CID.encode(), b"extensions": {cri.CONTAINER_EXT: container}}}
    for i in range(extra_keys):  # enough records for branch pages
        containers[f"{i:064x}".encode()] = {b"image": b"x", b"snapshotKey": b"y"}
    tree = {b"v1": {b"version": b"\x06", b"k8s.io": {
        b"containers": containers,
        b"images": {NAME: {b"target": {b"digest": manifest.encode(), b"mediatype": b"m"}}}}}}
    db = root / cri.META_DB
    db.parent.mkdir(parents=True)
    BoltWriter().write(db, tree)
    return root, config


def bundle(tmp_path, cid: str) -> str:
    return str(tmp_path / "state" / cri.TASKS / "k8s.io" / cid)


SPEC = {"annotations": {cri.CONTAINER_TYPE: "container"}}


@pytest.mark.parametrize("extra_keys", [0, 40])
def test_container_image_from_records(tmp_path, extra_keys):
    root, config = node(tmp_path, {"io.tiergate.tier": "restricted"}, extra_keys=extra_keys)
    img = cri.image_for_spec(SPEC, bundle(tmp_path, CID), str(root))
    assert img.known, img.problem
    assert img.labels == {"io.tiergate.tier": "restricted"} and img.id == config[7:]
    assert img.refs == [NAME.decode()] and img.namespace == "shop" and not img.sandbox and img.exposed == ["80/tcp"]


def test_sandbox_has_a_namespace_and_no_image(tmp_path):
    root, _ = node(tmp_path, namespace="kube-system")
    img = cri.image_for_spec({"annotations": {cri.CONTAINER_TYPE: "sandbox"}}, bundle(tmp_path, SID), str(root))
    assert img.known and img.sandbox and img.namespace == "kube-system" and img.refs == []


def test_retagged_name_earns_nothing(tmp_path):
    """The name now leads to another image: labels still come from the image CRI resolved, the name does not count."""
    root, _ = node(tmp_path, {"io.tiergate.tier": "restricted"}, retag=True)
    img = cri.image_for_spec(SPEC, bundle(tmp_path, CID), str(root))
    assert img.known and img.refs == [] and img.labels == {"io.tiergate.tier": "restricted"}


def test_tampered_blob_is_unknown(tmp_path):
    root, config = node(tmp_path, {"io.tiergate.tier": "privileged"})
    (root / cri.BLOBS / config[7:]).write_text(json.dumps({"config": {"Labels": {"io.tiergate.tier": "x"}}}))
    img = cri.image_for_spec(SPEC, bundle(tmp_path, CID), str(root))
    assert not img.known and "digest" in img.problem


@pytest.mark.parametrize("case", ["no record", "no root"])
def test_unresolvable_is_unknown_never_a_guess(tmp_path, case):
    root, _ = node(tmp_path)
    where = {"no record": bundle(tmp_path, "d" * 64), "no root": bundle(tmp_path, CID)}[case]
    img = cri.image_for_spec(SPEC, where, str(tmp_path / "elsewhere") if case == "no root" else str(root))
    assert not img.known and img.problem


def test_annotation_outside_containerd_claims_nothing(tmp_path):
    """podman-runtime or runc with a caller-set CRI annotation: the next label source decides."""
    assert cri.image_for_spec(SPEC, str(tmp_path / "overlay-containers" / CID / "userdata")) is None


def test_torn_newest_meta_falls_back_to_the_other(tmp_path):
    w = BoltWriter()
    db = tmp_path / "meta.db"
    w.write(db, {b"b": {b"k": b"v"}}, txid=9)
    raw = bytearray(db.read_bytes())
    raw[0:4096] = w.meta(0, 0, 9, good=False).ljust(4096, b"\0")  # page 0 torn: page 1 (txid 8) counts
    db.write_bytes(bytes(raw))
    snap = bolt.Snapshot(os.open(db, os.O_RDONLY))
    assert snap.txid == 8


def test_a_commit_during_the_walk_is_retried_then_refused(tmp_path):
    db = tmp_path / "meta.db"
    BoltWriter().write(db, {b"b": {b"k": b"v"}}, txid=5)
    seen = []

    def commit_meanwhile(snap):
        seen.append(snap.txid)
        BoltWriter().write(db, {b"b": {b"k": b"v2"}}, txid=snap.txid + 2)  # a new newest meta
        return snap.get(b"b", b"k")

    with pytest.raises(bolt.BoltError, match="kept changing"):
        bolt.read(str(db), commit_meanwhile, attempts=3)
    assert seen == [5, 7, 9]
    assert bolt.read(str(db), lambda s: s.get(b"b", b"k")) == b"v2"


def test_not_bolt(tmp_path):
    (tmp_path / "x").write_bytes(b"\0" * 8192)
    with pytest.raises(bolt.BoltError):
        bolt.read(str(tmp_path / "x"), lambda s: None)


def _policy(**extra):
    p = shipped_policy()
    p.update(extra)
    return p


def test_sandbox_tier_namespace_ceiling_and_floor(tmp_path):
    from tiergate.core.decide import Image

    policy = _policy(namespaces={"kube-system": {"max_tier": "privileged", "min_tier": None, "over_ceiling": "clamp"},
                                 "shop": {"max_tier": None, "min_tier": "restricted", "over_ceiling": "clamp"}})
    sandbox = Image(sandbox=True, namespace="default")
    assert decide(policy, sandbox).tier == "baseline"  # no annotation: default_tier, never refused
    assert decide(policy, sandbox, {"io.tiergate.tier": "privileged"}).tier == "baseline"  # default ceiling
    assert decide(_policy(sandbox_tier="restricted"), sandbox, {"io.tiergate.tier": "baseline"}).tier == "restricted"
    system = Image(sandbox=True, namespace="kube-system")
    assert decide(policy, system, {"io.tiergate.tier": "privileged"}).tier == "privileged"
    shop = Image(refs=["localhost/tiergate-x:1"], labels={"io.tiergate.tier": "baseline"}, namespace="shop")
    d = decide(policy, shop)
    assert d.tier == "restricted" and "floor of namespace shop" in d.why
    assert decide(policy, Image(refs=["localhost/tiergate-x:1"], namespace="default")).tier == "baseline"


def test_malformed_records_are_unknown(tmp_path):
    """Extensions that are buckets or not JSON: an unknown image with a reason, not an internal error."""
    root = tmp_path / "root"
    db = root / cri.META_DB
    db.parent.mkdir(parents=True)
    BoltWriter().write(db, {b"v1": {b"k8s.io": {b"containers": {
        CID.encode(): {b"image": b"x", b"extensions": {cri.CONTAINER_EXT: {b"odd": b"bucket"}}},
        SID.encode(): {b"image": b"p", b"extensions": {cri.SANDBOX_EXT: b"\x0a\x01x\x12\x03{{{"}}}}}})
    for cid in (CID, SID):
        img = cri.image_for_spec(SPEC, bundle(tmp_path, cid), str(root))
        assert not img.known and img.problem
