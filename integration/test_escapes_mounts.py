"""Issue 15's mount, path, device and seccomp escapes: each shown working without tiergate
(CONTROL: the scratch podman with no hook, or docker on plain runc), then refused or clamped
with tiergate, checked from inside the container and on the host where the harm would land.

Podman runs with the precreate hook (tiergate_fixtures.Hooks); docker with the runtime shim
added as `--runtime tiergate` to a private dockerd (harness.Docker). Images are busybox
imports; the restricted one is labelled restricted, the others ask for nothing (baseline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness import kill_procs
from test_escapes import FakeEngineSocket
from tiergate_fixtures import REPO, Hooks, refusal_line, tg, tg_control, tg_images, tg_policy  # noqa: F401 (fixtures)

LABEL = "io.tiergate.tier"
STRICT_SECCOMP = '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], ' \
                 '"action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}'


def uniq(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode != 0, proc.stdout
    line = refusal_line(proc) or proc.stderr
    assert "tiergate: refused:" in line and all(w in line for w in words), proc.stderr
    return line


@pytest.fixture
def host_dir(tmp_path) -> Path:
    """A root-owned 0755 dir on the host holding a marker file (as /srv/data would)."""
    d = tmp_path / "hostdata"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    (d / "marker").write_text("host marker\n")
    return d


# --------------------------------------------------------------------------- podman

@pytest.fixture
def pm(podman, tg, tg_control, tg_images):
    """(tiergate hooks, control hooks, images) for one test; containers removed afterwards."""
    return tg, tg_control, tg_images


def test_podman_named_bind_volume_of_root(pm, host_dir):
    """#1: `volume create --opt type=none --opt o=bind --opt device=/`: the volume is the host's /."""
    tg, control, images = pm
    vol = uniq("tgv")
    ok(tg.podman_cmd("volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt", "device=/", vol))
    try:
        pwn = host_dir / "pwned-by-volume"
        cmd = ("sh", "-c", f"cat /host{host_dir}/marker && echo x > /host{pwn}")
        assert "host marker" in ok(control.run(images["restricted"], *cmd, args=["-v", f"{vol}:/host"]))
        assert pwn.exists()
        pwn.unlink()
        refused(tg.run(images["restricted"], *cmd, args=["-v", f"{vol}:/host"]), "sensitive host path", "as /")
        out = tg.run(images["unlabelled"], "sh", "-c", "ls /host | wc -l", args=["-v", f"{vol}:/host"])
        assert ok(out).strip() == "0"  # baseline: the mount is removed, /host is an empty dir
        assert not pwn.exists()
    finally:
        tg.podman_cmd("volume", "rm", "-f", vol)


def test_podman_overlay_volume_of_root(pm):
    """#4: `-v /:/host:O`: an overlay whose lower dir is the host's /."""
    tg, control, images = pm
    cmd = ("sh", "-c", "head -c 5 /host/etc/shadow")
    assert ok(control.run(images["restricted"], *cmd, args=["-v", "/:/host:O"]))
    refused(tg.run(images["restricted"], *cmd, args=["-v", "/:/host:O"]), "mounts (overlay) sensitive host path")
    proc = tg.run(images["unlabelled"], *cmd, args=["-v", "/:/host:O"])
    assert proc.returncode != 0 and not proc.stdout


def test_podman_tiergate_state_is_not_mountable(pm):
    """#2 (mount side): the compiled cache, the log dir, the launcher's bin dir and their parents."""
    tg, control, images = pm
    tg.run(images["unlabelled"], "true")  # the cache exists
    cache = tg.cache_dir
    probe = ("sh", "-c", "ls /c 2>/dev/null | head -1; touch /c/pwned 2>/dev/null; true")
    assert ok(control.run(images["unlabelled"], *probe, args=["-v", f"{cache}:/c"])).strip()
    assert (cache / "pwned").exists()
    (cache / "pwned").unlink()
    for src in (cache, tg.bin_dir, tg.dir, tg.log.parent):
        refused(tg.run(images["restricted"], *probe, args=["-v", f"{src}:/c"]), "sensitive host path")
        proc = tg.run(images["unlabelled"], *probe, args=["-v", f"{src}:/c"])
        assert ok(proc).strip() == "", proc.stdout  # baseline: removed, /c is empty
    assert not (cache / "pwned").exists() and not (tg.dir / "pwned").exists()


