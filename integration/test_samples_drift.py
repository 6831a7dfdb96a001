"""The engine samples in tests/data/samples still look like what the engines here write.

The unit tests read the stored samples (the repository stands alone); this
re-captures them from the real engines where that is cheap (`runc spec`;
podman's precreate stdin and createRuntime state through capture hooks, with
the flags the samples were taken with: `podman run --rm --network none IMAGE
/bin/true`) and compares their SHAPE: every JSON path with its value's type,
list items merged, map-like objects (annotations, sysctl) as `{}`. Values
(ids, paths, timestamps) are volatile and not compared. A difference means an
engine update changed what tiergate reads: refresh the sample and check the
code that reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import harness
from harness import run_cmd
from tiergate_fixtures import REPO

SAMPLES = REPO / "tests" / "data" / "samples"
MAPS = {"annotations", "sysctl"}  # objects whose keys are data, not structure


def shape(value, path: str = "$") -> set[str]:
    """`path type` for every node: '$.process.args[] str', '$.annotations{} str', ..."""
    if isinstance(value, dict):
        out = {f"{path} object"}
        for key, item in value.items():
            out |= shape(item, f"{path}{{}}" if path.rsplit(".", 1)[-1] in MAPS else f"{path}.{key}")
        return out
    if isinstance(value, list):
        out = {f"{path} array"}
        for item in value:
            out |= shape(item, f"{path}[]")
        return out
    return {f"{path} {type(value).__name__}"}


def drift(stored: Path, captured: dict) -> str:
    """'' when the shapes match, else the paths only one side has."""
    old, new = shape(json.loads(stored.read_bytes())), shape(captured)
    lines = [f"  only in the stored {stored.name}: {p}" for p in sorted(old - new)]
    lines += [f"  only in what the engine wrote now: {p}" for p in sorted(new - old)]
    return "\n".join(lines)


def test_shape_sees_structure_not_values() -> None:
    a = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "user": {"uid": 0}}, "annotations": {"x": "1"}}
    b = {"ociVersion": "1.1.0", "process": {"args": ["a", "b"], "user": {"uid": 1000}}, "annotations": {"y": "2"}}
    assert shape(a) == shape(b)
    assert shape(a) != shape({**a, "process": {"args": ["sh"], "user": {"uid": "0"}}})
    assert "$.process.env array" in shape({**a, "process": {**a["process"], "env": []}}) - shape(a)


def test_runc_spec_matches_the_sample(tmp_path: Path) -> None:
    runc = harness.require_binary("runc")
    run_cmd([runc, "spec"], cwd=tmp_path, check=True)
    found = drift(SAMPLES / "runc-1.1-spec-default.json", json.loads((tmp_path / "config.json").read_text()))
    assert not found, f"`runc spec` drifted from the stored sample:\n{found}"


def test_podman_hook_inputs_match_the_samples(podman, tmp_path: Path) -> None:
    """A precreate hook that tees its stdin (and hands it back unchanged), a createRuntime hook that saves it."""
    capture = {"precreate": tmp_path / "precreate.json", "createRuntime": tmp_path / "createRuntime.json"}
    tee = {"precreate": f"/usr/bin/tee {capture['precreate']}", "createRuntime": f"/bin/cat > {capture['createRuntime']}"}
    for stage, command in tee.items():
        (podman.hooks_dir / f"50-capture-{stage}.json").write_text(json.dumps({
            "version": "1.0.0", "hook": {"path": "/bin/sh", "args": ["sh", "-c", command]},
            "when": {"always": True}, "stages": [stage]}))
    image = f"localhost/tiergate-it-drift-{tmp_path.name.lower()}"
    podman.import_image(image)
    try:
        podman.run(image, "/bin/true", check=True)
    finally:
        podman.rmi(image)
    found = drift(SAMPLES / "podman-4.3-precreate-stdin.json", json.loads(capture["precreate"].read_text()))
    found += drift(SAMPLES / "podman-4.3-createRuntime-state.json", json.loads(capture["createRuntime"].read_text()))
    assert not found, f"podman's hook inputs drifted from the stored samples:\n{found}"


def test_docker_bundle_config_matches_the_sample(docker_factory, it_dir: Path, tmp_path: Path) -> None:
    """A runtime wrapper copies the bundle's config.json at `create`, then execs runc."""
    runc = harness.require_binary("runc")
    captured = tmp_path / "config.json"
    wrapper = it_dir / f"capture-runtime-{tmp_path.name}"
    wrapper.write_text(f'#!/bin/sh\nprev=\nfor a do\n  [ "$prev" = --bundle ] && cp "$a/config.json" {captured}\n'
                       f'  prev=$a\ndone\nexec {runc} "$@"\n')
    wrapper.chmod(0o755)
    engine = docker_factory(runtimes={"capture": str(wrapper)})
    image = f"tiergate-it-drift-{tmp_path.name.lower()}"
    engine.import_image(image)
    try:
        engine.run(image, "/bin/true", args=["--runtime", "capture"], check=True, timeout=120)
    finally:
        engine.rmi(image)
    found = drift(SAMPLES / "docker-20.10-bundle-config.json", json.loads(captured.read_text()))
    assert not found, f"docker's bundle config.json drifted from the stored sample:\n{found}"
