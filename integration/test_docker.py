"""tiergate-runtime as docker's runtime (added, then the default), shown from inside containers.

A private containerd + dockerd (harness.Docker) runs each case; a control run
on plain runc shows each probe succeeds without tiergate. Images are busybox
imports labelled with a tier; their references (docker.io/library/tg-*) earn
the shipped policy's default ceiling (baseline).
"""

from __future__ import annotations

import json
import time

import pytest

from harness import caps_from_hex, probe_status, wait_until

pytestmark = pytest.mark.docker

STATUS = ("cat", "/proc/self/status")
DEFAULT_CAPS = caps_from_hex("00000000a80425fb")
RESTRICTED_CAPS = {"CAP_NET_BIND_SERVICE"}
# `docker run --privileged` cannot start here even on plain runc (no CAP_SYS_RESOURCE in
# root's bounding set); this is the nearest that does (host-facts.md).
PRIVILEGED_LIKE = ("--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
                   "--security-opt", "systempaths=unconfined")


@pytest.fixture(scope="module")
def shim(it_dir):
    """The shim and hook launcher installed as `tiergate install` does, with a private log and cache."""
    from tiergate.engines import shim as shim_install

    bin_dir = it_dir / "shim-docker"
    exe = shim_install.install(bin_dir, "integration docker", log=str(it_dir / "docker-decisions.jsonl"),
                               cache_dir=str(it_dir / "cache"), say=lambda *_: None)
    return {"exe": str(exe), "log": it_dir / "docker-decisions.jsonl"}


@pytest.fixture(scope="module")
def control(docker_factory):
    return docker_factory()


@pytest.fixture(scope="module")
def added(docker_factory, shim):
    return docker_factory(runtimes={"tiergate": shim["exe"]})


@pytest.fixture(scope="module")
def default(docker_factory, shim):
    return docker_factory(runtimes={"tiergate": shim["exe"]}, default_runtime="tiergate")


def _images(engine):
    engine.import_image("tg-restricted:1", {"io.tiergate.tier": "restricted"})
    engine.import_image("tg-baseline:1", {"io.tiergate.tier": "baseline"})
    engine.import_image("tg-plain:1", {})
    return engine


@pytest.fixture(scope="module")
def control_images(control):
    return _images(control)


@pytest.fixture(scope="module")
def tg(added):
    return _images(added)


@pytest.fixture(scope="module")
def tg_default(default):
    return _images(default)


def status(engine, image, *args, runtime="tiergate"):
    proc = engine.run(image, *STATUS, args=(*(["--runtime", runtime] if runtime else []), *args))
    assert proc.returncode == 0, proc.stderr
    return probe_status(proc.stdout)


def refused(engine, image, *args, runtime="tiergate") -> str:
    proc = engine.run(image, *STATUS, args=(*(["--runtime", runtime] if runtime else []), *args))
    assert proc.returncode == 125, (proc.returncode, proc.stdout, proc.stderr)
    assert "OCI runtime create failed" in proc.stderr and "tiergate: refused:" in proc.stderr, proc.stderr
    return proc.stderr


