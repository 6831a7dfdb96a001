"""Escape suite (issue 9): known container-escape and abuse techniques, each tried in every
non-privileged tier and shown to work in a `privileged` control run where it can work here.

One static C probe (integration/probes/escape.c, built with gcc -static) tries every
technique and prints `name=OK|<ERRNO>|NA detail`. Per tier, one container runs it on a
podman macvlan network whose peer netns answers on 169.254.169.254 (roles_env.Peers),
with nothing but the image label asking for the tier; a second container asks for the
control's escalations (capabilities, seccomp=unconfined, unmask=ALL, --pid host, the
engine socket, --cgroupns host) and must be refused or clamped back to a blocked result.
The control is the `privileged` tier (tiergate passes it through) with those flags.
docs/escapes.md holds the table; keep the two in step.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from harness import run_cmd
from roles_env import Peers, make_test_policy, skip_unless_tools
from tiergate_fixtures import LABEL, Hooks, refusal_line, trusting_policy

pytestmark = pytest.mark.podman

PROBE_SRC = Path(__file__).resolve().parent / "probes" / "escape.c"
PREFIX = "localhost/tiergate-esc-"
TIERS = ("baseline", "restricted", "isolated", "web", "payment-worker", "image-processor",
         "node-worker", "queue-worker", "scheduler", "database")

# technique -> what it would give an attacker (the doc's second column)
TECHNIQUES = {
    "unshare_user": "a user namespace: full capabilities over new namespaces, the usual first step of kernel exploits",
    "unshare_mnt": "a private mount namespace in which to mount things",
    "mount_tmpfs": "mount a filesystem: hide or shadow files, the building block of most mount escapes",
    "mount_bind": "bind-mount /: re-expose masked or read-only paths",
    "proc_mount": "a fresh, unmasked procfs (writable /proc/sys, /proc/sysrq-trigger, kcore)",
    "keyctl": "a new session keyring: keyring bugs, reading keys of the host's uid",
    "bpf": "eBPF maps/programs: kernel attack surface, tracing of other processes",
    "perf_event_open": "cpu-wide perf counters: side channels, kernel attack surface",
    "ptrace": "attach to another process: read/write its memory, hijack it",
    "open_by_handle_at": "shocker: open any inode of the host filesystem by handle",
    "kernel_module": "load kernel code (init_module/finit_module)",
    "raw_socket": "raw IP packets: spoofing, ARP/ICMP tricks on the network",
    "packet_socket": "AF_PACKET: sniff and inject frames; a history of kernel bugs",
    "sysrq_trigger": "/proc/sysrq-trigger: reboot or crash the host",
    "cgroup_release_agent": "mount cgroup v1 and set release_agent: a command run by the host as root",
    "engine_socket": "the engine socket mounted in: start a privileged container on the host",
    "metadata_169_254_169_254": "the cloud metadata address: instance credentials",
    "lo_down": "take its own interfaces down (SIOCSIFFLAGS): the firewall's interface matches change",
    "nft_flush": "flush its own netns' nftables ruleset: remove the tier's network policy",
    "mknod_block_read": "mknod the host's disk (/dev/vda) and read it: every file on the host",
    "io_uring": "io_uring: bypasses seccomp for the operations it performs, many kernel bugs",
    "host_pid_ns": "the host's pid namespace (--pid host): see, signal and ptrace host processes",
    "proc_sys_write": "write /proc/sys/kernel/core_pattern: a pipe run by the host as root",
    "setns_proc1_mnt": "setns into /proc/1/ns/mnt: with --pid host, the host's mount namespace",
    "chroot": "chroot and chdir out of it",
    "pivot_root": "pivot_root into a prepared root (with a mount namespace)",
}

# Techniques that cannot work at all on this host, even in the control (the reason is the skip).
CANNOT_WORK_HERE = {
    "sysrq_trigger": "/proc/sysrq-trigger is absent in this kernel (CONFIG_MAGIC_SYSRQ off)",
    "kernel_module": "this kernel has no module support (no /proc/modules: CONFIG_MODULES off): "
                     "finit_module is ENOSYS everywhere",
}

# (tier, technique) that a tier allows on purpose, with why. Nothing here may be an escape.
ALLOWED_BY_DESIGN: dict[tuple[str, str], str] = {
    ("baseline", "ptrace"): "Docker's default profile allows ptrace (kernel >= 4.8); only processes of the same "
                            "container are reachable (--pid host is clamped away); restricted and up deny it",
    ("baseline", "chroot"): "CAP_SYS_CHROOT is in the engine's default set; breaking out of a chroot lands at "
                            "the container's own root (its mount namespace), never the host's",
}

# (tier, technique) a tier allows when the run asks for it (--cap-add within the tier's allowed set).
ALLOWED_WHEN_ASKED: dict[tuple[str, str], str] = {
    ("baseline", "raw_socket"): "CAP_NET_RAW is in baseline's allowed set (Docker's default set has it): "
                                "--cap-add NET_RAW is granted; podman's default does not ask for it",
    ("baseline", "packet_socket"): "as raw_socket: CAP_NET_RAW granted on request",
}

CONTROL_CAPS = ("SYS_ADMIN", "NET_ADMIN", "NET_RAW", "SYS_PTRACE", "DAC_READ_SEARCH", "MKNOD",
                "PERFMON", "BPF", "SYS_CHROOT", "SYS_MODULE")


def _host_can_read_block() -> str | None:
    """None, or why this host's own root cannot read the root filesystem's block device."""
    st = os.stat("/")
    for name in os.listdir("/dev"):
        path = f"/dev/{name}"
        try:
            if stat.S_ISBLK(os.stat(path).st_mode) and os.stat(path).st_rdev == st.st_dev:
                with open(path, "rb") as fh:
                    fh.read(512)
                return None
        except OSError as exc:
            return f"even the host's root cannot open {path} ({exc.strerror}: this machine's device policy)"
    return "the root filesystem's block device is not in /dev"


def _host_block_dev() -> str:
    st = os.stat("/")
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


class FakeEngineSocket:
    """A unix socket that answers like an engine API (`HTTP/1.0 200 OK`); served by one thread."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.hits = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                self.hits += 1
                conn.settimeout(1)
                try:
                    conn.recv(256)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nOK")
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def parse(output: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in output.splitlines():
        name, eq, rest = line.partition("=")
        if eq and name in TECHNIQUES:
            result, _, detail = rest.partition(" ")
            out[name] = (result, detail)
    return out


class EscapeEnv:
    def __init__(self, podman, rootfs: Path, dir: Path):
        self.podman, self.rootfs, self.dir = podman, rootfs, dir
        self.peers = Peers(podman, dir)
        self.images: list[str] = []
        self.results: dict[str, dict[str, tuple[str, str]]] = {}
        self.hostile: dict[str, dict] = {}
        self.raw: dict[str, str] = {}
        self.hooks: Hooks | None = None
        self.fake: FakeEngineSocket | None = None

    def start(self):
        root = self.dir / "rootfs"
        shutil.copytree(self.rootfs, root, symlinks=True)
        run_cmd([shutil.which("gcc") or "gcc", "-static", "-O1", "-o", str(root / "bin/escape"), str(PROBE_SRC)],
                check=True, timeout=120)
        tar = self.dir / "esc.tar"
        run_cmd(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tar), "."], check=True, timeout=60)
        for tier in ("privileged", *TIERS):
            ref = PREFIX + tier
            self.podman.import_image(ref, {LABEL: tier}, tar=tar)
            self.images.append(ref)
        self.peers.setup()
        policy = make_test_policy(self.peers, self.dir / "policy.toml")
        # the privileged control image is trusted by its id (no name earns trust)
        trusting_policy(policy, [self.podman.image_inspect(PREFIX + "privileged")["Id"]], base=policy)
        self.hooks = Hooks(self.podman, self.dir / "tg", policy=policy)
        self.marker = self.dir / "host-marker"  # only on the host's filesystem
        self.marker.write_text("host\n")
        (self.dir / "sock").mkdir()
        self.fake = FakeEngineSocket(self.dir / "sock" / "docker.sock")
        return self

    def stop(self):
        try:
            self.podman.remove_containers()
        finally:
            if self.fake:
                self.fake.close()
            self.peers.teardown()
            if self.images:
                self.podman.rmi(*self.images)

    def control_flags(self) -> list[str]:
        flags = ["--privileged", "--security-opt", "seccomp=unconfined", "--security-opt", "unmask=ALL",
                 "--pid", "host", "--cgroupns", "host", "-v", f"{self.fake.path}:/run/docker.sock"]
        for cap in CONTROL_CAPS:
            flags += ["--cap-add", cap]
        return flags

    def probe(self, tier: str, extra: list[str], *what: str) -> tuple[int, str, str]:
        args = ["--network", self.peers.network, "-e", f"TG_BLOCK_DEV={_host_block_dev()}",
                "-e", f"TG_HOST_PID={os.getpid()}", "-e", f"TG_HOST_MARKER={self.marker}", *extra]
        proc = self.hooks.run(PREFIX + tier, "/bin/escape", *(what or ("all",)), args=args, timeout=90)
        return proc.returncode, proc.stdout, proc.stderr

    def run_all(self):
        t0 = time.monotonic()
        rc, out, err = self.probe("privileged", self.control_flags())
        assert rc == 0 and "DONE" in out, f"control did not run: rc {rc}\n{out}\n{err[-800:]}"
        self.raw["control"] = out
        self.results["control"] = parse(out)
        for tier in TIERS:
            rc, out, err = self.probe(tier, [])
            assert rc == 0 and "DONE" in out, f"{tier} did not run: rc {rc}\n{out}\n{err[-800:]}"
            self.raw[tier] = out
            self.results[tier] = parse(out)
            rc, out, err = self.probe(tier, self.control_flags())
            if rc != 0:
                self.hostile[tier] = {"refused": refusal_line(subprocess_like(rc, err)) or err.strip()[-300:]}
            else:
                self.hostile[tier] = {"clamped": parse(out)}
        self.elapsed = time.monotonic() - t0
        print(f"\nescape probes: {len(TIERS) * 2 + 1} containers in {self.elapsed:.1f} s")
        print(json.dumps({t: {k: v[0] for k, v in r.items()} for t, r in self.results.items()}, indent=None))
        print(json.dumps({t: h.get("refused") or {k: v[0] for k, v in h["clamped"].items()} for t, h in self.hostile.items()}))
        print("control:", self.raw["control"])


