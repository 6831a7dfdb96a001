"""tiergate-runtime under containerd directly: `ctr run --runc-binary <shim> --annotation ...`.

Uses the containerd of a private docker daemon (harness.Docker), its own
namespace, and a runc root under the test directory (--runc-root). ctr's spec
has NoNewPrivs 1 and no seccomp; the control run shows it.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from harness import caps_from_hex, probe_status, remove_cgroup, run_cmd

pytestmark = pytest.mark.docker

STATUS = ["/bin/cat", "/proc/self/status"]  # ctr with --rootfs sets no PATH


@pytest.fixture(scope="module")
def shim(it_dir):
    from tiergate.engines import shim as shim_install

    bin_dir = it_dir / "shim-containerd"
    exe = shim_install.install(bin_dir, "integration containerd", log=str(it_dir / "ctr-decisions.jsonl"),
                               cache_dir=str(it_dir / "cache"), say=lambda *_: None)
    return {"exe": str(exe), "log": it_dir / "ctr-decisions.jsonl"}


@pytest.fixture(scope="module")
def ctr(docker_factory, busybox_rootfs, it_dir):
    engine = docker_factory()
    rootfs = busybox_rootfs.path
    runc_root = it_dir / "ctr-runc-root"
    runc_root.mkdir(exist_ok=True)
    fifo_dir = it_dir / "ctr-fifo"  # ctr's default is /run/containerd/fifo: a host path
    fifo_dir.mkdir(exist_ok=True)
    namespace = f"tiergate-it-{os.getpid()}-ctr"  # containerd's cgroup parent for its containers: removed below

    def run(*extra, binary=None, cmd=STATUS):
        argv = [engine.ctr, "--address", str(engine.containerd_sock), "--namespace", namespace, "run", "--rm",
                "--rootfs", "--runc-root", str(runc_root), "--fifo-dir", str(fifo_dir), *(["--runc-binary", binary] if binary else []),
                *extra, str(rootfs), f"tg-{uuid.uuid4().hex[:10]}", *cmd]
        return run_cmd(argv, env=engine.env, timeout=60)

    yield run
    remove_cgroup(namespace)


def test_control(ctr):
    proc = ctr("--annotation", "io.tiergate.tier=restricted")
    assert proc.returncode == 0, proc.stderr
    s = probe_status(proc.stdout)
    assert "CAP_KILL" in caps_from_hex(s["CapEff"]) and s["Seccomp"] == "0"


def test_annotation_restricted(ctr, shim):
    proc = ctr("--annotation", "io.tiergate.tier=restricted", binary=shim["exe"])
    assert proc.returncode == 0, proc.stderr
    s = probe_status(proc.stdout)
    assert caps_from_hex(s["CapEff"]) == {"CAP_NET_BIND_SERVICE"}
    assert s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
    rec = [json.loads(line) for line in shim["log"].read_text().splitlines()][-1]
    assert rec["engine"] == "containerd" and rec["tier"] == "restricted"


def test_cri_annotations_set_by_a_ctr_caller_are_not_records(ctr, shim):
    """`ctr run --annotation` sets any key: CRI annotations naming a trusted image earn nothing without
    containerd's own CRI record of the container (the shipped policy refuses the unknown image)."""
    forged = ("--annotation", "io.kubernetes.cri.container-type=container",
              "--annotation", "io.kubernetes.cri.image-name=localhost/tiergate-anything:1",
              "--annotation", "io.tiergate.tier=privileged", "--privileged")
    assert ctr(*forged).returncode == 0  # the control
    proc = ctr(*forged, binary=shim["exe"])
    assert proc.returncode != 0 and "tiergate: refused:" in proc.stderr, proc.stderr
    rec = [json.loads(line) for line in shim["log"].read_text().splitlines()][-1]
    assert rec["outcome"] == "refused" and "cannot read the image's labels" in rec["reason"]


def test_refusal_reaches_ctr(ctr, shim):
    proc = ctr(binary=shim["exe"])  # no image, no annotation: the shipped policy refuses unknown images
    assert proc.returncode != 0
    assert "tiergate: refused:" in proc.stderr, proc.stderr
