"""Shared setup for the role and podman-network proofs (test_roles.py, test_network_podman.py).

Topology, all made here and removed at teardown (even on failure):

    host netns                          test netns S ("peers")
    tgh<sfx> (veth, up, no address) --- tgs<sfx>: 10.214.N.1/24 (gateway, API)
      |  podman macvlan network           10.214.N.251 (other peer)
      |  tgnet-<sfx> on it                10.214.N.252 (broker)  10.214.N.253 (payment provider)
      +-- containers: podman's .2+ or     169.254.169.254/32 168.63.129.16/32 169.254.1.1/32
          --ip .201+, fd00:214:N::/64     fd00:214:N::1 (API v6)  ::fffe (other)  fd00:ec2::254/128
                                          busybox httpd on 53 (tcp), 80, 443, 5672, 8080 (every address)

Containers reach S through the macvlan on tgh; S holds every peer address
locally, so nothing is routed or forwarded and the host's namespace, firewall
and sysctls are never touched (podman's default bridge, which turns on
ip_forward, is never used).

tiergate is installed into the session's scratch podman with a copy of the
shipped tiergate/configs/policy.toml whose documentation-range CIDRs are replaced by
the test peers' addresses (`tiergate --policy FILE install`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import Podman, kill_procs, require_binary, run_cmd
from tiergate_fixtures import trusting_policy

REPO = Path(__file__).resolve().parent.parent
SHIPPED_POLICY = REPO / "tiergate" / "configs" / "policy.toml"
TIERGATE = [sys.executable, "-m", "tiergate.cli.main"]
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
NSENTER = "/usr/bin/nsenter"
NFT = "/usr/sbin/nft"
BUSYBOX = "/bin/busybox"
BODY = "tiergate-peer-ok"
PEER_PORTS = (53, 80, 443, 5672, 8080)
IMAGE_PREFIX = "localhost/tiergate-role-"

# A static probe binary for what busybox cannot show. Prints "<what> ok" or
# "<what> errno=<NAME>" and exits 0 / 1.
PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/if_ether.h>

static int report(const char *what, int rc) {
    if (rc < 0) { printf("%s errno=%s\n", what, strerrorname_np(errno)); return 1; }
    printf("%s ok\n", what); return 0;
}
static void *thr(void *arg) { *(int *)arg = 42; return NULL; }

int main(int argc, char **argv) {
    const char *w = argc > 1 ? argv[1] : "";
    if (!strcmp(w, "thread")) {
        pthread_t t; int v = 0; int e = pthread_create(&t, NULL, thr, &v);
        if (e) { errno = e; return report("thread", -1); }
        pthread_join(t, NULL);
        return report("thread", v == 42 ? 0 : (errno = EINVAL, -1));
    }
    if (!strcmp(w, "fork")) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        if (p > 0) waitpid(p, NULL, 0);
        return report("fork", p < 0 ? -1 : 0);
    }
    if (!strcmp(w, "inet")) return report("inet", socket(AF_INET, SOCK_STREAM, 0));
    if (!strcmp(w, "inet6")) return report("inet6", socket(AF_INET6, SOCK_DGRAM, 0));
    if (!strcmp(w, "netlink")) return report("netlink", socket(AF_NETLINK, SOCK_RAW, 0));
    if (!strcmp(w, "raw")) return report("raw", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
    if (!strcmp(w, "packet")) return report("packet", socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)));
    if (!strcmp(w, "unix")) {
        int sv[2]; char buf[8] = {0};
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return report("unix", -1);
        int l = socket(AF_UNIX, SOCK_STREAM, 0);
        if (l < 0) return report("unix", -1);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "/tmp/tgprobe-%d.sock", (int)getpid());
        unlink(a.sun_path);
        if (bind(l, (void *)&a, sizeof a) < 0 || listen(l, 1) < 0) return report("unix", -1);
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (void *)&a, sizeof a) < 0) return report("unix", -1);
        int s = accept(l, NULL, NULL);
        if (s < 0 || write(c, "hi", 2) != 2 || read(s, buf, 2) != 2 || strcmp(buf, "hi"))
            return report("unix", -1);
        unlink(a.sun_path);
        return report("unix", 0);
    }
    if (!strcmp(w, "uring")) {
        struct io_uring_params p; memset(&p, 0, sizeof p);
        return report("uring", (int)syscall(__NR_io_uring_setup, 4, &p));
    }
    if (!strcmp(w, "mount")) return report("mount", mount("none", "/mnt", "tmpfs", 0, NULL));
    fprintf(stderr, "usage: tgprobe thread|fork|inet|inet6|netlink|raw|packet|unix|uring|mount\n");
    return 2;
}
"""