def subprocess_like(rc, err):
    class P:
        returncode = rc
        stderr = err
    return P


@pytest.fixture(scope="module")
def esc(podman_env, busybox_rootfs):
    skip_unless_tools()
    if not shutil.which("gcc"):
        pytest.skip("gcc is missing (apt-get install gcc)")
    d = Path(os.path.realpath(__import__("tempfile").mkdtemp(prefix="tg-esc-", dir="/tmp")))
    env = EscapeEnv(podman_env, busybox_rootfs.path, d)
    try:
        env.start()
        env.run_all()
        yield env
    finally:
        try:
            env.stop()
        finally:
            shutil.rmtree(d, ignore_errors=True)


def blocked(result: tuple[str, str] | None) -> bool:
    return result is not None and result[0] != "OK"


@pytest.mark.parametrize("technique", list(TECHNIQUES))
@pytest.mark.parametrize("tier", TIERS)
def test_blocked_in_tier(esc, tier, technique):
    got = esc.results[tier].get(technique)
    assert got is not None, f"{tier}: probe printed no line for {technique}:\n{esc.raw[tier]}"
    if (tier, technique) in ALLOWED_BY_DESIGN:
        pytest.skip(f"{tier} allows {technique} by design: {ALLOWED_BY_DESIGN[tier, technique]}")
    assert blocked(got), f"{tier}: {technique} WORKED: {got[1]}"
    if technique == "mknod_block_read":  # the mknod itself must fail (the open fails on this host anyway)
        assert not got[1].startswith("mknod ok"), f"{tier}: mknod of a block device worked: {got}"