def _flipper(link: Path, a: Path, b: Path, seconds: float) -> subprocess.Popen:
    """A process that atomically points `link` at a, then b, then a ... for `seconds`."""
    code = ("import os,sys,time\nl,a,b,t=sys.argv[1],sys.argv[2],sys.argv[3],time.monotonic()+float(sys.argv[4])\n"
            "i=0\nwhile time.monotonic()<t:\n    tmp=l+'.tmp'\n    os.symlink((a,b)[i%2],tmp)\n"
            "    os.replace(tmp,l)\n    i+=1\n")
    return subprocess.Popen([sys.executable, "-c", code, str(link), str(a), str(b), str(seconds)])


def test_podman_symlink_race_on_a_bind_source(pm, tmp_path):
    """#5: `-v /x/lnk:/host` while a user flips lnk between a harmless dir and /."""
    tg, control, images = pm
    user_dir = tmp_path / "user"
    harmless = tmp_path / "harmless"
    user_dir.mkdir()
    harmless.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chown(user_dir, 65534, 65534)  # a directory a non-root user owns (like /tmp or $HOME)
    link = user_dir / "lnk"
    link.symlink_to(harmless)
    cmd = ("sh", "-c", "test -e /host/etc/shadow && echo HOST || echo harmless")
    # Without tiergate whatever lnk points at when runc mounts is what the container gets.
    flip = _flipper(link, harmless, Path("/"), 60)
    try:
        seen = set()
        deadline = time.monotonic() + 40
        while "HOST" not in seen and time.monotonic() < deadline:
            seen.add(ok(control.run(images["restricted"], *cmd, args=["-v", f"{link}:/host"])).strip())
        assert "HOST" in seen
        for _ in range(5):
            line = refused(tg.run(images["restricted"], *cmd, args=["-v", f"{link}:/host"]))
            # whichever way lnk pointed at the check: refused as / or as a path a user can swap
            assert "(/, as /)" in line or f"passes through {user_dir}, owned by uid 65534" in line, line
            assert ok(tg.run(images["unlabelled"], *cmd, args=["-v", f"{link}:/host"])).strip() == "harmless"
    finally:
        kill_procs([flip])
    # Pointing at a harmless dir at check time is not enough: the path itself is refused.
    link.unlink()
    link.symlink_to(harmless)
    refused(tg.run(images["restricted"], "true", args=["-v", f"{link}:/host"]), "swappable host path")


def test_podman_privileged_sysfs_and_cgroup_read_only(pm):
    """#6: a clamped --privileged (baseline) gets sysfs and cgroupfs read-only, host devices and masks clamped
    (/proc/timer_list stands for docker's masks: /proc/kcore is absent in this kernel)."""
    tg, control, images = pm
    cmd = ("sh", "-c", "echo $(cat /sys/kernel/mm/ksm/run) > /sys/kernel/mm/ksm/run && echo SYSFS-W; "
                       "echo max > /sys/fs/cgroup/pids/pids.max && echo CGROUP-W; "
                       "test -b /dev/vda && echo DEV; [ -n \"$(head -c 20 /proc/timer_list 2>/dev/null)\" ] && echo TIMERS; true")
    before = Path("/sys/kernel/mm/ksm/run").read_text()
    out = ok(control.run(images["unlabelled"], *cmd, args=["--privileged"]))
    assert "SYSFS-W" in out and "CGROUP-W" in out and "DEV" in out and "TIMERS" in out, out
    out = ok(tg.run(images["unlabelled"], *cmd, args=["--privileged"]))
    assert "SYSFS-W" not in out and "CGROUP-W" not in out and "DEV" not in out and "TIMERS" not in out, out
    assert Path("/sys/kernel/mm/ksm/run").read_text() == before
    refused(tg.run(images["restricted"], "true", args=["--privileged"]), "runs --privileged")


