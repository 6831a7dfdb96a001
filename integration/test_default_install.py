"""The path users take: `tiergate install --engine podman|docker` with NO paths, then a plain
`podman run` / `docker run` (no --hooks-dir, no --runtime), checked from inside.

These tests register in the host's default engine config paths (/usr/share/containers/oci/hooks.d,
/etc/containers/containers.conf.d, /etc/docker/daemon.json) for a few seconds: other tests running
at the same time use --hooks-dir and CONTAINERS_CONF (which override those defaults), and every
test here restores the trees byte for byte in a finally, and asserts it did.

Host quirks a user of this machine sets on the command line (host-facts): podman
`--cgroup-manager cgroupfs` (hybrid cgroups) and `--ulimit nofile=1024:1024 --ulimit
nproc=4096:4096` (root lacks CAP_SYS_RESOURCE); the control names `--runtime runc`, since
Debian's default crun refuses hybrid cgroups. Images and containers live in podman's default
storage under unique names and are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import harness
from harness import caps_from_hex, file_tree, probe_status, run_cmd
from tiergate.engines import front
from tiergate_fixtures import IMAGES, LABEL, STATUS_SH, compiled_policy, tg_images, tiergate  # noqa: F401

PODMAN_TREES = ("/etc/containers", "/usr/share/containers")
HOST_FLAGS = ["--cgroup-manager", "cgroupfs"]
RUN_FLAGS = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
RESTRICTED_CAPS = {"CAP_NET_BIND_SERVICE"}
STATE_DIRS = ("/var/log/tiergate", "/var/cache/tiergate")  # the hook's defaults: removed if we made them


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "DOCKER_"))}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def podman(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Plain podman: the system's containers.conf (drop-ins included), default storage and hooks dirs."""
    return run_cmd(["podman", *HOST_FLAGS, *args], env=_env(), check=check, timeout=timeout)


def status(proc) -> dict[str, str]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    return probe_status(proc.stdout)


def caps(s: dict, key: str = "CapEff") -> set[str]:
    return caps_from_hex(s[key])