class TestControl:
    """Plain runc: what each probe shows without tiergate."""

    def test_labelled_image_gets_docker_defaults(self, control_images):
        s = status(control_images, "tg-restricted:1", runtime=None)
        assert caps_from_hex(s["CapEff"]) == DEFAULT_CAPS and s["NoNewPrivs"] == "0" and s["Seccomp"] == "2"

    def test_escalations_work_without_tiergate(self, control_images, it_dir):
        s = status(control_images, "tg-restricted:1", "--cap-add", "SYS_ADMIN", runtime=None)
        assert "CAP_SYS_ADMIN" in caps_from_hex(s["CapEff"])
        s = status(control_images, "tg-restricted:1", *PRIVILEGED_LIKE, runtime=None)
        assert "CAP_SYS_ADMIN" in caps_from_hex(s["CapEff"]) and s["Seccomp"] == "0"
        s = status(control_images, "tg-restricted:1", "--security-opt", "seccomp=unconfined", runtime=None)
        assert s["Seccomp"] == "0"
        sock = it_dir / "fake-docker.sock"
        sock.touch()
        proc = control_images.run("tg-restricted:1", "test", "-e", "/var/run/docker.sock",
                                  args=("-v", f"{sock}:/var/run/docker.sock"))
        assert proc.returncode == 0, proc.stderr

    def test_exec_gets_docker_defaults(self, control_images):
        cid = control_images.docker("run", "-d", "--network", "none", "tg-restricted:1", "sleep", "60",
                                    check=True).stdout.strip()
        try:
            s = probe_status(control_images.docker("exec", cid, *STATUS, check=True).stdout)
            assert caps_from_hex(s["CapEff"]) == DEFAULT_CAPS and s["NoNewPrivs"] == "0"
            # exec --privileged asks for every capability: plain runc cannot even apply them here
            # (no CAP_SYS_RESOURCE in root's bounding set); tiergate clamps it so it runs (below).
            proc = control_images.docker("exec", "--privileged", cid, *STATUS)
            assert proc.returncode == 126 and "unable to apply caps" in proc.stdout + proc.stderr
        finally:
            control_images.docker("rm", "-f", cid)


class TestAddedRuntime:
    """`--add-runtime tiergate=<shim>` and `docker run --runtime tiergate`."""

    def test_restricted_label(self, tg, shim):
        s = status(tg, "tg-restricted:1")
        assert caps_from_hex(s["CapEff"]) == RESTRICTED_CAPS
        assert s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
        recs = [json.loads(line) for line in shim["log"].read_text().splitlines()]
        last = [r for r in recs if r.get("stage") == "create"][-1]
        assert last["tier"] == "restricted" and last["engine"] == "docker"
        assert last["image"] == "docker.io/library/tg-restricted:1"

    def test_unlabelled_gets_baseline(self, tg):
        s = status(tg, "tg-plain:1")
        assert caps_from_hex(s["CapEff"]) == DEFAULT_CAPS and s["NoNewPrivs"] == "1"

    def test_run_label_cannot_raise_above_ceiling(self, tg):
        """`docker run --label io.tiergate.tier=privileged` on an unlabelled image stays within baseline."""
        s = status(tg, "tg-plain:1", "--label", "io.tiergate.tier=privileged", "--cap-add", "SYS_ADMIN")
        assert "CAP_SYS_ADMIN" not in caps_from_hex(s["CapEff"]) and s["NoNewPrivs"] == "1"

    def test_run_label_cannot_loosen_the_images_own_tier(self, tg):
        """The restricted image stays restricted under `--label io.tiergate.tier=privileged`: --cap-add is refused."""
        refused(tg, "tg-restricted:1", "--label", "io.tiergate.tier=privileged", "--cap-add", "SYS_ADMIN")

    def test_cap_add_refused_on_restricted(self, tg):
        refused(tg, "tg-restricted:1", "--cap-add", "SYS_ADMIN")

    def test_cap_add_clamped_on_baseline(self, tg):
        s = status(tg, "tg-baseline:1", "--cap-add", "SYS_ADMIN")
        assert caps_from_hex(s["CapEff"]) == DEFAULT_CAPS

    def test_privileged_like_refused_on_restricted(self, tg):
        msg = refused(tg, "tg-restricted:1", *PRIVILEGED_LIKE)
        assert "tier restricted refuses" in msg

    def test_privileged_clamped_on_baseline(self, tg):
        """Real --privileged starts under tiergate (clamped as a whole), though plain runc cannot start it here."""
        s = status(tg, "tg-baseline:1", "--privileged")
        assert caps_from_hex(s["CapEff"]) == DEFAULT_CAPS and s["Seccomp"] == "2" and s["NoNewPrivs"] == "1"
        proc = tg.run("tg-baseline:1", "sh", "-c", "ls /dev | wc -l; grep -c . /proc/self/mountinfo",
                      args=("--runtime", "tiergate", "--privileged"))
        assert proc.returncode == 0, proc.stderr
        assert int(proc.stdout.split()[0]) < 30  # no host devices (a privileged spec carries ~100)

    def test_seccomp_unconfined_clamped(self, tg):
        s = status(tg, "tg-restricted:1", "--security-opt", "seccomp=unconfined")
        assert s["Seccomp"] == "2"

    def test_docker_sock_refused_on_restricted(self, tg, it_dir):
        sock = it_dir / "elsewhere" / "docker.sock"
        sock.parent.mkdir(exist_ok=True)
        sock.touch()
        msg = refused(tg, "tg-restricted:1", "-v", f"{sock}:/var/run/docker.sock")
        assert "docker.sock" in msg

    def test_docker_sock_removed_on_baseline(self, tg, it_dir):
        sock = it_dir / "elsewhere" / "docker.sock"
        sock.parent.mkdir(exist_ok=True)
        sock.touch()
        proc = tg.run("tg-baseline:1", "sh", "-c", "test -e /var/run/docker.sock && echo present || echo absent",
                      args=("--runtime", "tiergate", "-v", f"{sock}:/var/run/docker.sock"))
        assert proc.returncode == 0 and proc.stdout.strip() == "absent", proc.stderr


