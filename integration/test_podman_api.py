"""The same enforcement through podman's REST API (issue 4).

A `podman system service --time 0 unix://<it_dir>/tg-api/podman.sock` runs with
the scratch podman's global flags and environment and tiergate's hooks dir;
the test drives it with the podman Python client (podman-py) and stops it by
its pid.
"""

from __future__ import annotations

import subprocess

import pytest

import harness
from harness import probe_status
from tiergate_fixtures import caps, compiled_policy, podman_argv, tg, tg_images, tg_policy  # noqa: F401

pytestmark = pytest.mark.podman

podman_py = pytest.importorskip("podman", reason="podman-py (the podman Python client) is not installed")


@pytest.fixture(scope="module")
def api(podman_env, tg, it_dir):
    """A podman API service on a unix socket with tiergate's hooks dir; a connected PodmanClient."""
    d = it_dir / "tg-api"
    d.mkdir(exist_ok=True)
    sock = d / "podman.sock"
    log = open(d / "service.log", "ab")
    try:
        proc = subprocess.Popen(podman_argv(podman_env, tg.hooks_dir, "system", "service", "--time", "0",
                                            f"unix://{sock}"),
                                env=podman_env.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    finally:
        log.close()
    client = None
    try:
        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"podman system service exited {proc.returncode}: "
                                   + (d / "service.log").read_text()[-2000:])
            return sock.exists()

        harness.wait_until(ready, timeout=30, what="podman API socket")
        client = podman_py.PodmanClient(base_url=f"unix://{sock}", timeout=60)
        harness.wait_until(lambda: client.ping(), timeout=30, what="podman API ping")
        yield client
    finally:
        if client is not None:
            client.close()
        harness.stop_pid(proc.pid, timeout=15)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        podman_env.remove_containers()


def _run(api, podman_env, image: str, cmd: list[str], **kw) -> tuple[int | None, str, Exception | None]:
    """create + start + wait + logs + remove; (exit code, output, start error). Annotations in ANNOTATIONS."""
    ctr = api.containers.create(image, cmd, network_mode="none", cgroup_parent=podman_env.cgroup_parent, **kw)
    try:
        try:
            ctr.start()
        except podman_py.errors.APIError as exc:
            return None, "", exc
        code = ctr.wait(timeout=60)
        out = b"".join(ctr.logs(stdout=True, stderr=True)).decode(errors="replace")
        ctr.reload()
        ANNOTATIONS.clear()
        ANNOTATIONS.update(ctr.attrs["Config"].get("Annotations") or {})
        return code, out, None
    finally:
        ctr.remove(force=True)


STATUS = ["cat", "/proc/self/status"]
ANNOTATIONS: dict[str, str] = {}


def test_service_is_the_scratch_podman(api, podman_env):
    info = api.info()
    assert info["store"]["graphRoot"] == str(podman_env.root)
    assert api.version()["Version"].startswith(("4.", "5."))


def test_restricted_image_enforced(api, podman_env, tg, tg_images):
    code, out, err = _run(api, podman_env, tg_images["restricted"], STATUS)
    assert err is None and code == 0, (err, out)
    status = probe_status(out)
    assert caps(status) == caps(status, "CapBnd") == {"CAP_NET_BIND_SERVICE"}
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert tg.last()["tier"] == "restricted"
    assert ANNOTATIONS["io.tiergate.tier"] == "restricted"  # the API's inspect shows the decision too


def test_control_privileged_image_through_api(api, podman_env, tg_images):
    """Control: the passthrough tier gets exactly what the API asked for (cap_add SYS_ADMIN)."""
    code, out, err = _run(api, podman_env, tg_images["privileged"], STATUS, cap_add=["SYS_ADMIN"])
    assert err is None and code == 0, (err, out)
    status = probe_status(out)
    assert "CAP_SYS_ADMIN" in caps(status) and status["NoNewPrivs"] == "0"


def test_escalation_refused_on_restricted(api, podman_env, tg, tg_images):
    """cap_add via the API: the client gets APIError 500 whose message carries the refusal line."""
    code, out, err = _run(api, podman_env, tg_images["restricted"], STATUS, cap_add=["SYS_ADMIN"])
    assert isinstance(err, podman_py.errors.APIError), (code, out)
    assert err.status_code == 500
    assert ("tiergate: refused: tier restricted refuses a container that asks for capabilities beyond the "
            "engine defaults: CAP_SYS_ADMIN (--cap-add or --privileged)") in str(err)
    assert tg.last()["outcome"] == "refused"


@pytest.mark.parametrize("kw", [{"cap_add": ["SYS_ADMIN"]}, {"privileged": True}], ids=["cap_add", "privileged"])
def test_escalation_clamped_on_baseline(api, podman_env, tg, tg_images, kw):
    code, out, err = _run(api, podman_env, tg_images["baseline"], STATUS, **kw)
    assert err is None and code == 0, (err, out)
    status = probe_status(out)
    assert "CAP_SYS_ADMIN" not in caps(status)
    assert caps(status) <= set(compiled_policy()["tiers"]["baseline"]["capabilities"])
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert tg.last()["tier"] == "baseline"
    assert ANNOTATIONS["io.tiergate.tier"] == "baseline"
    assert "clamped: " in ANNOTATIONS["io.tiergate.notes"]
