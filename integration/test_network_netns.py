"""Network policy enforced by nftables inside a network namespace (root; no podman).

Topology (all created here, removed in finalizers even on failure):

    netns S ("server")                          netns C ("container")
    tgs<sfx>: 10.213.0.1/24  10.213.0.2/24       tgc<sfx>: 10.213.0.10/24
              169.254.169.254/32 168.63.129.16   fd00:213::10/64
              169.254.1.1/32                     (+ on-link routes to the
              fd00:213::1/64 fd00:213::2/64       metadata / link-local peers)
              fd00:ec2::254/128
    busybox httpd on 80, 8080, 53 (tcp);         busybox httpd on 8081, 8082, 8083
    a UDP echo on :53

Traffic only ever flows between S and C; the host's namespace, firewall and
sysctls are not touched (veth ends are created directly inside S and C).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import kill_procs

from tiergate.network import apply as A
from tiergate.network.ruleset import build

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
BUSYBOX = "/bin/busybox"
TIMEOUT_BIN = "/usr/bin/timeout"
SETPRIV = "/usr/bin/setpriv"
NFT = "/usr/sbin/nft"
PY = sys.executable

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nft)"),
    pytest.mark.skipif(not all(os.path.exists(p) for p in (IP, BUSYBOX, TIMEOUT_BIN, NFT, A.NSENTER)),
                       reason="needs iproute2, busybox-static, coreutils timeout, nftables, util-linux nsenter"),
]

S_HTTP_PORTS = (80, 8080, 53)
C_HTTP_PORTS = (8081, 8082, 8083)
BODY = "tiergate-probe-ok"

UDP_ECHO = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(1.0)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(512)
    except socket.timeout:
        continue
    s.sendto(b"echo:" + data[:64], peer)
"""

UDP_PROBE = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
try:
    s.sendto(b"q", (sys.argv[1], int(sys.argv[2])))
    data, _ = s.recvfrom(512)
except OSError as exc:
    print("fail", exc); sys.exit(1)