@pytest.fixture
def running(tg):
    made = []

    def start(image):
        cid = tg.docker("run", "-d", "--runtime", "tiergate", "--network", "none", image, "sleep", "120",
                        check=True).stdout.strip()
        made.append(cid)
        return cid

    yield start
    for cid in made:
        tg.docker("rm", "-f", cid)


class TestExec:
    def test_exec_within_tier(self, tg, running):
        cid = running("tg-restricted:1")
        s = probe_status(tg.docker("exec", cid, *STATUS, check=True).stdout)
        assert caps_from_hex(s["CapEff"]) == RESTRICTED_CAPS and s["NoNewPrivs"] == "1"

    def test_exec_privileged_refused_on_restricted(self, tg, running):
        cid = running("tg-restricted:1")
        proc = tg.docker("exec", "--privileged", cid, *STATUS)
        assert proc.returncode == 126, (proc.stdout, proc.stderr)
        assert "tiergate: refused: tier restricted refuses an exec" in proc.stdout + proc.stderr

    def test_exec_privileged_clamped_on_baseline(self, tg, running):
        cid = running("tg-baseline:1")
        s = probe_status(tg.docker("exec", "--privileged", cid, *STATUS, check=True).stdout)
        assert caps_from_hex(s["CapEff"]) == DEFAULT_CAPS and s["NoNewPrivs"] == "1"


class TestWarmHelper:
    """The shim's launcher hands create and exec to its warm helper (engines/warm.py); the
    helper's child decides and hardens, the shim's own process still runs runc."""

    def test_create_and_exec_through_the_helper_hold_the_tier(self, tg, shim, running):
        from pathlib import Path

        from harness import warm_helper_pid
        from tiergate.engines import warm

        from tiergate.engines.shim import PY_LAUNCHER

        running("tg-restricted:1")  # a start after install: the helper runs from here on
        pid = warm_helper_pid(warm.key_in((Path(shim["exe"]).parent / PY_LAUNCHER).read_text()), timeout=60)
        cid = running("tg-restricted:1")
        s = probe_status(tg.docker("exec", cid, *STATUS, check=True).stdout)
        # the control (TestControl, plain runc): docker's default capabilities, NoNewPrivs 0
        assert caps_from_hex(s["CapEff"]) == RESTRICTED_CAPS and s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
        recs = [json.loads(x) for x in shim["log"].read_text().splitlines() if cid in x]
        assert [(r["stage"], r["outcome"], r.get("warm")) for r in recs] == [
            ("create", "allowed", pid), ("exec", "allowed", pid)], recs
        proc = tg.docker("exec", "--privileged", cid, *STATUS)
        assert proc.returncode == 126, (proc.stdout, proc.stderr)
        assert "tiergate: refused: tier restricted refuses an exec" in proc.stdout + proc.stderr
        last = json.loads(shim["log"].read_text().splitlines()[-1])
        assert (last["stage"], last["outcome"], last.get("warm")) == ("exec", "refused", pid), last