def test_podman_dir_holding_an_engine_socket(pm, tmp_path):
    """#10: `-v <dir holding docker.sock>:/x` is a socket mount, at any depth under the dir."""
    tg, control, images = pm
    deep = tmp_path / "eng" / "run"
    deep.mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    fake = FakeEngineSocket(deep / "docker.sock")
    try:
        cmd = ("sh", "-c", "test -S /x/run/docker.sock && echo SOCKET || echo none")
        assert ok(control.run(images["restricted"], *cmd, args=["-v", f"{tmp_path / 'eng'}:/x"])).strip() == "SOCKET"
        for src, inside in ((tmp_path / "eng", "/x/run/docker.sock"), (deep, "/x/docker.sock")):
            c = ("sh", "-c", f"test -S {inside} && echo SOCKET || echo none")
            refused(tg.run(images["restricted"], *c, args=["-v", f"{src}:/x"]), "directory holding engine socket")
            assert ok(tg.run(images["unlabelled"], *c, args=["-v", f"{src}:/x"])).strip() == "none"
    finally:
        fake.close()


def test_podman_device_allow_list_matches_the_host_device(podman, podman_env, it_dir, tg_images, tg_control):
    """devices = ["/dev/fuse"] lets the host's fuse in, never /dev/vda renamed /dev/fuse."""
    policy = it_dir / "policy-fuse.toml"
    text = (REPO / "tiergate" / "configs" / "policy.toml").read_text()
    policy.write_text(text.replace('host_namespaces = []\ndevices = []', 'host_namespaces = []\ndevices = ["/dev/fuse"]', 1))
    tg = Hooks(podman_env, it_dir / "tg-fuse", policy=policy)
    img = tg_images["unlabelled"]
    cmd = ("sh", "-c", "ls -l /dev/fuse | cut -c1")
    assert ok(tg_control.run(img, *cmd, args=["--device", "/dev/vda:/dev/fuse"])).strip() == "b"
    out = tg.run(img, "sh", "-c", "test -e /dev/fuse && echo PRESENT || echo absent", args=["--device", "/dev/vda:/dev/fuse"])
    assert ok(out).strip() == "absent"
    assert ok(tg.run(img, *cmd, args=["--device", "/dev/fuse"])).strip() == "c"  # the real one stays


def test_podman_callers_stricter_seccomp_is_kept(pm, tmp_path):
    """A caller's profile denying mkdir stays in force: intersected with the tier's, never swapped."""
    tg, control, images = pm
    prof = tmp_path / "strict.json"
    prof.write_text(STRICT_SECCOMP)
    cmd = ("sh", "-c", "mkdir /tmp/d && echo MKDIR-OK || echo MKDIR-DENIED")
    assert ok(control.run(images["unlabelled"], *cmd)).strip() == "MKDIR-OK"
    assert ok(control.run(images["unlabelled"], *cmd, args=["--security-opt", f"seccomp={prof}"])).strip() == "MKDIR-DENIED"
    assert ok(tg.run(images["unlabelled"], *cmd, args=["--security-opt", f"seccomp={prof}"])).strip() == "MKDIR-DENIED"
    assert ok(tg.run(images["unlabelled"], *cmd)).strip() == "MKDIR-OK"
    # and the tier's denials hold too: unshare is denied under the caller's allow-by-default profile
    un = ("sh", "-c", "unshare -U true && echo UNSHARE-OK || echo UNSHARE-DENIED")
    assert ok(tg.run(images["unlabelled"], *un, args=["--security-opt", f"seccomp={prof}"])).strip() == "UNSHARE-DENIED"


