"""podman --runtime crun with tiergate's precreate hook: a refusal's one-line reason reaches the user.

crun quotes no hook output (`error executing hook /bin/sh (exit code: 1)`): the refusal spec
names, as crun's hook output file (annotation run.oci.hooks.stderr), a path that cannot exist
and holds the line; crun fails to open it before any hook runs and quotes it, podman shows
that. runc ignores the annotation and quotes the failing hook's stderr.

crun 1.8 cannot start containers on hybrid cgroups ("cgroups in hybrid mode not supported,
drop all controllers from cgroupv2"): here each podman runs in a private mount namespace
where the unified hierarchy's cgroup.controllers is an empty file (host-facts).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import harness
import pytest
from tiergate_fixtures import Hooks, compiled_policy, podman_argv

UNIFIED_CONTROLLERS = Path("/sys/fs/cgroup/unified/cgroup.controllers")
# A private mount namespace: the hybrid host's unified hierarchy offers crun no controllers.
PRIVATE_NS = 'mount --bind "$0" /sys/fs/cgroup/unified/cgroup.controllers && exec "$@"'


@pytest.fixture(scope="module")
def crun_podman(it_dir, busybox_rootfs):
    harness.require_root()
    crun = shutil.which("crun")
    if crun is None:
        pytest.skip("crun is not installed")
    engine = harness.Podman(it_dir / f"podman-crun-{uuid.uuid4().hex[:6]}", image_tar=busybox_rootfs.tar,
                            runtime=crun)
    empty = engine.dir / "no-controllers"
    empty.write_text("")
    wrap = [] if harness.cgroup_mode() == "unified" else ["unshare", "-m", "sh", "-c", PRIVATE_NS, str(empty)]
    if wrap and not UNIFIED_CONTROLLERS.exists():
        pytest.skip(f"hybrid cgroups without {UNIFIED_CONTROLLERS}: crun cannot run here")
    names = {"plain": f"localhost/tg-crun-plain-{uuid.uuid4().hex[:6]}",
             "restricted": f"localhost/tg-crun-restricted-{uuid.uuid4().hex[:6]}"}
    engine.import_image(names["plain"])
    engine.import_image(names["restricted"], {"io.tiergate.tier": "restricted"})
    hooks = Hooks(engine, engine.dir / "tg")
    control = Hooks(engine, engine.dir / "control", install=False)

    def run(h: Hooks, image: str, *args: str):
        name = f"tg-crun-{uuid.uuid4().hex[:8]}"
        argv = podman_argv(engine, h.hooks_dir, "run", "--name", name, *args, names[image], "sh", "-c",
                           "echo started; grep CapEff /proc/self/status")
        try:
            return harness.run_cmd([*wrap, *argv], env=engine.env, timeout=engine.timeout)
        finally:
            harness.run_cmd([*wrap, *podman_argv(engine, h.hooks_dir, "rm", "--force", name)], env=engine.env,
                            timeout=engine.timeout)

    yield {"run": run, "tg": hooks, "control": control}
    engine.rmi(*names.values())
    engine.cleanup()


def test_crun_runs_a_container_here(crun_podman):
    """The control: crun starts this container without tiergate (the workaround works)."""
    proc = crun_podman["run"](crun_podman["control"], "restricted", "--privileged")
    assert proc.returncode == 0 and "started" in proc.stdout, proc.stderr


def _caps(proc) -> set[str]:
    return harness.caps_from_hex(proc.stdout.split("CapEff:")[1].split()[0])


def test_crun_allowed_container_is_hardened(crun_podman):
    """tiergate's hook under crun: an allowed container starts, within its tier's capabilities
    (restricted), where the control keeps podman's defaults."""
    proc = crun_podman["run"](crun_podman["tg"], "restricted")
    assert proc.returncode == 0 and "started" in proc.stdout, proc.stderr
    assert crun_podman["tg"].last()["outcome"] == "allowed"
    control = crun_podman["run"](crun_podman["control"], "restricted")
    allowed = set(compiled_policy()["tiers"]["restricted"]["capabilities"])
    assert _caps(proc) <= allowed and not _caps(control) <= allowed


def test_crun_refusal_reason_reaches_podman_stderr(crun_podman):
    """restricted refuses --privileged: the user sees tiergate's one line (as under runc), not only
    crun's `error executing hook`; the workload never ran."""
    proc = crun_podman["run"](crun_podman["tg"], "restricted", "--privileged")
    assert proc.returncode != 0 and "started" not in proc.stdout
    record = crun_podman["tg"].last()
    assert record["outcome"] == "refused"
    want = f"tiergate: refused: {record['reason']}"
    assert any(want in line for line in proc.stderr.splitlines()), proc.stderr
