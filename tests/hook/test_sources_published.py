"""Published ports from the engines' own records (tiergate/sources/published.py)."""

from __future__ import annotations

import json
import os

from tiergate.sources import published

A, B = "a" * 64, "b" * 64


def _config(cid: str, **extra) -> bytes:
    doc = {"spec": {"ociVersion": "1.0.2-dev", "process": {"args": ["sh"]}}, "id": cid, "name": cid[:5], **extra}
    return json.dumps(doc, separators=(",", ":")).encode()


def _db(tmp_path, *values: bytes):
    """A stand-in for bolt_state.db: values between page-like padding (bolt keeps a value contiguous)."""
    path = tmp_path / "bolt_state.db"
    path.write_bytes(b"\0" * 4096 + b"config".join(v + b"\0" * 64 for v in values) + b"\0" * 4096)
    return str(path)


def test_podman_config_finds_the_container_by_id(tmp_path):
    db = _db(tmp_path, _config(B, newPortMappings=[{"container_port": 1, "protocol": "tcp", "range": 1}]),
             _config(A, newPortMappings=[{"container_port": 8080, "protocol": "tcp", "range": 1}],
                     exposedPorts={"9999": ["tcp"]}))
    doc = published.podman_config(db, A)
    assert doc["id"] == A and doc["newPortMappings"][0]["container_port"] == 8080
    assert published.podman_config(db, "c" * 64) is None


def test_a_callers_string_cannot_pose_as_another_containers_config(tmp_path):
    """A label whose value spells another container's top-level keys is escaped in the JSON: no match."""
    forged = '},"id":"' + A + '","name":"x","newPortMappings":[{"container_port":22,"range":1}]}'
    db = _db(tmp_path, _config(B, labels={"x": forged}))
    assert published.podman_config(db, A) is None


def test_podman_ports_expand_ranges_and_protocols(tmp_path, monkeypatch):
    db = _db(tmp_path, _config(A, newPortMappings=[{"container_port": 8000, "protocol": "tcp,udp", "range": 3},
                                                    {"container_port": "x", "range": 1}],
                               exposedPorts={"5432": ["tcp"], "53": ["udp"]}))
    graph = tmp_path / "graph"
    (graph / "libpod").mkdir(parents=True)
    os.replace(db, graph / "libpod" / "bolt_state.db")
    monkeypatch.setattr(published, "_podman_container", lambda g, d, l: A)
    spec = {"root": {"path": f"{graph}/overlay/{'c' * 64}/merged"}}
    got = published.ports(spec, "podman")
    assert got == ["8000/tcp", "8001/tcp", "8002/tcp", "8000/udp", "8001/udp", "8002/udp", "5432/tcp", "53/udp"]
    assert published.ports(spec, "containerd") == []


def test_docker_ports_from_hostconfig_and_config_v2(tmp_path, monkeypatch):
    d = tmp_path / "containers" / A
    d.mkdir(parents=True)
    (d / "hostconfig.json").write_text(json.dumps({"PortBindings": {"8081/tcp": [{"HostPort": "18081"}]}}))
    (d / "config.v2.json").write_text(json.dumps({"ID": A, "Config": {"ExposedPorts": {"5432/tcp": {}, "8081/tcp": {}}}}))
    for f in ("hostconfig.json", "config.v2.json"):
        os.chmod(d / f, 0o644)
    spec = {"mounts": [{"destination": "/etc/hostname", "source": str(d / "hostname")}]}
    if os.geteuid() == 0:  # the files must be root-owned, as dockerd writes them
        assert sorted(published.ports(spec, "docker")) == ["5432/tcp", "8081/tcp", "8081/tcp"]
    (d / "config.v2.json").write_text(json.dumps({"ID": B, "Config": {"ExposedPorts": {"22/tcp": {}}}}))
    assert "22/tcp" not in published.ports(spec, "docker")  # another container's config is not read