def test_podman_restricted_host_binds_are_read_only(pm, host_dir):
    """Issue 16: restricted writes to a host path only when the policy names it (writable_binds)."""
    tg, control, images = pm
    cmd = ("sh", "-c", "echo x > /w/written && echo WROTE || echo READONLY")
    assert ok(control.run(images["restricted"], *cmd, args=["-v", f"{host_dir}:/w"])).strip() == "WROTE"
    (host_dir / "written").unlink()
    assert ok(tg.run(images["restricted"], *cmd, args=["-v", f"{host_dir}:/w"])).strip() == "READONLY"
    assert not (host_dir / "written").exists()
    assert ok(tg.run(images["restricted"], "cat", "/w/marker", args=["-v", f"{host_dir}:/w"])) == "host marker\n"
    assert ok(tg.run(images["unlabelled"], *cmd, args=["-v", f"{host_dir}:/w"])).strip() == "WROTE"  # baseline


# --------------------------------------------------------------------------- docker

@pytest.fixture(scope="module")
def dk(it_dir, docker_factory):
    """A private dockerd with the shim added as runtime `tiergate` (runc stays the default: the control)."""
    from tiergate.engines import shim as shim_install

    bin_dir = it_dir / "shim-docker-mounts"
    exe = shim_install.install(bin_dir, "integration docker mounts", log=str(it_dir / "dm-log" / "decisions.jsonl"),
                               cache_dir=str(it_dir / "dm-cache"), say=lambda *_: None)
    engine = docker_factory(runtimes={"tiergate": str(exe)})
    engine.import_image("tg-m-restricted:1", {LABEL: "restricted"})
    engine.import_image("tg-m-plain:1", {})
    return engine


def drun(engine, image: str, *cmd: str, args=(), tiergate: bool = True):
    return engine.run(image, *cmd, args=(*(["--runtime", "tiergate"] if tiergate else []), *args))


def test_docker_named_bind_volume_in_one_line(dk, host_dir):
    """#1: `--mount type=volume,...,volume-opt=device=/` gives the host's / without tiergate."""
    vol = uniq("tgv")
    mount = f"type=volume,src={vol},dst=/host,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/"
    pwn = host_dir / "pwned-by-docker-volume"
    cmd = ("sh", "-c", f"cat /host{host_dir}/marker && echo x > /host{pwn}")
    try:
        assert "host marker" in ok(drun(dk, "tg-m-restricted:1", *cmd, args=["--mount", mount], tiergate=False))
        assert pwn.exists()
        pwn.unlink()
        proc = drun(dk, "tg-m-restricted:1", *cmd, args=["--mount", mount])
        assert proc.returncode == 125 and "tiergate: refused:" in proc.stderr and "sensitive host path" in proc.stderr
        proc = drun(dk, "tg-m-plain:1", "sh", "-c", "ls /host | wc -l", args=["--mount", mount])
        assert ok(proc).strip() == "0"
        assert not pwn.exists()
    finally:
        dk.docker("volume", "rm", "-f", vol)