class Restore:
    """Snapshot trees (and which state dirs exist) now; `check()` puts back what it can and says what differs."""

    def __init__(self, trees: tuple[str, ...]):
        self.trees = {t: file_tree(Path(t)) for t in trees}
        self.state = self._state()

    @staticmethod
    def _state() -> set[str]:
        out = set()
        for d in STATE_DIRS:
            for dirpath, dirnames, filenames in os.walk(d):
                out.update(os.path.join(dirpath, n) for n in ["", *dirnames, *filenames])
        return out

    def differences(self) -> list[str]:
        out = []
        for t, before in self.trees.items():
            after = file_tree(Path(t))
            out += [f"{t}/{k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        return out

    def remove_state(self) -> None:
        """Files the hook added to its default log and cache dirs, then the dirs it made, if empty
        (another test's cache entry at worst costs it a recompile; nothing that was here goes)."""
        new = sorted(self._state() - self.state, key=len, reverse=True)
        for p in new:
            try:
                os.rmdir(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
            except OSError:
                pass


@pytest.fixture
def podman_images(busybox_rootfs):
    harness.require_root()
    harness.require_binary("podman")
    harness.require_binary("runc")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    refs = {tier: f"localhost/tg-default-{tier}-{tag}" for tier in ("restricted", "baseline")}
    for tier, ref in refs.items():
        podman("import", "--quiet", *harness._change_flags({LABEL: tier}, (), ("/bin/sh",)), str(busybox_rootfs.tar),
               ref, check=True)
    names: list[str] = []
    yield refs, names, tag
    if names:
        podman("rm", "--force", "--time", "0", *names)
    podman("rmi", "--force", *refs.values())


def test_podman_default_install_hardens_plain_run_and_exec(podman_images):
    refs, names, tag = podman_images
    restricted, baseline = refs["restricted"], refs["baseline"]
    snap = Restore(PODMAN_TREES)

    # CONTROL, before the install: podman's defaults, exec gets no_new_privs 0 and --privileged everything.
    control = status(podman("run", "--rm", "--runtime", "runc", *RUN_FLAGS, restricted, "sh", "-c", STATUS_SH))
    assert control["NoNewPrivs"] == "0" and caps(control) > RESTRICTED_CAPS
    cname = f"tg-default-control-{tag}"
    names.append(cname)
    podman("run", "-d", "--name", cname, "--runtime", "runc", *RUN_FLAGS, restricted, "sleep", "120", check=True)
    assert status(podman("exec", cname, "sh", "-c", STATUS_SH))["NoNewPrivs"] == "0"
    assert "CAP_SYS_ADMIN" in caps(status(podman("exec", "--privileged", cname, "sh", "-c", STATUS_SH)))
    podman("rm", "--force", "--time", "0", cname)
    before_doctor = {c["name"]: c for c in json.loads(tiergate("doctor", "--json", check=False).stdout)["checks"]}
    assert before_doctor["podman engine"]["status"] == "warn", before_doctor["podman engine"]

    try:
        # The reproduction: a hook in /etc/containers/oci/hooks.d (where install wrote before)
        # is not read by podman 4.3: the container runs unhardened, and doctor must be red.
        tiergate("install", "--engine", "podman", "--hooks-dir", "/etc/containers/oci/hooks.d")
        old = status(podman("run", "--rm", "--runtime", "runc", *RUN_FLAGS, restricted, "sh", "-c", STATUS_SH))
        assert old["NoNewPrivs"] == "0" and caps(old) == caps(control)
        doc = {c["name"]: c for c in json.loads(tiergate("doctor", "--json", check=False).stdout)["checks"]}
        assert doc["podman engine"]["status"] == "fail" and "NOT read by podman" in doc["podman engine"]["detail"]

        out = tiergate("install", "--engine", "podman").stdout
        assert "removed /etc/containers/oci/hooks.d/99-tiergate-precreate.json" in out, out
        assert "wrote /usr/share/containers/oci/hooks.d/99-tiergate-precreate.json" in out, out
        assert "wrote /etc/containers/containers.conf.d/99-tiergate.conf" in out, out
        again = tiergate("install", "--engine", "podman").stdout.splitlines()
        assert all(line.startswith(("unchanged ", "absent ", "podman now")) for line in again), again
        hook = json.loads(Path("/usr/share/containers/oci/hooks.d/99-tiergate-precreate.json").read_text())
        assert isinstance(hook["hook"]["timeout"], int) and 0 < hook["hook"]["timeout"] <= 30

        # doctor, from podman's side: the runtime podman reports and the hook in a dir it reads
        doc = {c["name"]: c for c in json.loads(tiergate("doctor", "--json", check=False).stdout)["checks"]}
        assert doc["podman engine"]["status"] == "ok", doc["podman engine"]
        assert "runtime tiergate" in doc["podman engine"]["detail"]

        # a plain podman run: no --hooks-dir, no --runtime
        s = status(podman("run", "--rm", *RUN_FLAGS, restricted, "sh", "-c", STATUS_SH))
        assert caps(s) == caps(s, "CapBnd") == RESTRICTED_CAPS
        assert s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
        b = status(podman("run", "--rm", *RUN_FLAGS, baseline, "sh", "-c", STATUS_SH))
        assert b["NoNewPrivs"] == "1" and caps(b) <= caps(control)
        # `--runtime runc` bypasses the runtime, not the hook
        r = status(podman("run", "--rm", "--runtime", "runc", *RUN_FLAGS, restricted, "sh", "-c", STATUS_SH))
        assert caps(r) == RESTRICTED_CAPS and r["NoNewPrivs"] == "1"

        # exec, checked from inside: never more than the tier, no_new_privs; --privileged refused (restricted)
        name = f"tg-default-{tag}"
        names.append(name)
        podman("run", "-d", "--name", name, *RUN_FLAGS, restricted, "sleep", "120", check=True)
        e = status(podman("exec", name, "sh", "-c", STATUS_SH))
        assert caps(e) == caps(e, "CapBnd") == RESTRICTED_CAPS and e["NoNewPrivs"] == "1" and e["Seccomp"] == "2"
        p = podman("exec", "--privileged", name, "sh", "-c", STATUS_SH)
        assert p.returncode != 0 and "CapEff" not in p.stdout
        assert "tiergate: refused: tier restricted refuses an exec" in p.stderr, p.stderr
        # baseline clamps exec --privileged to the tier
        bname = f"tg-default-b-{tag}"
        names.append(bname)
        podman("run", "-d", "--name", bname, *RUN_FLAGS, baseline, "sleep", "120", check=True)
        bp = status(podman("exec", "--privileged", bname, "sh", "-c", STATUS_SH))
        assert caps(bp, "CapBnd") <= set(compiled_policy()["tiers"]["baseline"]["capabilities"])
        assert "CAP_SYS_ADMIN" not in caps(bp) and bp["NoNewPrivs"] == "1"
        podman("rm", "--force", "--time", "0", name, bname)
    finally:
        tiergate("uninstall", "--engine", "podman", check=False)
        snap.remove_state()
    assert snap.differences() == []
    assert not os.path.exists("/usr/local/libexec/tiergate")


@pytest.fixture
def docker_conf():
    """/etc/docker as a user has it: a daemon.json (the host's own, if any, plus a key path that keeps
    dockerd out of /etc/docker); put back byte for byte afterwards."""
    harness.require_root()
    etc = Path("/etc/docker")
    existed = etc.exists()
    daemon_json = etc / "daemon.json"
    original = daemon_json.read_bytes() if daemon_json.exists() else None
    mode = daemon_json.stat().st_mode & 0o7777 if original is not None else 0o644
    snap = Restore(("/etc/docker",))
    keydir = Path(tempfile.mkdtemp(prefix="tg-default-docker-"))
    etc.mkdir(exist_ok=True)
    user = json.loads(original or b"{}")
    user.setdefault("deprecated-key-path", str(keydir / "key.json"))
    user_text = json.dumps(user, indent=2) + "\n"
    daemon_json.write_text(user_text)
    daemon_json.chmod(mode)
    try:
        yield daemon_json, user_text
    finally:
        if original is None:
            daemon_json.unlink(missing_ok=True)
        else:
            daemon_json.write_bytes(original)
            daemon_json.chmod(mode)
        if not existed:
            shutil.rmtree(etc, ignore_errors=True)
        harness.remove_tree(keydir)
        snap.remove_state()
        assert snap.differences() == []


def test_docker_default_install_hardens_plain_run(docker_conf, it_dir, busybox_rootfs):
    daemon_json, user_text = docker_conf
    engine = None
    try:
        out = tiergate("install", "--engine", "docker").stdout
        assert f"wrote {daemon_json}" in out
        conf = json.loads(daemon_json.read_text())
        assert conf["default-runtime"] == "tiergate" and conf["deprecated-key-path"]
        shim = conf["runtimes"]["tiergate"]["path"]  # what dockerd runs as runc: the compiled front itself (cc here)
        assert front.launcher_of(shim) == os.path.join(os.path.dirname(shim), "lib", "tiergate-runtime.py"), shim
        engine = harness.Docker(it_dir / f"docker-default-{uuid.uuid4().hex[:6]}", image_tar=busybox_rootfs.tar,
                                config_file=False).start()
        engine.import_image("tg-default-restricted", {LABEL: "restricted"})
        control = status(engine.run("tg-default-restricted", "sh", "-c", STATUS_SH, args=["--runtime", "runc"]))
        assert control["NoNewPrivs"] == "0" and caps(control) > RESTRICTED_CAPS  # CONTROL: plain runc
        s = status(engine.run("tg-default-restricted", "sh", "-c", STATUS_SH))  # plain docker run
        assert caps(s) == caps(s, "CapBnd") == RESTRICTED_CAPS
        assert s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
        cid = engine.docker("run", "-d", "--network", "none", "tg-default-restricted", "sleep", "120",
                            check=True).stdout.strip()
        e = status(engine.docker("exec", cid, "sh", "-c", STATUS_SH))
        assert caps(e) == RESTRICTED_CAPS and e["NoNewPrivs"] == "1"
        p = engine.docker("exec", "--privileged", cid, "sh", "-c", STATUS_SH)
        assert p.returncode != 0 and "CapEff" not in p.stdout
    finally:
        if engine is not None:
            engine.stop()
        tiergate("uninstall", "--engine", "docker", check=False)
    assert daemon_json.read_text() == user_text
    assert not os.path.exists("/usr/local/libexec/tiergate")


def test_a_hung_hook_fails_the_start_closed(podman, tg_images, tmp_path):
    """The hooks.d entry install writes carries a timeout; on it podman kills the hook and fails the start."""
    from tiergate.engines import podman as engine

    hung = tmp_path / "hung-hook"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    doc = json.loads(engine.hook_json(hung, "precreate", []))
    assert doc["hook"]["timeout"] == engine.HOOK_TIMEOUT
    doc["hook"]["timeout"] = 2  # the same entry with a shorter wait, for the test's sake
    (podman.hooks_dir / engine.HOOK_FILES["precreate"]).write_text(json.dumps(doc))
    started = time.monotonic()
    proc = podman.run(IMAGES["restricted"][0], "sh", "-c", "echo started")
    took = time.monotonic() - started
    assert proc.returncode == 126 and "started" not in proc.stdout, (proc.returncode, proc.stdout)
    assert "setting up OCI Hooks: context deadline exceeded" in proc.stderr, proc.stderr
    assert took < 30, took
    print(f"\nhung precreate hook (timeout 2 s): start failed after {took:.1f} s")