@pytest.mark.parametrize("tier", TIERS)
def test_escalation_flags_refused_or_clamped(esc, tier):
    """The control's flags asked for on a tier image: refused with one line, or clamped so every probe fails."""
    h = esc.hostile[tier]
    if "refused" in h:
        assert h["refused"].startswith("tiergate: refused:"), h["refused"]
        return
    got = h["clamped"]
    worked = {k: v for k, v in got.items() if v[0] == "OK" and (tier, k) not in ALLOWED_BY_DESIGN
              and (tier, k) not in ALLOWED_WHEN_ASKED}
    assert not worked, f"{tier} with escalation flags: {worked}"


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_works_in_privileged_control(esc, technique):
    got = esc.results["control"].get(technique)
    assert got is not None, esc.raw["control"]
    if technique == "mknod_block_read" and _host_can_read_block():
        assert got[1].startswith("mknod ok"), f"control could not even mknod: {got}"
        pytest.skip(_host_can_read_block() + f"; the control's mknod works (CAP_MKNOD), its open: {got[0]}")
    if technique in CANNOT_WORK_HERE:
        assert got[0] != "OK", f"{technique} works here after all: {got}"
        pytest.skip(CANNOT_WORK_HERE[technique] + f" (control: {got[0]})")
    assert got[0] == "OK", f"control: {technique} did not work: {got}"
