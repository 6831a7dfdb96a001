"""Issue 16: `ingress = "published"` opens what the caller published, read from the engine's records.

The `database` tier (shipped policy: ingress published, no egress) serves on
several ports; a peer in the test netns S connects to each. Open: the image's
EXPOSE (5432), `-p` (podman: its bolt database; docker: hostconfig.json) and
`--expose`. Closed: a port nobody published, and one named only in a
caller-set `io.tiergate.ports` annotation. The control (untouched by tiergate)
is reachable on every port.
"""

from __future__ import annotations

import secrets

import pytest

from roles_env import role_env_fixture, wait_for
from test_metadata import _docker_run, docker_peers  # noqa: F401 - the docker peers fixture

env = role_env_fixture("test_published_ports")

PORTS = {"5432 (EXPOSE)": 5432, "8081 (-p)": 8081, "8083 (--expose)": 8083, "8082 (unpublished)": 8082,
         "8084 (annotation only)": 8084}
OPEN = {"5432 (EXPOSE)", "8081 (-p)", "8083 (--expose)"}
SERVE = " && ".join(f"httpd -p {p} -h /www" for p in PORTS.values())


@pytest.mark.podman
def test_podman_published_ports_open_and_nothing_else(env):
    p = env.peers
    flags = ["-p", "18081:8081", "--expose", "8083", "--annotation", "io.tiergate.ports=8084/tcp"]
    got = {}
    for image in ("database", "control-db"):
        ip = p.next_ip()
        got[image] = env.serving(image, ip, SERVE, {}, {k: f"http://{ip}:{port}/" for k, port in PORTS.items()},
                                 args=flags)
        print(f"\n{image}: {got[image]}")
    assert env.tier_granted("database") == {"database"}
    assert got["control-db"] == {f"in {k}": True for k in PORTS}
    assert got["database"] == {f"in {k}": k in OPEN for k in PORTS}


@pytest.mark.docker
def test_docker_published_ports_open_and_nothing_else(docker_peers):  # noqa: F811
    d = docker_peers
    peers = d["peers"]
    serve = " && ".join(f"httpd -p {p} -h /etc" for p in PORTS.values()) + " && echo UP && exec sleep 60"
    flags = ["-p", "18081:8081", "--expose", "8083"]
    got = {}
    for key, engine, runtime in (("tiergate", d["tg"], "tiergate"), ("control", d["control"], None)):
        ip = f"{peers.net4}.{230 + len(got)}"
        name = f"tg-pp-{secrets.token_hex(4)}"
        proc = _docker_run(d, engine, d["database_image"], serve, "-d", "--name", name, "--ip", ip, *flags,
                           runtime=runtime)
        assert proc.returncode == 0, proc.stderr[-500:]
        try:
            wait_for(lambda: "UP" in engine.docker("logs", name, timeout=20).stdout, 20, "servers")  # noqa: B023 (called now)
            got[key] = {k: peers.http_from_peers(f"http://{ip}:{port}/hostname") for k, port in PORTS.items()}
        finally:
            engine.docker("rm", "-f", name, timeout=60)
        print(f"\n{key}: {got[key]}")
    assert got["control"] == dict.fromkeys(PORTS, True)
    assert got["tiergate"] == {k: k in OPEN for k in PORTS}