def _die_with_parent() -> None:
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return run_cmd(list(argv), check=check, timeout=timeout)


def build_probe(dest: Path) -> Path:
    gcc = require_binary("gcc")
    src = dest.with_suffix(".c")
    src.write_text(PROBE_C)
    sh(gcc, "-static", "-O1", "-pthread", "-o", str(dest), str(src), timeout=120)
    return dest


class Peers:
    """Test netns S, the veth into it, the podman macvlan network and the listeners."""

    def __init__(self, podman: Podman | None, tmp: Path, ports: tuple[int, ...] = PEER_PORTS) -> None:
        sfx = secrets.token_hex(3)
        self.podman, self.tmp, self.ports = podman, tmp, ports
        self.ns, self.host_if, self.ns_if = f"tg-peers-{sfx}", f"tgh{sfx}", f"tgs{sfx}"
        self.network = f"tgnet-{sfx}"
        n = 1 + secrets.randbelow(250)
        h = f"{n:x}"
        self.net4, self.net6 = f"10.214.{n}", f"fd00:214:{h}:"
        # peers sit at the top of the subnet: podman hands out container addresses from .2 / ::2
        self.api, self.other, self.broker, self.psp = (f"{self.net4}.{i}" for i in (1, 251, 252, 253))
        self.api6, self.other6 = f"{self.net6}:1", f"{self.net6}:fffe"
        self.metadata, self.metadata6, self.link_local = "169.254.169.254", "fd00:ec2::254", "169.254.1.1"
        self._next = 200  # addresses for containers started with --ip (.201 ...)
        self.procs: list[subprocess.Popen] = []
        self.made_ns = self.made_link = self.made_net = False

    def next_ip(self) -> str:
        self._next += 1
        assert self._next < 250, "out of --ip addresses"
        return f"{self.net4}.{self._next}"

    def setup(self) -> Peers:
        sh(IP, "netns", "add", self.ns)
        self.made_ns = True
        sh(IP, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.ns)
        self.made_link = True
        sh(IP, "link", "set", self.host_if, "up")
        sh(IP, "-n", self.ns, "link", "set", "lo", "up")
        sh(IP, "-n", self.ns, "link", "set", self.ns_if, "up")
        for a in (f"{self.api}/24", f"{self.other}/24", f"{self.broker}/24", f"{self.psp}/24",
                  f"{self.metadata}/32", "168.63.129.16/32", f"{self.link_local}/32"):
            sh(IP, "-n", self.ns, "addr", "add", a, "dev", self.ns_if)
        for a in (f"{self.api6}/64", f"{self.other6}/64", f"{self.metadata6}/128"):
            sh(IP, "-n", self.ns, "addr", "add", a, "dev", self.ns_if, "nodad")
        if self.podman is not None:  # None: the caller puts its own engine's network on host_if
            self.podman.podman("network", "create", "-d", "macvlan", "-o", f"parent={self.host_if}",
                               "--subnet", f"{self.net4}.0/24", "--gateway", self.api,
                               "--ipv6", "--subnet", f"{self.net6}:/64", "--gateway", self.api6,
                               self.network, check=True)
            self.made_net = True
        self.www = self.tmp / "peer-www"
        self.www.mkdir(parents=True, exist_ok=True)
        (self.www / "index.html").write_text(BODY + "\n")
        for port in self.ports:
            self.spawn(BUSYBOX, "httpd", "-f", "-p", str(port), "-h", str(self.www))
        deadline = time.monotonic() + 10
        while True:
            out = sh(IP, "netns", "exec", self.ns, BUSYBOX, "netstat", "-ltn", check=False).stdout
            if all(f":{p} " in out for p in self.ports):
                break
            for p in self.procs:
                assert p.poll() is None, f"a peer server exited early: {p.args}"
            assert time.monotonic() < deadline, "peer servers did not listen within 10 s"
            time.sleep(0.1)
        return self

    def spawn(self, *argv: str) -> subprocess.Popen:
        # `ip netns exec` execs argv: the Popen pid is the server's own pid
        p = subprocess.Popen([IP, "netns", "exec", self.ns, *argv], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p

    def teardown(self) -> None:
        kill_procs(self.procs)
        if self.made_net:
            self.podman.podman("network", "rm", "-f", self.network, timeout=60)
        if self.made_link:
            run_cmd([IP, "link", "del", self.host_if], timeout=20)
        if self.made_ns:
            run_cmd([IP, "netns", "del", self.ns], timeout=20)

    def http_from_peers(self, url: str, secs: int = 2) -> bool:
        """wget from S (the outside world) to a container."""
        return self.get_from_peers(url, secs) is not None

    def get_from_peers(self, url: str, secs: int = 2) -> str | None:
        """The body wget from S gets from url, or None when it fails."""
        r = run_cmd([IP, "netns", "exec", self.ns, "/usr/bin/timeout", "-s", "KILL", str(secs),
                     BUSYBOX, "wget", "-q", "-O", "-", url], timeout=secs + 10)
        return r.stdout if r.returncode == 0 else None


def make_test_policy(peers: Peers, dest: Path) -> Path:
    """The shipped policy with its documentation CIDRs replaced by the test peers' addresses."""
    text = SHIPPED_POLICY.read_text()
    for old, new in (("192.0.2.0/24", f"{peers.api}/32"), ("2001:db8:0:443::/64", f"{peers.api6}/128"),
                     ("198.51.100.0/24", f"{peers.psp}/32"), ("203.0.113.10/32", f"{peers.broker}/32")):
        assert text.count(f'"{old}"') == 1, f"shipped policy no longer holds {old}"
        text = text.replace(f'"{old}"', f'"{new}"')
    # a tier that opts out of the metadata block by name (issue 16)
    text += ('\n[tiers.metadata-reader]\ndescription = "baseline that may reach cloud metadata"\n'
             'extends = "baseline"\nstrictness = 10\nallow_metadata = true\n')
    # image-processor writes its output to a host dir: restricted tiers write only where named
    marker = 'seccomp = "image-processor"\n'
    assert text.count(marker) == 1, "shipped policy's image-processor tier changed"
    text = text.replace(marker, marker + f'writable_binds = ["{dest.parent.parent}/im-out"]\n')
    dest.write_text(text)
    # the seccomp profiles are looked up next to the policy first, then in the shipped dir
    return dest


class RoleEnv:
    """Scratch podman + tiergate installed with the test policy + role images + peers."""

    ROLES = ("web", "payment-worker", "image-processor", "node-worker", "queue-worker", "scheduler",
             "database")

    def __init__(self, podman: Podman, rootfs_dir: Path) -> None:
        self.podman = podman
        self.dir = Path(tempfile.mkdtemp(prefix="tg-roles-", dir="/tmp"))
        self.rootfs_dir = rootfs_dir
        self.peers = Peers(podman, self.dir)
        self.tg = self.dir / "tg"  # tiergate's own state, apart from the files tests mount
        self.tg.mkdir()
        self.log = self.tg / "decisions.jsonl"
        self.images: list[str] = []

    def install(self, trusted: list[str] = ()) -> None:
        """The peers up and tiergate installed with the test policy (make_test_policy), trusting
        the `trusted` image ids up to privileged."""
        self.peers.setup()
        policy = make_test_policy(self.peers, self.tg / "policy.toml")
        trusting_policy(policy, trusted, base=policy)
        r = run_cmd([*TIERGATE, "--policy", str(policy), "install", "--engine", "podman",
                     "--hooks-dir", str(self.podman.hooks_dir), "--bin-dir", str(self.tg / "bin"),
                     "--log", str(self.log), "--cache-dir", str(self.tg / "cache")], timeout=60)
        assert r.returncode == 0, r.stderr

    def start(self) -> RoleEnv:
        t = time.monotonic()
        # image: busybox tree + /www/index.html + /bin/tgprobe
        root = self.dir / "rootfs"
        shutil.copytree(self.rootfs_dir, root, symlinks=True)
        (root / "www").mkdir()
        (root / "www" / "index.html").write_text(BODY + "\n")
        (root / "mnt").mkdir(exist_ok=True)
        build_probe(root / "bin" / "tgprobe")
        (root / "bin" / "tgprobe.c").unlink()
        tar = self.dir / "roles.tar"
        sh("tar", "--numeric-owner", "-C", str(root), "-cf", str(tar), ".", timeout=60)
        for role in self.ROLES:
            self.image(role, {"io.tiergate.tier": role}, expose=[5432] if role == "database" else
                       [80] if role == "web" else [], tar=tar)
        self.image("unlabelled", {}, tar=tar)  # control: same image, no role label (baseline)
        self.image("restricted", {"io.tiergate.tier": "restricted"}, tar=tar)  # control: the roles' base
        self.image("metadata-reader", {"io.tiergate.tier": "metadata-reader"}, tar=tar)  # allow_metadata
        # controls without tiergate (tier privileged: untouched, trusted by image id: no name earns
        # trust), the last two with the roles' EXPOSE
        controls = [self.image("privileged", {"io.tiergate.tier": "privileged"}, tar=tar),
                    self.image("control-db", {"io.tiergate.tier": "privileged"}, expose=[5432], tar=tar),
                    self.image("control-web", {"io.tiergate.tier": "privileged"}, expose=[80], tar=tar)]
        self.install(trusted=[self.podman.image_inspect(ref)["Id"] for ref in controls])
        print(f"\nrole env ready in {time.monotonic() - t:.1f} s (peers {self.peers.net4}.0/24)")
        return self

    def image(self, name: str, labels: dict, expose=(), tar=None) -> str:
        ref = IMAGE_PREFIX + name
        self.podman.import_image(ref, labels, expose=expose, tar=tar)
        self.images.append(ref)
        return ref

    def stop(self) -> None:
        try:
            self.podman.remove_containers()
        finally:
            try:
                self.peers.teardown()
            finally:
                run_cmd([*TIERGATE, "uninstall", "--engine", "podman", "--hooks-dir",
                         str(self.podman.hooks_dir), "--bin-dir", str(self.tg / "bin")], timeout=60)
                self.podman.clear_hooks()
                if self.images:
                    self.podman.rmi(*self.images)
                shutil.rmtree(self.dir, ignore_errors=True)

    # -- running -------------------------------------------------------------
    def net_args(self, ip: str | None = None) -> list[str]:
        return ["--network", self.peers.network, *(["--ip", ip] if ip else [])]

    def run(self, image: str, *cmd: str, args=(), timeout: float = 60) -> subprocess.CompletedProcess:
        ref = image if "/" in image else IMAGE_PREFIX + image
        return self.podman.run(ref, *cmd, args=list(args), timeout=timeout)

    def script(self, image: str, probes: dict[str, str], *, args=(), prologue: str = "",
               settle_v6: bool = True, timeout: float = 60) -> dict[str, bool]:
        """Run every probe (a shell command) concurrently in one container; {name: succeeded}."""
        lines = [prologue] if prologue else []
        if settle_v6:  # new IPv6 addresses are tentative for 1-2 s: wait (bounded) before probing
            lines.append("i=0; while [ $i -lt 60 ] && ip -6 addr | grep -q tentative; do "
                         "sleep 0.1; i=$((i+1)); done")
        for i, cmd in enumerate(probes.values()):
            lines.append(f"( if ( {cmd} ) >/dev/null 2>&1; then echo P{i}=OK; else echo P{i}=NO; fi ) &")
        lines.append("wait")
        proc = self.run(image, "/bin/sh", "-c", "\n".join(lines), args=args, timeout=timeout)
        assert proc.returncode == 0, f"{image}: exit {proc.returncode}: {proc.stderr[-800:]}"
        got = {}
        for line in proc.stdout.splitlines():
            if line.startswith("P") and "=" in line:
                k, v = line[1:].split("=", 1)
                got[int(k)] = v == "OK"
        names = list(probes)
        assert set(got) == set(range(len(names))), proc.stdout
        return {names[i]: got[i] for i in range(len(names))}


    def serving(self, image: str, ip: str, serve: str, probes: dict[str, str], ingress: dict[str, str],
                *, args=(), timeout: float = 30) -> dict[str, bool]:
        """A detached container that runs `serve` (servers in the background), then the probes.

        While it runs, every URL in `ingress` is fetched from the peers' netns S.
        Returns egress results under their names and ingress results as "in <name>".
        """
        name = f"tg-serve-{secrets.token_hex(4)}"
        body = ["i=0; while [ $i -lt 60 ] && ip -6 addr | grep -q tentative; do sleep 0.1; i=$((i+1)); done",
                serve]
        for i, cmd in enumerate(probes.values()):
            body.append(f"( if ( {cmd} ) >/dev/null 2>&1; then echo P{i}=OK; else echo P{i}=NO; fi ) &")
        body += ["wait", "echo DONE", "exec sleep 120"]
        ref = image if "/" in image else IMAGE_PREFIX + image
        self.podman.podman("run", "-d", "--name", name, *self.net_args(ip), *args, ref,
                           "/bin/sh", "-c", "\n".join(body), check=True, timeout=timeout)
        try:
            def done():
                out = self.podman.podman("logs", name, timeout=20).stdout
                return out if "DONE" in out else None
            out = wait_for(done, timeout, f"{image}: probes to finish")
            got = {}
            for line in out.splitlines():
                if line.startswith("P") and "=" in line:
                    k, v = line[1:].split("=", 1)
                    got[int(k)] = v == "OK"
            names = list(probes)
            assert set(got) == set(range(len(names))), out
            result = {names[i]: got[i] for i in range(len(names))}
            for key, url in ingress.items():
                result["in " + key] = self.peers.http_from_peers(url)
            return result
        finally:
            self.podman.podman("rm", "-f", "--time", "0", name, timeout=60)

    def probe_binary(self, image: str, whats: list[str], *, args=()) -> dict[str, str]:
        """tgprobe WHAT for each (sequentially, one container): {what: "ok" | "errno=NAME"}."""
        cmd = "; ".join(f"/bin/tgprobe {w}" for w in whats)
        proc = self.run(image, "/bin/sh", "-c", cmd, args=args)
        out = {}
        for line in proc.stdout.splitlines():
            what, _, result = line.partition(" ")
            if what in whats:
                out[what] = result
        assert set(out) == set(whats), f"{image}: rc {proc.returncode} {proc.stdout!r} {proc.stderr[-500:]!r}"
        return out

    def tier_granted(self, image: str) -> set[str]:
        """Tiers the decision log shows `image` (a role name or reference) was given at precreate."""
        ref = (image if "/" in image else IMAGE_PREFIX + image) + ":"
        tiers = set()
        for line in self.log.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("stage") == "precreate" and str(rec.get("image", "")).startswith(ref):
                tiers.add(rec.get("tier") if rec.get("outcome") == "allowed" else rec.get("outcome"))
        return tiers


def wget(url: str, secs: int = 2) -> str:
    """A probe command: busybox wget bounded by timeout (busybox's wget -T segfaults)."""
    return f"timeout {secs} wget -q -O - {url} | grep -q {BODY}"


def container_pid(podman: Podman, name: str) -> int:
    out = podman.podman("inspect", "--format", "{{.State.Pid}}", name, check=True).stdout.strip()
    return int(out)


def wait_for(pred, secs: float, what: str):
    deadline = time.monotonic() + secs
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {secs:g} s waiting for {what}")
        time.sleep(0.1)


def skip_unless_tools() -> None:
    for p in (IP, NSENTER, NFT, BUSYBOX, "/usr/bin/timeout"):
        if not os.path.exists(p):
            pytest.skip(f"{p} is missing")


def role_env_fixture(name: str):
    """The module-scoped `env` fixture both role test files use: peers up, torn down after."""
    import time

    import pytest

    @pytest.fixture(scope="module")
    def env(podman_env, busybox_rootfs):
        skip_unless_tools()
        e = RoleEnv(podman_env, busybox_rootfs.path)
        started = time.monotonic()
        try:
            yield e.start()
        finally:
            e.stop()
            print(f"\n{name}: {time.monotonic() - started:.1f} s with setup and teardown")

    return env


def refused(proc) -> bool:
    return proc.returncode != 0 and "tiergate: refused" in proc.stderr
