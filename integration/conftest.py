"""Fixtures for tiergate's integration tests (real engines, as root).

Tests import helpers with ``from harness import ...``: this file puts
integration/ on sys.path. All fixtures are self-cleaning; the session ones
share one temporary directory, removed at the end.

Session fixtures:  it_dir, busybox_rootfs, podman_env, runc_env, docker_factory, docker
Function fixtures: podman (podman_env, hooks dir emptied and containers removed
                   after each test), runc_bundle (factory of RuncBundle)

Engines are skipped, with the reason, only when not root or when a binary is
missing; with TIERGATE_IT_STRICT=1 (run-tests.sh) those fail instead.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

MAX_DOCKER_DAEMONS = 16  # one per distinct runtime set; each is a containerd + dockerd pair (~150 MB)


def pytest_configure(config):
    for name, what in (("podman", "runs containers with a scratch podman"),
                       ("runc", "runs OCI bundles with runc directly"),
                       ("docker", "starts a private containerd + dockerd")):
        config.addinivalue_line("markers", f"{name}: {what}")


@pytest.fixture(scope="session", autouse=True)
def host_footprint(it_dir, tmp_path_factory):
    """Remove, at session end, shared paths the engines created and stop the warm helpers the
    session's hook launchers started (see HostFootprint)."""
    footprint = harness.HostFootprint(warm_roots=[str(it_dir), str(tmp_path_factory.getbasetemp())],
                                      own_roots=[str(Path(__file__).resolve().parent.parent)])
    footprint.snapshot()
    yield footprint
    if os.geteuid() == 0:
        left = footprint.restore()
        if left:
            warnings.warn(f"engine leftovers not removed (in use?): {left}", stacklevel=2)


@pytest.fixture(scope="session")
def it_dir():
    """One temporary directory for the whole session (short path: sockets live here)."""
    path = Path(tempfile.mkdtemp(prefix="tg-it-", dir="/tmp"))
    yield path
    harness.remove_tree(path)


@pytest.fixture(scope="session")
def busybox_rootfs(it_dir) -> harness.BusyboxRootfs:
    return harness.busybox_rootfs(it_dir / "busybox")


@pytest.fixture(scope="session")
def podman_env(it_dir, busybox_rootfs):
    """The session's scratch podman (harness.Podman); prefer the `podman` fixture."""
    harness.require_root()
    harness.require_binary("podman")
    engine = harness.Podman(it_dir / "podman", image_tar=busybox_rootfs.tar)
    yield engine
    engine.cleanup()


@pytest.fixture
def podman(podman_env):
    """harness.Podman for one test: hooks installed in .hooks_dir and containers go after it."""
    yield podman_env
    podman_env.clear_hooks()
    podman_env.remove_containers()


@pytest.fixture(scope="session")
def runc_env(it_dir):
    """Shared runc state dir and cgroup parent for runc_bundle; cgroups removed at the end."""
    harness.require_root()
    runc = harness.require_binary("runc")
    env = {"runc": runc, "runc_root": it_dir / "runc-root",
           "cgroup_parent": f"/tiergate-it-{os.getpid()}-runc", "bundles": it_dir / "bundles"}
    yield env
    harness.remove_cgroup(env["cgroup_parent"])


@pytest.fixture
def runc_bundle(runc_env, busybox_rootfs):
    """Factory: runc_bundle(config=None, *, args=None, rootfs=None) -> harness.RuncBundle.

    The default rootfs is the session's busybox tree, which runc's default spec
    mounts read-only; pass rootfs=busybox_rootfs.copy_to(dir) for a writable one.
    """
    made: list[harness.RuncBundle] = []
    counter = itertools.count()

    def make(config: dict | None = None, *, args=None, rootfs=None) -> harness.RuncBundle:
        bundle_dir = Path(tempfile.mkdtemp(prefix=f"b{next(counter)}-",
                                           dir=_mkdir(runc_env["bundles"])))
        bundle = harness.RuncBundle(bundle_dir, rootfs or busybox_rootfs.path, config,
                                    args=args, runc_root=runc_env["runc_root"],
                                    runc=runc_env["runc"],
                                    cgroup_parent=runc_env["cgroup_parent"])
        made.append(bundle)
        return bundle

    yield make
    for bundle in made:
        harness.remove_tree(bundle.dir)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def docker_factory(it_dir, busybox_rootfs):
    """Factory: docker_factory(runtimes=None, default_runtime=None) -> harness.Docker (started).

    Daemons are started lazily, one per distinct (runtimes, default_runtime),
    at most MAX_DOCKER_DAEMONS, and stopped by pid at session end.
    """
    daemons: dict[tuple, harness.Docker] = {}

    def make(runtimes: dict[str, str] | None = None,
             default_runtime: str | None = None) -> harness.Docker:
        key = (tuple(sorted((runtimes or {}).items())), default_runtime)
        if key not in daemons:
            if len(daemons) >= MAX_DOCKER_DAEMONS:
                raise RuntimeError(f"more than {MAX_DOCKER_DAEMONS} private docker daemons")
            engine = harness.Docker(it_dir / f"docker{len(daemons)}",
                                    image_tar=busybox_rootfs.tar, runtimes=runtimes,
                                    default_runtime=default_runtime)
            daemons[key] = engine
            engine.start()
        return daemons[key]

    yield make
    errors = []
    for engine in daemons.values():
        try:
            engine.stop()
        except Exception as exc:  # stop the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def docker(docker_factory) -> harness.Docker:
    """The session's default private docker daemon (plain runc)."""
    return docker_factory()
