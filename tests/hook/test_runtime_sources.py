"""Image sources of the shim: docker's config.v2.json and CRI annotations."""

from __future__ import annotations

import json
import os

import pytest

from tiergate.sources import cri, docker

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


def _docker_spec(tmp_path, doc=None, cid=CID, mode=0o600, image_labels=None, repos=None):
    """docker's records as dockerd 20.10 writes them: the container's config.v2.json, the image's
    config (its own labels) in imagedb, and repositories.json (a pull adds `repo@sha256:...`)."""
    d = tmp_path / "data-root" / "containers" / cid
    d.mkdir(parents=True)
    (d / "hostname").write_text("x\n")
    if doc is not None:
        (d / "config.v2.json").write_text(json.dumps(doc))
        os.chmod(d / "config.v2.json", mode)
    store = tmp_path / "data-root" / "image" / "overlay2"
    (store / "imagedb" / "content" / "sha256").mkdir(parents=True)
    labels = {"io.tiergate.tier": "restricted"} if image_labels is None else image_labels
    (store / "imagedb" / "content" / "sha256" / ("b" * 64)).write_text(json.dumps({"config": {"Labels": labels}}))
    image = "sha256:" + "b" * 64
    repos = {"busybox": {"busybox:latest": image}} if repos is None else repos
    (store / "repositories.json").write_text(json.dumps({"Repositories": repos}))
    for f in (store / "repositories.json", store / "imagedb" / "content" / "sha256" / ("b" * 64)):
        os.chmod(f, 0o600)
    return {"mounts": [{"destination": "/etc/hostname", "type": "bind", "source": str(d / "hostname")}]}


def _doc(**config):
    return {"ID": CID, "Image": "sha256:" + "b" * 64, "Driver": "overlay2",
            "Config": {"Image": "busybox", "Labels": {"io.tiergate.tier": "restricted"}, **config}}


@pytest.mark.skipif(os.geteuid() != 0, reason="config.v2.json must be root-owned")
class TestDocker:
    def test_labels_ref_id(self, tmp_path):
        img = docker.image_for_spec(_docker_spec(tmp_path, _doc(ExposedPorts={"80/tcp": {}})), CID)
        assert img.known and img.refs == ["docker.io/library/busybox:latest"]
        assert img.labels == {"io.tiergate.tier": "restricted"} and img.id == "b" * 64 and img.exposed == ["80/tcp"]

    def test_image_labels_are_the_images_own_and_container_labels_the_callers(self, tmp_path):
        """docker merges `--label` into Config.Labels: the image's own come from its config in imagedb."""
        doc = _doc(Labels={"io.tiergate.tier": "baseline", "x": "y"})
        img = docker.image_for_spec(_docker_spec(tmp_path, doc), CID)
        assert img.labels == {"io.tiergate.tier": "restricted"}
        assert img.container_labels == {"io.tiergate.tier": "baseline", "x": "y"}

    def test_a_local_tag_is_no_pull(self, tmp_path):
        """Only a repository with a digest entry for this image counts as pulled (docker tag adds none)."""
        img = docker.image_for_spec(_docker_spec(tmp_path, _doc()), CID)
        assert img.refs == ["docker.io/library/busybox:latest"] and img.pulled == []

    @pytest.mark.parametrize("repo", ["busybox", "docker.io/library/busybox"])
    def test_a_pulled_name(self, tmp_path, repo):
        image = "sha256:" + "b" * 64
        repos = {repo: {f"{repo}:latest": image, f"{repo}@sha256:" + "d" * 64: image}}
        img = docker.image_for_spec(_docker_spec(tmp_path, _doc(), repos=repos), CID)
        assert img.pulled == ["docker.io/library/busybox:latest"]

    def test_a_digest_of_another_image_is_no_pull(self, tmp_path):
        repos = {"busybox": {"busybox:latest": "sha256:" + "b" * 64, "busybox@sha256:" + "d" * 64: "sha256:" + "e" * 64}}
        img = docker.image_for_spec(_docker_spec(tmp_path, _doc(), repos=repos), CID)
        assert img.pulled == []

    def test_unreadable_image_record_is_unknown(self, tmp_path):
        spec = _docker_spec(tmp_path, _doc())
        os.chmod(tmp_path / "data-root" / "image" / "overlay2" / "imagedb" / "content" / "sha256" / ("b" * 64), 0o666)
        img = docker.image_for_spec(spec, CID)
        assert not img.known and "root-owned" in img.problem

    def test_a_writable_repositories_json_proves_no_pull(self, tmp_path):
        image = "sha256:" + "b" * 64
        repos = {"busybox": {"busybox:latest": image, "busybox@sha256:" + "d" * 64: image}}
        spec = _docker_spec(tmp_path, _doc(), repos=repos)
        os.chmod(tmp_path / "data-root" / "image" / "overlay2" / "repositories.json", 0o666)
        img = docker.image_for_spec(spec, CID)
        assert img.known and img.pulled == []

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
        assert img.refs == ["quay.io/x/y:1"] and img.pulled == [] and img.labels == {}
        assert img.container_labels == {"io.tiergate.tier": "isolated"}  # the pod's: a request, not the image's

    def test_bad_labels_unknown(self):
        img = cri.image_for_spec({"annotations": {"io.kubernetes.cri-o.ImageName": "a",
                                                  "io.kubernetes.cri-o.Labels": "{"}})
        assert not img.known

    def test_none(self):
        assert cri.image_for_spec({"annotations": {"x": "y"}}) is None