def test_docker_dir_holding_its_own_socket(dk):
    """#10: the daemon's own directory (holding docker.sock and containerd.sock) is a socket mount."""
    cmd = ("sh", "-c", "test -S /d/docker.sock && echo SOCKET || echo none")
    assert ok(drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{dk.dir}:/d"], tiergate=False)).strip() == "SOCKET"
    proc = drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{dk.dir}:/d"])
    assert proc.returncode == 125 and "directory holding engine socket" in proc.stderr, proc.stderr
    assert ok(drun(dk, "tg-m-plain:1", *cmd, args=["-v", f"{dk.dir}:/d"])).strip() == "none"


def test_docker_callers_stricter_seccomp_is_kept(dk, tmp_path):
    prof = tmp_path / "strict.json"
    prof.write_text(STRICT_SECCOMP)
    cmd = ("sh", "-c", "mkdir /tmp/d && echo MKDIR-OK || echo MKDIR-DENIED")
    sec = ["--security-opt", f"seccomp={prof}"]
    assert ok(drun(dk, "tg-m-plain:1", *cmd, args=sec, tiergate=False)).strip() == "MKDIR-DENIED"
    assert ok(drun(dk, "tg-m-plain:1", *cmd, args=sec)).strip() == "MKDIR-DENIED"
    assert ok(drun(dk, "tg-m-plain:1", *cmd)).strip() == "MKDIR-OK"


def test_docker_restricted_host_binds_are_read_only(dk, host_dir):
    cmd = ("sh", "-c", "echo x > /w/written && echo WROTE || echo READONLY")
    assert ok(drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{host_dir}:/w"], tiergate=False)).strip() == "WROTE"
    (host_dir / "written").unlink()
    assert ok(drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{host_dir}:/w"])).strip() == "READONLY"
    assert not (host_dir / "written").exists()


def test_docker_tiergate_state_is_not_mountable(dk, it_dir):
    cache = it_dir / "dm-cache"
    drun(dk, "tg-m-plain:1", "true")
    cmd = ("sh", "-c", "touch /c/pwned && echo WROTE || echo no")
    assert ok(drun(dk, "tg-m-plain:1", *cmd, args=["-v", f"{cache}:/c"], tiergate=False)).strip() == "WROTE"
    (cache / "pwned").unlink()
    proc = drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{cache}:/c"])
    assert proc.returncode == 125 and "sensitive host path" in proc.stderr, proc.stderr
    assert ok(drun(dk, "tg-m-plain:1", *cmd, args=["-v", f"{cache}:/c"])).strip() in ("WROTE", "no")
    assert not (cache / "pwned").exists()


def test_docker_overlay_volume_of_root(dk, tmp_path):
    """#4 on docker: a local volume made as an overlay with lowerdir=/ shows the host's /."""
    vol = uniq("tgo")
    up, work = tmp_path / "up", tmp_path / "work"
    up.mkdir()
    work.mkdir()
    os.chmod(tmp_path, 0o755)
    ok(dk.docker("volume", "create", "--opt", "type=overlay", "--opt", "device=overlay",
                 "--opt", f"o=lowerdir=/,upperdir={up},workdir={work}", vol))
    cmd = ("sh", "-c", "head -c 5 /host/etc/shadow")
    try:
        assert ok(drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{vol}:/host"], tiergate=False))
        proc = drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{vol}:/host"])
        assert proc.returncode == 125 and "sensitive host path" in proc.stderr and "as /)" in proc.stderr, proc.stderr
        proc = drun(dk, "tg-m-plain:1", *cmd, args=["-v", f"{vol}:/host"])
        assert proc.returncode != 0 and not proc.stdout
    finally:
        dk.docker("volume", "rm", "-f", vol)


def test_docker_bind_source_a_user_can_swap(dk, tmp_path):
    """#5 on docker: a source whose path passes through a user's directory is refused whatever it points at."""
    user_dir, harmless = tmp_path / "user", tmp_path / "harmless"
    user_dir.mkdir()
    harmless.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chown(user_dir, 65534, 65534)
    (user_dir / "lnk").symlink_to(harmless)
    cmd = ("sh", "-c", "test -e /host/etc/shadow && echo HOST || echo harmless")
    assert ok(drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{user_dir / 'lnk'}:/host"], tiergate=False)).strip() == "harmless"
    (user_dir / "lnk").unlink()
    (user_dir / "lnk").symlink_to("/")  # what the user can do at any moment between check and mount
    assert ok(drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{user_dir / 'lnk'}:/host"], tiergate=False)).strip() == "HOST"
    (user_dir / "lnk").unlink()
    (user_dir / "lnk").symlink_to(harmless)
    proc = drun(dk, "tg-m-restricted:1", *cmd, args=["-v", f"{user_dir / 'lnk'}:/host"])
    assert proc.returncode == 125 and "swappable host path" in proc.stderr and "owned by uid 65534" in proc.stderr, proc.stderr
    assert ok(drun(dk, "tg-m-plain:1", *cmd, args=["-v", f"{user_dir / 'lnk'}:/host"])).strip() == "harmless"
