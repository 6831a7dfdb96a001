"""deploy/: the manifests are valid Kubernetes objects (offline schemas) and agree with the code."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tiergate.engines import containerd

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
K8S_VERSION = "1.30.0"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def script(path: Path) -> str:
    (ds,) = [d for d in docs(path) if d["kind"] == "DaemonSet"]
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return "\n".join(container["args"])


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_is_valid(path):
    for doc in docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_invalid_manifest_is_caught():
    """The check can fail: a DaemonSet without a selector is refused."""
    (ds,) = [d for d in docs(DEPLOY / "install.yaml") if d["kind"] == "DaemonSet"]
    del ds["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def test_runtimeclass_names_the_installed_handler():
    (rc,) = docs(DEPLOY / "runtimeclass.yaml")
    assert rc["handler"] == containerd.NAME
    (ds,) = [d for d in docs(DEPLOY / "install.yaml") if d["kind"] == "DaemonSet"]
    assert rc["scheduling"]["nodeSelector"].items() <= ds["spec"]["template"]["spec"]["nodeSelector"].items()


def test_install_and_uninstall_agree():
    install, uninstall = script(DEPLOY / "install.yaml"), script(DEPLOY / "uninstall.yaml")
    assert "install --engine containerd" in install and "uninstall --engine containerd" in uninstall
    for text in (install, uninstall):
        assert "--bin-dir /opt/tiergate/bin" in text and '--config "$CONTAINERD_CONFIG"' in text
        assert "/opt/tiergate/dist/bin/tiergate-cli" in text
    containerfile = (DEPLOY / "Containerfile").read_text()
    assert "bin/tiergate-cli" in containerfile and "/opt/tiergate/VERSION" in containerfile
    assert "policy check" in install  # a ConfigMap update is checked before it is used
    (ds,) = [d for d in docs(DEPLOY / "install.yaml") if d["kind"] == "DaemonSet"]
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == "tiergate-policy"