class TestPassThrough:
    def test_lifecycle(self, tg, running):
        cid = running("tg-restricted:1")
        top = tg.docker("top", cid, check=True).stdout
        assert "sleep" in top
        tg.docker("pause", cid, check=True)
        assert tg.docker("inspect", "-f", "{{.State.Status}}", cid, check=True).stdout.strip() == "paused"
        tg.docker("unpause", cid, check=True)
        tg.docker("kill", cid, check=True)  # runc kill <id> 9
        wait_until(lambda: tg.docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "false",
                   timeout=20, what="container to exit")
        tg.docker("start", cid, check=True)
        tg.docker("stop", "-t", "1", cid, check=True)
        tg.docker("rm", cid, check=True)
        assert cid not in tg.docker("ps", "-aq", "--no-trunc").stdout

    def test_events_and_version(self, tg, shim):
        info = tg.docker("info", "--format", "{{json .Runtimes}}", check=True).stdout
        assert "tiergate" in info
        proc = tg.docker("events", "--since", "0", "--until", str(int(time.time())), "--filter", "type=container",
                         timeout=30)
        assert proc.returncode == 0


class TestDefaultRuntime:
    def test_labelled_image_gets_tier_without_asking(self, tg_default):
        s = status(tg_default, "tg-restricted:1", runtime=None)
        assert caps_from_hex(s["CapEff"]) == RESTRICTED_CAPS and s["NoNewPrivs"] == "1"

    def test_cap_add_refused(self, tg_default):
        refused(tg_default, "tg-restricted:1", "--cap-add", "SYS_ADMIN", runtime=None)

    def test_exec(self, tg_default):
        cid = tg_default.docker("run", "-d", "--network", "none", "tg-restricted:1", "sleep", "60",
                                check=True).stdout.strip()
        try:
            s = probe_status(tg_default.docker("exec", cid, *STATUS, check=True).stdout)
            assert caps_from_hex(s["CapEff"]) == RESTRICTED_CAPS and s["NoNewPrivs"] == "1"
        finally:
            tg_default.docker("rm", "-f", cid)


class TestInstall:
    """`tiergate install --engine docker` on a (private) daemon.json, loaded with SIGHUP, then uninstalled."""

    def test_install_reload_uninstall(self, control_images, it_dir):
        import os
        import signal

        from tiergate.engines import docker as docker_engine

        engine = control_images
        daemon_json = engine.dir / "daemon.json"
        before = daemon_json.read_text()
        bin_dir = it_dir / "installed-bin"

        def runtimes():
            return json.loads(engine.docker("info", "--format", "{{json .Runtimes}}", check=True).stdout)

        exe = docker_engine.install(daemon_json, bin_dir, say=lambda *_: None,
                                    log=str(it_dir / "installed.jsonl"), cache_dir=str(it_dir / "cache"))
        assert json.loads(daemon_json.read_text())["deprecated-key-path"]  # every other key kept
        try:
            os.kill(engine.pids["dockerd"], signal.SIGHUP)
            wait_until(lambda: "tiergate" in runtimes(), timeout=20, what="dockerd to reload runtimes")
            assert runtimes()["tiergate"]["path"] == str(exe)
            assert (bin_dir / "tiergate-hook").exists()
            s = status(engine, "tg-restricted:1")
            assert caps_from_hex(s["CapEff"]) == RESTRICTED_CAPS and s["NoNewPrivs"] == "1"
        finally:
            docker_engine.uninstall(daemon_json, bin_dir, say=lambda *_: None)
            os.kill(engine.pids["dockerd"], signal.SIGHUP)
        # dockerd 20.10 reloads runtimes only when daemon.json names some: dropping one needs a restart
        assert daemon_json.read_text() == before and not bin_dir.exists()
