"""Image sources of the shim: docker's config.v2.json and CRI annotations."""

from __future__ import annotations

import json
import os

import pytest

from tiergate.hook.sources import cri, docker

CID = "a" * 64


@pytest.mark.parametrize("ref, want", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("user/app", "docker.io/user/app:latest"),
    ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
    ("localhost/tiergate-x", "localhost/tiergate-x:latest"),
    ("localhost:5000/a/b:2", "localhost:5000/a/b:2"),
    ("ghcr.io/o/r@sha256:" + "0" * 64, "ghcr.io/o/r@sha256:" + "0" * 64),
    ("registry.example.com:443/x", "registry.example.com:443/x:latest"),
])
def test_normalize_ref(ref, want):
    assert docker.normalize_ref(ref) == want


def _docker_spec(tmp_path, doc=None, cid=CID, mode=0o600):
    d = tmp_path / "data-root" / "containers" / cid
    d.mkdir(parents=True)
    (d / "hostname").write_text("x\n")
    if doc is not None:
        (d / "config.v2.json").write_text(json.dumps(doc))
        os.chmod(d / "config.v2.json", mode)
    return {"mounts": [{"destination": "/etc/hostname", "type": "bind", "source": str(d / "hostname")}]}


def _doc(**config):
    return {"ID": CID, "Image": "sha256:" + "b" * 64,
            "Config": {"Image": "busybox", "Labels": {"io.tiergate.tier": "restricted"}, **config}}


@pytest.mark.skipif(os.geteuid() != 0, reason="config.v2.json must be root-owned")
class TestDocker:
    def test_labels_ref_id(self, tmp_path):
        img = docker.image_for_spec(_docker_spec(tmp_path, _doc(ExposedPorts={"80/tcp": {}})), CID)
        assert img.known and img.refs == ["docker.io/library/busybox:latest"]
        assert img.labels == {"io.tiergate.tier": "restricted"} and img.id == "b" * 64 and img.exposed == ["80/tcp"]

    def test_run_by_id_has_no_ref(self, tmp_path):
        img = docker.image_for_spec(_docker_spec(tmp_path, _doc(Image="bbbbbbbbbbbb")), CID)
        assert img.refs == [] and img.id == "b" * 64

    def test_not_docker(self):
        assert docker.image_for_spec({"mounts": []}) is None

    def test_other_container_is_unknown(self, tmp_path):
        img = docker.image_for_spec(_docker_spec(tmp_path, _doc()), "c" * 64)
        assert not img.known and "not" in img.problem

    def test_missing_or_writable_is_unknown(self, tmp_path):
        assert not docker.image_for_spec(_docker_spec(tmp_path / "1"), CID).known
        img = docker.image_for_spec(_docker_spec(tmp_path / "2", _doc(), mode=0o666), CID)
        assert not img.known and "root-owned" in img.problem

    def test_id_mismatch_in_file(self, tmp_path):
        doc = _doc()
        doc["ID"] = "c" * 64
        assert not docker.image_for_spec(_docker_spec(tmp_path, doc), CID).known

    def test_symlinked_config_is_not_followed(self, tmp_path):
        spec = _docker_spec(tmp_path)
        (tmp_path / "evil.json").write_text(json.dumps(_doc()))
        os.symlink(tmp_path / "evil.json", tmp_path / "data-root" / "containers" / CID / "config.v2.json")
        assert not docker.image_for_spec(spec, CID).known


class TestCri:
    def test_containerd_annotations_are_not_the_record(self, tmp_path):
        """containerd's CRI annotations name an image, but only containerd's own records count:
        without them (a ctr caller sets any annotation) the image is unknown, never guessed."""
        spec = {"annotations": {"io.kubernetes.cri.container-type": "container",
                                "io.kubernetes.cri.image-name": "nginx:1.27"}}
        assert cri.image_for_spec(spec) is None  # not a containerd task: another source decides
        bundle = tmp_path / "state" / "io.containerd.runtime.v2.task" / "k8s.io" / "c1"
        img = cri.image_for_spec(spec, str(bundle), str(tmp_path / "root"))
        assert not img.known and "meta.db" in img.problem

    def test_crio_labels(self):
        img = cri.image_for_spec({"annotations": {
            "io.kubernetes.cri-o.ImageName": "quay.io/x/y:1",
            "io.kubernetes.cri-o.Labels": json.dumps({"io.tiergate.tier": "isolated", "n": 1})}})
        assert img.refs == ["quay.io/x/y:1"] and img.labels == {"io.tiergate.tier": "isolated"}

    def test_bad_labels_unknown(self):
        img = cri.image_for_spec({"annotations": {"io.kubernetes.cri-o.ImageName": "a",
                                                  "io.kubernetes.cri-o.Labels": "{"}})
        assert not img.known

    def test_none(self):
        assert cri.image_for_spec({"annotations": {"x": "y"}}) is None


def test_label_sources_follow_the_policy_order() -> None:
    """The shim asks the sources in the order the policy's label_sources sets; an unlisted source is never asked."""
    from tiergate.hook.runtime import resolve_image

    spec = {"annotations": {"io.kubernetes.cri-o.ImageName": "docker.io/library/nginx:1.27",
                            "io.tiergate.tier": "restricted"}, "root": {"path": "rootfs"}}
    policy = {"label_key": "io.tiergate.tier"}
    image, engine = resolve_image(spec, None, {**policy, "label_sources": ["docker", "cri", "storage", "annotation"]})
    assert engine == "containerd" and image.refs == ["docker.io/library/nginx:1.27"]
    image, engine = resolve_image(spec, None, {**policy, "label_sources": ["annotation", "cri"]})
    assert engine == "runc" and image.refs == [] and image.known
    image, engine = resolve_image(spec, None, {**policy, "label_sources": ["docker", "storage"]})
    assert not image.known and "tried docker, storage" in image.problem