print(data.decode()); sys.exit(0 if data == b"echo:q" else 1)
"""


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this server if the test process dies without running its finalizers."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(*args: str, check: bool = True, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check, **kw)


class Net:
    def __init__(self) -> None:
        sfx = secrets.token_hex(3)
        self.S, self.C = f"tg-s-{sfx}", f"tg-c-{sfx}"
        self.vs, self.vc = f"tgs{sfx}", f"tgc{sfx}"
        self.c_path = f"/run/netns/{self.C}"
        self.procs: list[subprocess.Popen] = []
        self.created: list[str] = []

    # -- setup / teardown -------------------------------------------------
    def setup(self, tmp: str) -> None:
        for ns in (self.S, self.C):
            run(IP, "netns", "add", ns)
            self.created.append(ns)
        run(IP, "link", "add", self.vs, "netns", self.S, "type", "veth", "peer", "name", self.vc, "netns", self.C)
        for ns, dev in ((self.S, self.vs), (self.C, self.vc)):
            run(IP, "-n", ns, "link", "set", "lo", "up")
            run(IP, "-n", ns, "link", "set", dev, "up")
        for a in ("10.213.0.1/24", "10.213.0.2/24", "169.254.169.254/32", "168.63.129.16/32", "169.254.1.1/32"):
            run(IP, "-n", self.S, "addr", "add", a, "dev", self.vs)
        for a in ("fd00:213::1/64", "fd00:213::2/64", "fd00:ec2::254/128"):
            run(IP, "-n", self.S, "addr", "add", a, "dev", self.vs, "nodad")
        run(IP, "-n", self.C, "addr", "add", "10.213.0.10/24", "dev", self.vc)
        run(IP, "-n", self.C, "addr", "add", "fd00:213::10/64", "dev", self.vc, "nodad")
        for dst in ("169.254.169.254/32", "168.63.129.16/32", "169.254.1.1/32"):
            run(IP, "-n", self.C, "route", "add", dst, "dev", self.vc)
        run(IP, "-n", self.C, "-6", "route", "add", "fd00:ec2::254/128", "dev", self.vc)
        www = os.path.join(tmp, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write(BODY + "\n")
        for port in S_HTTP_PORTS:
            self.spawn(self.S, BUSYBOX, "httpd", "-f", "-p", str(port), "-h", www)
        for port in C_HTTP_PORTS:
            self.spawn(self.C, BUSYBOX, "httpd", "-f", "-p", str(port), "-h", www)
        self.spawn(self.S, PY, "-I", "-c", UDP_ECHO, "53", "600")
        self.wait_listening()

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen:
        # `ip netns exec` execs argv: the Popen pid is the server's pid
        p = subprocess.Popen([IP, "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        want_s = {f":{p}" for p in S_HTTP_PORTS}
        want_c = {f":{p}" for p in C_HTTP_PORTS}
        while time.monotonic() < deadline:
            s = run(IP, "netns", "exec", self.S, "/bin/busybox", "netstat", "-ltun", check=False).stdout
            c = run(IP, "netns", "exec", self.C, "/bin/busybox", "netstat", "-ltn", check=False).stdout
            if all(w + " " in s for w in want_s) and "udp" in s and all(w + " " in c for w in want_c):
                return
            for p in self.procs:
                assert p.poll() is None, f"a test server exited early: {p.args}"
            time.sleep(0.1)
        raise AssertionError("test servers did not start listening within 10 s")

    def teardown(self) -> None:
        kill_procs(self.procs)
        for ns in self.created:
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=20)

    # -- probes -----------------------------------------------------------
    def http(self, src_ns: str, url: str, secs: int = 2) -> bool:
        r = run(IP, "netns", "exec", src_ns, TIMEOUT_BIN, "-s", "KILL", str(secs),
                BUSYBOX, "wget", "-q", "-O", "-", url, check=False, timeout=secs + 10)
        return r.returncode == 0 and BODY in r.stdout

    def udp(self, src_ns: str, host: str, port: int, secs: float = 1.5) -> bool:
        r = run(IP, "netns", "exec", src_ns, PY, "-I", "-c", UDP_PROBE, host, str(port), str(secs),
                check=False, timeout=secs + 10)
        return r.returncode == 0

    def probes(self) -> dict[str, bool]:
        """Every probe, run concurrently (bounded); True = reached the peer."""
        C, S = self.C, self.S
        jobs = {
            "allowed 10.213.0.1:80": lambda: self.http(C, "http://10.213.0.1:80/"),
            "other port 10.213.0.1:8080": lambda: self.http(C, "http://10.213.0.1:8080/"),
            "other peer 10.213.0.2:80": lambda: self.http(C, "http://10.213.0.2:80/"),
            "metadata 169.254.169.254:80": lambda: self.http(C, "http://169.254.169.254:80/"),
            "metadata 168.63.129.16:80": lambda: self.http(C, "http://168.63.129.16:80/"),
            "link-local 169.254.1.1:80": lambda: self.http(C, "http://169.254.1.1:80/"),
            "v6 allowed [fd00:213::1]:80": lambda: self.http(C, "http://[fd00:213::1]:80/"),
            "v6 other peer [fd00:213::2]:80": lambda: self.http(C, "http://[fd00:213::2]:80/"),
            "v6 metadata [fd00:ec2::254]:80": lambda: self.http(C, "http://[fd00:ec2::254]:80/"),
            "dns udp to nameserver 10.213.0.1": lambda: self.udp(C, "10.213.0.1", 53),
            "dns udp to other 10.213.0.2": lambda: self.udp(C, "10.213.0.2", 53),
            "dns tcp to nameserver 10.213.0.1": lambda: self.http(C, "http://10.213.0.1:53/"),
            "dns tcp to other 10.213.0.2": lambda: self.http(C, "http://10.213.0.2:53/"),
            "ingress published 8081": lambda: self.http(S, "http://10.213.0.10:8081/"),
            "ingress policy port 8083": lambda: self.http(S, "http://10.213.0.10:8083/"),
            "ingress unpublished 8082": lambda: self.http(S, "http://10.213.0.10:8082/"),
        }
        with ThreadPoolExecutor(max_workers=8) as pool:
            futs = {k: pool.submit(f) for k, f in jobs.items()}
            return {k: f.result(timeout=60) for k, f in futs.items()}

    def rules_in_c(self) -> list[dict]:
        out = run(IP, "netns", "exec", self.C, NFT, "-j", "list", "ruleset").stdout
        return [x for x in json.loads(out)["nftables"] if "rule" in x or "set" in x or "table" in x or "chain" in x]


EXPECT_ALLOWED = {"allowed 10.213.0.1:80", "v6 allowed [fd00:213::1]:80", "dns udp to nameserver 10.213.0.1",
                  "dns tcp to nameserver 10.213.0.1", "ingress published 8081", "ingress policy port 8083"}

POLICY = {
    "name": "itest", "egress": "allowlist", "ingress": "published",
    "allow": [
        {"cidr": "10.213.0.1/32", "ports": [80], "proto": "tcp"},
        {"cidr": "fd00:213::1/128", "ports": [80], "proto": "tcp"},
        # allowlisted on purpose: metadata / link-local drops must win unless allow_link_local
        {"cidr": "169.254.0.0/16", "ports": [], "proto": "any"},
        {"cidr": "168.63.129.16/32", "ports": [], "proto": "any"},
        {"cidr": "fd00:ec2::/64", "ports": [], "proto": "any"},
    ],
    "deny": [], "ingress_ports": [8083], "dns": "resolv.conf",
    "allow_link_local": False, "log": True, "rate": None,
}
FACTS = {"id": "deadbeefcafe0123456789", "nameservers": ["10.213.0.1"], "ports": [{"port": 8081, "proto": "tcp"}]}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = Net()
    try:
        n.setup(str(tmp_path_factory.mktemp("netns")))
        yield n
    finally:
        n.teardown()


def test_control_then_policy(net):
    # CONTROL: no ruleset in C -> every probe reaches its peer (so no "blocked" below
    # passes because nothing listened or nothing was routable).
    run(NFT, "--version")
    control = net.probes()
    print("\ncontrol:", json.dumps(control, indent=1))
    assert all(control.values()), {k: v for k, v in control.items() if not v}

    t = time.perf_counter()
    A.apply(build(POLICY, FACTS), net.c_path)
    print(f"apply(small policy): {(time.perf_counter() - t) * 1000:.1f} ms")
    run(IP, "-n", net.C, "neigh", "flush", "all")  # IPv6 below must resolve neighbours through the policy
    before = {r["name"]: r["packets"] for r in A.read_counters(net.c_path)}

    got = net.probes()
    print("with policy:", json.dumps(got, indent=1))
    expect = {k: (k in EXPECT_ALLOWED) for k in got}
    assert got == expect

    after = {r["name"]: r["packets"] for r in A.read_counters(net.c_path)}
    for name in ("metadata4", "metadata6", "link-local4", "egress-default", "dns-other", "ingress-default"):
        assert after[name] > before.get(name, 0), (name, before.get(name), after[name])
    print("drop counters:", {k: v for k, v in after.items()})


def test_reapply_replaces_not_duplicates(net):
    doc = build(POLICY, FACTS)
    run(IP, "netns", "exec", net.C, NFT, "delete", "table", "inet", "tiergate", check=False)
    # a namespace without the table (what an engine hands over) takes a transaction that only creates
    # it (nothing for the kernel to free after its commit); one that has it, the replacing one
    assert A.apply(doc, net.c_path) == "created"
    first = net.rules_in_c()
    for _ in range(3):
        assert A.apply(doc, net.c_path) == "replaced"
    again = net.rules_in_c()
    assert len(first) == len(again)
    assert sum(1 for x in again if "table" in x) == 1
    # a different policy replaces the old one entirely
    A.apply(build(dict(POLICY, egress="none", allow=[]), FACTS), net.c_path)
    assert not any("set" in x for x in net.rules_in_c())
    assert not net.http(net.C, "http://10.213.0.1:80/")
    A.apply(doc, net.c_path)
    assert net.http(net.C, "http://10.213.0.1:80/")


def test_a_table_made_after_the_query_is_replaced_not_duplicated(net, monkeypatch):
    """The namespace gains the table between the query and the create (another start in a shared
    namespace): the create fails as a whole, and the replacing transaction runs instead."""
    from tiergate.network import metadata

    doc = build(POLICY, FACTS)
    A.apply(doc, net.c_path)
    def listing() -> list[dict]:  # handles change with every new table
        return [{k: {f: v for f, v in o.items() if f != "handle"} for k, o in x.items()} for x in net.rules_in_c()]

    first = listing()
    monkeypatch.setattr(metadata, "table_exists", lambda family, name: False)
    assert A.apply(doc, net.c_path) == "replaced"
    assert listing() == first
    # the metadata block's egress chains the same way (the kernel says EEXIST, then replaced)
    from tiergate.network.netns import run_in

    try:
        for _ in range(2):
            assert not any(run_in(net.c_path, lambda: metadata.load_egress([net.vc], [])))
        listed = run(IP, "netns", "exec", net.C, NFT, "list", "table", "netdev", metadata.EGRESS_TABLE).stdout
        assert listed.count("chain egress0") == 1, listed
    finally:  # the later tests reach link-local peers from C
        run(IP, "netns", "exec", net.C, NFT, "delete", "table", "netdev", metadata.EGRESS_TABLE, check=False)


def test_apply_by_pid(net):
    p = net.spawn(net.C, "/bin/sleep", "60")
    try:
        # until `ip netns exec` has entered C, the pid is still in the host's namespace
        # (and apply() rightly refuses it)
        want = os.stat(net.c_path)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            st = os.stat(f"/proc/{p.pid}/ns/net")
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino) and \
                    os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("sleep did not enter the container namespace within 5 s")
        A.apply(build(dict(POLICY, egress="none", allow=[]), FACTS), p.pid)
        assert not net.http(net.C, "http://10.213.0.1:80/")
        rows = A.read_counters(p.pid)
        assert any(r["name"] == "egress-default" and r["packets"] > 0 for r in rows)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=5)
        A.apply(build(POLICY, FACTS), net.c_path)


def test_unprivileged_workload_cannot_undo(net):
    A.apply(build(POLICY, FACTS), net.c_path)
    drop_caps = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    r = run(IP, "netns", "exec", net.C, *drop_caps, NFT, "flush", "ruleset", check=False)
    print("\nunprivileged nft flush ruleset:", r.returncode, r.stderr.strip()[:200])
    assert r.returncode != 0
    r = run(IP, "netns", "exec", net.C, *drop_caps, IP, "link", "set", "lo", "down", check=False)
    print("unprivileged ip link set lo down:", r.returncode, r.stderr.strip()[:200])
    assert r.returncode != 0
    # root without CAP_NET_ADMIN (what a container's root gets) fails too
    r = run(IP, "netns", "exec", net.C, SETPRIV, "--inh-caps=-all", "--bounding-set=-net_admin",
            NFT, "flush", "ruleset", check=False)
    assert r.returncode != 0
    assert any(x.get("table", {}).get("name") == "tiergate" for x in net.rules_in_c())
    assert not net.http(net.C, "http://169.254.169.254:80/")
    assert not net.http(net.C, "http://10.213.0.2:80/")
    assert net.http(net.C, "http://10.213.0.1:80/")


def test_allow_link_local_opt_out(net):
    A.apply(build(dict(POLICY, allow_link_local=True), FACTS), net.c_path)
    try:
        assert net.http(net.C, "http://169.254.169.254:80/")
        assert net.http(net.C, "http://[fd00:ec2::254]:80/")
    finally:
        A.apply(build(POLICY, FACTS), net.c_path)


def test_egress_any_minus_deny(net):
    pol = dict(POLICY, egress="any", allow=[], deny=["10.213.0.2/32", "fd00:213::2/128"])
    A.apply(build(pol, FACTS), net.c_path)
    try:
        assert net.http(net.C, "http://10.213.0.1:8080/")
        assert net.http(net.C, "http://[fd00:213::1]:80/")
        assert not net.http(net.C, "http://10.213.0.2:80/")
        assert not net.http(net.C, "http://[fd00:213::2]:80/")
        assert not net.http(net.C, "http://169.254.169.254:80/")
        rows = {r["name"]: r["packets"] for r in A.read_counters(net.c_path)}
        assert rows["deny4"] > 0 and rows["deny6"] > 0
    finally:
        A.apply(build(POLICY, FACTS), net.c_path)


def _big_policy(n: int = 10000) -> dict:
    import random
    rnd = random.Random(11)
    allow = [dict(a) for a in POLICY["allow"]]
    while len(allow) < n:
        a = rnd.getrandbits(32)
        if a >> 24 in (10, 127, 169, 0) or a >> 28 >= 14:
            continue
        allow.append({"cidr": f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{rnd.choice([24, 28, 32])}",
                      "ports": [443], "proto": "tcp"})
    return dict(POLICY, allow=allow)


def test_10k_cidr_allowlist_loads(net):
    """10,000 CIDRs load, and load again over a loaded table (their cost is measured in bench/)."""
    pol = _big_policy()
    doc = build(pol, FACTS)
    A.apply(doc, net.c_path)
    A.apply(doc, net.c_path)  # replacing a loaded 10k table
    try:
        loaded = [x["set"] for x in json.loads(run(IP, "netns", "exec", net.C, NFT, "-j", "list", "sets").stdout)["nftables"]
                  if "set" in x]
        assert sum(len(s.get("elem", [])) for s in loaded) >= 9000
        assert net.http(net.C, "http://10.213.0.1:80/")
        assert not net.http(net.C, "http://10.213.0.2:80/")
    finally:
        A.apply(build(POLICY, FACTS), net.c_path)


def test_rate_limit_shaping(net):
    if not os.path.exists("/usr/sbin/tc"):
        pytest.skip("tc not installed: cannot observe the qdisc")
    from tiergate.network.shaping import shape
    assert shape(net.c_path, "10mbit") == [net.vc]
    assert shape(net.c_path, "500kbit") == [net.vc]  # re-apply replaces
    out = run("/usr/sbin/tc", "-n", net.C, "qdisc", "show", "dev", net.vc).stdout
    assert out.count("tbf") == 1 and "500Kbit" in out, out
    assert net.http(net.C, "http://10.213.0.1:80/")


def test_host_namespace_untouched(net):
    with pytest.raises(A.NetworkApplyError, match="host"):
        A.apply(build(POLICY, FACTS), "/proc/self/ns/net")
    r = run(NFT, "-j", "list", "tables", check=False)
    if r.returncode == 0:
        assert not any(x.get("table", {}).get("name") == "tiergate" for x in json.loads(r.stdout)["nftables"])


def test_programmed_ahead_holds_only_for_that_namespace_with_its_interfaces():
    """The shim programs the namespace a spec names while runc creates (network/program.py), then
    keeps that only if the init's namespace is the same one with the same interfaces. Real
    namespaces: the one programmed holds; another one, or the same after an interface came, does
    not; and a namespace never programmed has no rules (the control for the first)."""
    from harness import netns_with_eth0

    from tiergate.network.program import holds, interfaces, program_ahead

    tier = {"passthrough": False, "network": None}
    raw = {"process": {"capabilities": {"bounding": ["CAP_NET_RAW"]}}}
    with netns_with_eth0("tg-ahead", "10.219.3.2/24") as a, netns_with_eth0("tg-ahead", "10.219.3.3/24") as b:
        spec = dict(raw, linux={"namespaces": [{"type": "network", "path": f"/run/netns/{a}"}]})
        rec: dict = {}
        ahead = program_ahead(spec, tier, rec, [])
        assert ahead is not None and "CAP_NET_RAW: egress drops on" in rec["metadata"], rec
        rules = {ns: subprocess.run([IP, "-n", ns, "rule"], capture_output=True, text=True, timeout=30).stdout
                 for ns in (a, b)}
        assert "prohibit" in rules[a] and "prohibit" not in rules[b], rules
        assert holds(ahead, f"/run/netns/{a}")
        assert not holds(ahead, f"/run/netns/{b}")
        assert not holds(None, f"/run/netns/{a}")
        subprocess.run([IP, "-n", a, "link", "add", "eth1", "type", "veth", "peer", "name", "tgpeer1"], check=True,
                       timeout=30)
        assert [n for _, n in interfaces(f"/run/netns/{a}")].count("eth1") == 1
        assert not holds(ahead, f"/run/netns/{a}")
    assert program_ahead({"linux": {"namespaces": [{"type": "network"}]}}, tier, {}, []) is None  # a fresh one
