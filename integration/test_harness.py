"""Control runs: the harness and each engine work, with no tiergate involved.

These are also the "control" half of the later tiergate tests: what a
container gets from each engine's defaults here.
"""

from __future__ import annotations

import json
import os
import tomllib

import pytest

from harness import SYSTEM_CONTAINERS_CONF, HostFootprint, caps_from_hex, probe_status

STATUS = ("cat", "/proc/self/status")
LABELS = {"io.tiergate.tier": "restricted", "org.example.note": "two words=ok"}


def _podman_default_caps() -> set[str] | None:
    """default_capabilities from the system containers.conf files (None: podman's built-in)."""
    caps = None
    for path in SYSTEM_CONTAINERS_CONF:
        if os.path.exists(path):
            with open(path, "rb") as fh:
                caps = tomllib.load(fh).get("containers", {}).get("default_capabilities", caps)
    return None if caps is None else {f"CAP_{c.upper().removeprefix('CAP_')}" for c in caps}


class TestProbeParsing:
    """Pure helpers: no engine, no root."""

    def test_cache_restore_keeps_another_sessions_entries(self, tmp_path):
        """HostFootprint removes the cache entries its session made (its trees, /etc, .lock, a policy
        that is gone), never those of a policy that exists in another tree: two test sessions on one
        host must not undo each other."""
        cache = tmp_path / "cache"
        cache.mkdir()
        (cache / "policy%2Fold.json").write_text("{}")
        footprint = HostFootprint(cache_dir=str(cache), warm_roots=["/tmp/tg-it-mine"], own_roots=["/work/repo"])
        footprint.snapshot()
        ours = ["policy%2Ftmp%2Ftg-it-mine%2Fp.toml.json", "policy%2Fwork%2Frepo%2Fconfigs%2Fpolicy.toml.json",
                "policy%2Fetc%2Ftiergate%2Fpolicy.toml.json", ".lock"]
        other = tmp_path / "other-session"  # a policy that still exists, in another tree
        other.mkdir()
        (other / "p.toml").write_text("")
        spelled = str(other).replace("/", "%2F")
        theirs = [f"policy{spelled}%2Fp.toml.json", f"policy{spelled}%2Fp.toml.18ec9b32d5750f47-7313.d"]
        ours.append("policy%2Ftmp%2Ftg-roles-gone%2Fpolicy.toml.json")  # a test's policy, removed since
        for name in ours + theirs:
            (cache / name).write_text("{}")
        (cache / "policy%2Fwork%2Frepo%2Fconfigs%2Fpolicy.toml.1-2.d").mkdir()
        footprint._restore_cache()
        assert sorted(os.listdir(cache)) == sorted(["policy%2Fold.json", *theirs])

    def test_caps_from_hex_podman_default(self):
        """0x800405fb is Debian podman's 11 default capabilities."""
        assert caps_from_hex("00000000800405fb") == {
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT", "CAP_SETFCAP"}

    def test_caps_from_hex_edges(self):
        """Zero is empty; the full root set has 40 named capabilities minus SYS_RESOURCE."""
        assert caps_from_hex("0000000000000000") == set()
        full = caps_from_hex("000001fffeffffff")
        assert len(full) == 40 and "CAP_SYS_RESOURCE" not in full
        assert "CAP_63" in caps_from_hex("8000000000000000")

    def test_probe_status(self):
        """Key:<tab>value lines are read as strings; noise lines are ignored."""
        out = "noise line\nName:\tcat\nCapEff:\t00000000a80425fb\nNoNewPrivs:\t1\nSeccomp:\t2\n"
        status = probe_status(out)
        assert status["CapEff"] == "00000000a80425fb"
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"

    def test_probe_status_rejects_empty(self):
        """A probe whose command failed does not pass as an empty dict."""
        with pytest.raises(ValueError):
            probe_status("Error: something failed\n")


class TestBusyboxRootfs:
    def test_layout(self, busybox_rootfs):
        """busybox plus applet symlinks, passwd/group, and the mount-point dirs; a tar of it."""
        root = busybox_rootfs.path
        assert (root / "bin/busybox").is_file()
        assert os.readlink(root / "bin/sh") == "busybox"
        assert os.readlink(root / "bin/cat") == "busybox"
        assert (root / "etc/passwd").read_text().startswith("root:x:0:0:")
        for sub in ("tmp", "proc", "sys", "dev", "etc/group"):
            assert (root / sub).exists(), sub
        assert busybox_rootfs.tar.stat().st_size > 1_000_000


@pytest.fixture(scope="module")
def podman_image(podman_env):
    podman_env.import_image("localhost/tg-control:1", LABELS, expose=[5432])
    yield "localhost/tg-control:1"
    podman_env.rmi("localhost/tg-control:1")


@pytest.fixture(scope="module")
def docker_image(docker):
    docker.import_image("tg-control:1", LABELS, expose=[5432])
    yield "tg-control:1"
    docker.rmi("tg-control:1")


@pytest.mark.podman
class TestPodmanControl:
    @pytest.fixture
    def image(self, podman_image):
        return podman_image

    def test_defaults_inside(self, podman, image):
        """A plain run gets podman's default capabilities, seccomp filter, no NoNewPrivs."""
        proc = podman.run(image, *STATUS, check=True)
        status = probe_status(proc.stdout)
        expected = _podman_default_caps()
        caps = caps_from_hex(status["CapEff"])
        if expected is not None:
            assert caps == expected
        assert "CAP_SYS_ADMIN" not in caps and "CAP_NET_ADMIN" not in caps
        assert caps_from_hex(status["CapBnd"]) == caps
        assert status["Seccomp"] == "2"
        assert status["NoNewPrivs"] == "0"

    def test_label_and_expose_in_image(self, podman, image):
        """import --change puts labels and ExposedPorts where hooks read them."""
        assert podman.image_labels(image) == LABELS
        config = podman.image_inspect(image)["Config"]
        assert "5432/tcp" in config["ExposedPorts"]
        assert config["Cmd"] == ["/bin/sh"]

    def test_network_none(self, podman, image):
        """The default network is none: only lo inside."""
        proc = podman.run(image, "ls", "/sys/class/net", check=True)
        assert proc.stdout.split() == ["lo"]

    def test_hooks_dir_is_used(self, podman, image, tmp_path):
        """A hook JSON dropped in .hooks_dir runs (precreate: empty env, absolute paths)."""
        marker = tmp_path / "ran"
        (podman.hooks_dir / "control.json").write_text(json.dumps({
            "version": "1.0.0",
            "hook": {"path": "/bin/sh", "args": ["sh", "-c", f"/bin/cat > {marker}"]},
            "when": {"always": True},
            "stages": ["prestart"],
        }))
        podman.run(image, "true", check=True)
        state = json.loads(marker.read_text())
        assert state["status"] in ("creating", "created") and state["id"]  # podman says creating

    def test_scratch_is_private(self, podman):
        """Storage, runroot, tmp, hooks and containers.conf all live under the scratch dir."""
        info = json.loads(podman.podman("info", "--format", "json", check=True).stdout)
        store = info["store"]
        assert store["graphRoot"].startswith(str(podman.dir))
        assert store["runRoot"].startswith(str(podman.dir))
        assert info["host"]["ociRuntime"]["name"] == podman.runtime
        assert info["host"]["cgroupManager"] == "cgroupfs"


@pytest.mark.runc
class TestRuncControl:
    def test_bundle_runs(self, runc_bundle):
        """runc spec's defaults inside: its three capabilities, NoNewPrivs, no seccomp."""
        bundle = runc_bundle(args=list(STATUS))
        proc = bundle.run("tg-control")
        assert proc.returncode == 0, proc.stderr
        status = probe_status(proc.stdout)
        assert caps_from_hex(status["CapEff"]) == set(
            bundle.config["process"]["capabilities"]["effective"])
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "0"

    def test_bundle_is_deleted_and_exit_code_passes(self, runc_bundle):
        """A failing command's exit code comes back; the container is gone afterwards."""
        bundle = runc_bundle(args=["sh", "-c", "exit 7"])
        assert bundle.run("tg-exit").returncode == 7
        assert bundle.runc_cmd("list", "-q").stdout.split() == []


@pytest.mark.docker
class TestDockerControl:
    @pytest.fixture
    def image(self, docker_image):
        return docker_image

    def test_defaults_inside(self, docker, image):
        """docker 20.10's defaults: CapEff 0xa80425fb, seccomp filter, no NoNewPrivs; only lo."""
        proc = docker.run(image, "sh", "-c", "cat /proc/self/status; ls /sys/class/net",
                          check=True)
        status = probe_status(proc.stdout)
        caps = caps_from_hex(status["CapEff"])
        assert caps == caps_from_hex("00000000a80425fb")
        assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "0"
        assert proc.stdout.split()[-1] == "lo"

    def test_label_in_image(self, docker, image):
        assert docker.image_labels(image) == LABELS
        assert "5432/tcp" in docker.image_inspect(image)["Config"]["ExposedPorts"]

    def test_private_daemon(self, docker):
        """Data and exec roots are ours, and the daemon runs as the pid we started."""
        info = json.loads(docker.docker("info", "--format", "{{json .}}", check=True).stdout)
        assert info["DockerRootDir"] == str(docker.data_root)
        assert info["CgroupDriver"] == "cgroupfs"
        assert int((docker.dir / "dockerd.pid").read_text()) == docker.pids["dockerd"]

    def test_add_runtime(self, docker_factory, image):
        """--add-runtime is parameterisable: a second daemon runs runc under another name."""
        alt = docker_factory(runtimes={"tgcontrol": "/usr/sbin/runc"})
        alt.import_image("tg-control:1", LABELS)
        proc = alt.run("tg-control:1", *STATUS, args=["--runtime", "tgcontrol"], check=True)
        assert probe_status(proc.stdout)["Seccomp"] == "2"