def test_label_sources_follow_the_policy_order() -> None:
    """The shim asks the sources in the order the policy's label_sources sets; an unlisted source is never asked."""
    from tiergate.shim.runtime import resolve_image

    spec = {"annotations": {"io.kubernetes.cri-o.ImageName": "docker.io/library/nginx:1.27",
                            "io.tiergate.tier": "restricted"}, "root": {"path": "rootfs"}}
    policy = {"label_key": "io.tiergate.tier"}
    image, engine = resolve_image(spec, None, {**policy, "label_sources": ["docker", "cri", "storage", "annotation"]})
    assert engine == "containerd" and image.refs == ["docker.io/library/nginx:1.27"]
    image, engine = resolve_image(spec, None, {**policy, "label_sources": ["annotation", "cri"]})
    assert engine == "runc" and image.refs == [] and image.known
    image, engine = resolve_image(spec, None, {**policy, "label_sources": ["docker", "storage"]})
    assert not image.known and "tried docker, storage" in image.problem


def test_engine_records_come_before_spec_annotations(tmp_path) -> None:
    """A caller-set CRI annotation never outranks containers-storage (podman --annotation under the shim)."""
    from helpers import make_storage

    from tiergate.shim.runtime import resolve_image

    root = make_storage(tmp_path, labels={"io.tiergate.tier": "restricted"}, names=("localhost/plain:latest",))
    spec = {"annotations": {"io.kubernetes.cri.image-name": "localhost/tiergate-x"}, "root": {"path": root}}
    policy = {"label_key": "io.tiergate.tier", "label_sources": ["cri", "annotation", "storage", "docker"]}
    image, engine = resolve_image(spec, None, policy)
    assert engine == "podman-runtime" and image.refs == ["localhost/plain:latest"]
    assert image.labels == {"io.tiergate.tier": "restricted"}


def test_only_the_source_that_claims_the_bundle_is_imported(tmp_path) -> None:
    """Issue 20: importing an image source costs a create ~0.4 M instructions; a bundle loads only
    the one whose own first test (sources.claims) recognises it, and a bare runc bundle none."""
    import subprocess
    import sys

    hostname = tmp_path / "data-root" / "containers" / CID / "hostname"
    bundles = {
        "runc": {"annotations": {"io.tiergate.tier": "restricted"}, "root": {"path": "rootfs"}},
        "docker": {"mounts": [{"destination": "/etc/hostname", "source": str(hostname)}], "root": {"path": "rootfs"}},
        "cri": {"annotations": {"io.kubernetes.cri-o.ImageName": "docker.io/library/nginx:1"}},
        "storage": {"root": {"path": f"/var/lib/containers/storage/overlay/{CID}/merged"}},
    }
    code = ("import json, sys\nfrom tiergate.shim.runtime import resolve_image\n"
            "resolve_image(json.loads(sys.argv[1]), None, {'label_key': 'io.tiergate.tier'})\n"
            "print(sorted(m for m in sys.modules if m.startswith('tiergate.sources.')))\n")
    loaded = {name: json.loads(subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True,
                                              text=True, check=True).stdout.replace("'", '"'))
              for name, spec in bundles.items()}
    assert loaded == {"runc": ["tiergate.sources.claims"],
                      "docker": ["tiergate.sources.claims", "tiergate.sources.docker"],
                      "cri": ["tiergate.sources.claims", "tiergate.sources.cri", "tiergate.sources.docker"],
                      "storage": ["tiergate.sources.claims", "tiergate.sources.storage"]}
