"""Issue 16: cloud metadata and link-local closed in every tier but privileged, on podman and docker.

Peers (roles_env.Peers): a test netns S behind a veth, holding 169.254.169.254,
168.63.129.16, 169.254.1.1, fd00:ec2::254 and ordinary peers, busybox httpd on
each. Podman reaches S through a podman macvlan network on the veth; docker
(a private dockerd with --bridge=none --iptables=false) through a docker macvlan
network on another veth: neither touches the host's firewall, routes or sysctls.

Every tier (baseline, restricted and each role) is tried against a control
that tiergate leaves alone (podman: tier privileged; docker: the same image
on a daemon without tiergate), which reaches every address. Inside, the
workload tries to undo the block (`ip rule del`, `ip route add`, `nft flush
ruleset` with the host's nft bind-mounted in) before probing again.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest

from roles_env import BODY, IP, Peers, role_env_fixture, sh

env = role_env_fixture("test_metadata")

SETTLE = "i=0; while [ $i -lt 60 ] && ip -6 addr | grep -q tentative; do sleep 0.1; i=$((i+1)); done"
METADATA = {"169.254.169.254": "http://169.254.169.254/", "168.63.129.16": "http://168.63.129.16/",
            "169.254.1.1 (link-local)": "http://169.254.1.1/", "fd00:ec2::254": "http://[fd00:ec2::254]/"}
# The host's nft, bind-mounted read-only: the workload's own attempt to flush every table.
NFT_MOUNTS = ["-v", "/usr/sbin/nft:/bin/nft:ro", "-v", "/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:ro",
              "-v", "/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro", "-v", "/lib64:/lib64:ro"]
UNDO = ("nft flush ruleset; echo NFT=$?; ip rule del pref 101; echo RULE=$?; ip -6 rule del pref 101; echo RULE6=$?; "
        "ip route add 169.254.169.254/32 dev eth0; echo ROUTE=$?; ip route flush table main; echo FLUSH=$?; "
        "ip link set eth0 down; echo LINK=$?")


def probe_script(peer: str, undo: bool) -> str:
    """Probes before and after the undo attempts; lines `B <name>=OK|NO` and `A <name>=OK|NO`."""
    urls = dict(METADATA, **{"ordinary peer": f"http://{peer}:80/"})
    lines = [SETTLE]
    for phase in ("B", "A") if undo else ("B",):
        if phase == "A":
            lines.append(UNDO)
        for name, url in urls.items():
            lines.append(f"if timeout 2 wget -q -O - {url} 2>/dev/null | grep -q {BODY}; "
                         f"then echo '{phase} {name}=OK'; else echo '{phase} {name}=NO'; fi")
    return "\n".join(lines)


def results(out: str) -> dict[str, bool]:
    got = {}
    for line in out.splitlines():
        if line[:2] in ("B ", "A ") and "=" in line:
            name, _, v = line.partition("=")
            got[name] = v == "OK"
    return got


def expected(reach_peer: bool, undo: bool = True) -> dict[str, bool]:
    out = {}
    for phase in ("B", "A") if undo else ("B",):
        out |= {f"{phase} {m}": False for m in METADATA} | {f"{phase} ordinary peer": reach_peer}
    return out


# tier -> reaches the ordinary peer on port 80 (its network policy allows it). node-worker is
# restricted's network with a seccomp filter that denies fork: a shell cannot run these probes
# there, and its namespace is programmed exactly as restricted's.
PODMAN_TIERS = {"unlabelled": True, "restricted": True, "web": False, "payment-worker": False,
                "queue-worker": False, "scheduler": False, "database": False, "image-processor": False}


@pytest.mark.podman
def test_podman_every_tier_but_privileged_is_closed_even_after_undo_attempts(env):
    peer = env.peers.other
    got = {}
    for image in [*PODMAN_TIERS, "privileged"]:
        proc = env.run(image, "/bin/sh", "-c", probe_script(peer, True), args=[*env.net_args(), *NFT_MOUNTS])
        got[image] = results(proc.stdout)
        print(f"\n{image}: rc {proc.returncode} {json.dumps(got[image])}\n{proc.stdout[-600:]}")
        undo = {k: v for k, v in (line.split("=", 1) for line in proc.stdout.splitlines()
                                  if line.split("=", 1)[0] in ("NFT", "RULE", "RULE6", "ROUTE", "FLUSH", "LINK"))}
        if image != "privileged" and image != "image-processor":
            assert undo and all(v != "0" for v in undo.values()), (image, undo)  # no NET_ADMIN: every undo fails
    assert got["privileged"] == {k: True for k in expected(True)}, got["privileged"]  # control reaches all
    for image, reach in PODMAN_TIERS.items():
        assert got[image] == expected(reach), image
    assert env.tier_granted("unlabelled") == {"baseline"} and env.tier_granted("privileged") == {"privileged"}


@pytest.mark.podman
def test_podman_slirp4netns_is_closed_too(env):
    """slirp4netns (podman's user-mode network, host connections made for the container): the rules are
    in its namespace and a connect to the metadata address is refused inside, before any packet leaves.
    (No control here: its packets would leave this machine for a real metadata service.)"""
    import shutil

    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    script = ("ip rule; timeout 3 wget -q -O - http://169.254.169.254/ 2>&1; echo RC=$?; "
              "timeout 3 wget -q -O - http://[fd00:ec2::254]/ 2>&1; echo RC6=$?")
    proc = env.run("unlabelled", "/bin/sh", "-c", script, args=["--network", "slirp4netns:enable_ipv6=true"])
    print("\nslirp4netns:", proc.stdout, proc.stderr[-300:])
    assert re.search(r"to 169\.254\.0\.0/16 .*prohibit", proc.stdout)  # busybox: "lookup unspec prohibit"
    assert "Permission denied" in proc.stdout and "RC=0" not in proc.stdout and "RC6=0" not in proc.stdout


@pytest.mark.podman
def test_cap_net_raw_cannot_send_a_frame_to_metadata(env, tmp_path):
    """baseline with CAP_NET_RAW (docker's default set has it; podman grants it when asked): an
    AF_PACKET frame addressed to 169.254.169.254 needs no route, so the rules alone would not stop
    it; the egress chains tiergate adds for such a workload do. Counted where it would arrive (S)."""
    import subprocess

    p = env.peers
    probe = tmp_path / "pktsend"
    sh("gcc", "-static", "-O1", "-o", str(probe), str(Path(__file__).resolve().parent / "probes" / "pktsend.c"),
       timeout=120)
    table = "tgmdcount"
    subprocess.run([IP, "netns", "exec", p.ns, "nft", "-f", "-"], check=True, timeout=30, text=True,
                   input=f"table ip {table} {{\n chain in {{\n type filter hook input priority 0;\n"
                         f" ip daddr 169.254.169.254 icmp type echo-request counter;\n }}\n}}\n")
    mac = json.loads(sh(IP, "-n", p.ns, "-j", "link", "show", p.ns_if).stdout)[0]["address"]

    def arrived() -> int:
        out = sh(IP, "netns", "exec", p.ns, "nft", "list", "table", "ip", table).stdout
        return int(re.search(r"counter packets (\d+)", out).group(1))

    got = {}
    for image in ("privileged", "unlabelled"):
        ip = p.next_ip()
        before = arrived()
        proc = env.run(image, "/bin/pktsend", "eth0", mac, ip, p.metadata,
                       args=[*env.net_args(ip), "--cap-add", "NET_RAW", "-v", f"{probe}:/bin/pktsend:ro"])
        got[image] = (proc.stdout.strip(), arrived() - before)
        print(f"\n{image}: {proc.stdout.strip()} {proc.stderr[-200:]} arrived {got[image][1]}")
    assert got["privileged"] == ("sent 2", 2)  # control: both frames reach the metadata address
    # the socket opened (CAP_NET_RAW held) but the device's egress hook dropped both frames (ENOBUFS)
    assert got["unlabelled"][0].startswith("sent ") and got["unlabelled"][1] == 0
    recs = [json.loads(x) for x in env.log.read_text().splitlines()]
    assert any("CAP_NET_RAW: egress drops on eth0" in str(r.get("metadata")) for r in recs)


@pytest.mark.podman
def test_a_tier_opts_out_by_name(env):
    """allow_metadata = true (tier metadata-reader, baseline otherwise): metadata reachable, no rules."""
    proc = env.run("metadata-reader", "/bin/sh", "-c", probe_script(env.peers.other, False) + "\nip rule",
                   args=env.net_args())
    print("\nmetadata-reader:", proc.stdout)
    assert results(proc.stdout) == {k: True for k in expected(True, undo=False)}
    assert "prohibit" not in proc.stdout and env.tier_granted("metadata-reader") == {"metadata-reader"}


@pytest.mark.podman
def test_podman_decision_log_and_rules_from_outside(env):
    """The rules sit in the container's namespace (seen from the host with ip -n), not the host's."""
    name = f"tg-md-{secrets.token_hex(4)}"
    env.podman.podman("run", "-d", "--name", name, *env.net_args(), "localhost/tiergate-role-unlabelled",
                      "/bin/sh", "-c", "exec sleep 60", check=True, timeout=60)
    try:
        pid = env.podman.podman("inspect", "--format", "{{.State.Pid}}", name, check=True).stdout.strip()
        rules = sh("/usr/bin/nsenter", f"--net=/proc/{pid}/ns/net", IP, "rule").stdout
        rules6 = sh("/usr/bin/nsenter", f"--net=/proc/{pid}/ns/net", IP, "-6", "rule").stdout
        host = sh(IP, "rule").stdout
    finally:
        env.podman.podman("rm", "-f", "--time", "0", name, timeout=60)
    print("\n", rules, rules6)
    assert "to 169.254.0.0/16 prohibit" in rules and "to 168.63.129.16 prohibit" in rules
    assert "to fd00:ec2::254 prohibit" in rules6
    assert "169.254.0.0/16" not in host
    recs = [json.loads(x) for x in env.log.read_text().splitlines()]
    assert any(r.get("stage") == "precreate" and r.get("tier") == "baseline" and "closed" in str(r.get("metadata"))
               for r in recs)


# --------------------------------------------------------------------------- docker

@pytest.fixture(scope="module")
def docker_peers(docker_factory, it_dir, tmp_path_factory):
    """Peers on their own veth, a docker macvlan network on it (no podman network)."""
    from tiergate.engines import shim as shim_install

    bin_dir = it_dir / "shim-metadata"
    log = it_dir / "metadata-decisions.jsonl"
    exe = shim_install.install(bin_dir, "integration metadata", log=str(log), cache_dir=str(it_dir / "cache-md"),
                               say=lambda *_: None)
    control = docker_factory()
    tg = docker_factory(runtimes={"tiergate": str(exe)})
    peers = Peers(None, tmp_path_factory.mktemp("docker-peers"))
    nets = []
    try:
        peers.setup()
        for engine in (control, tg):
            net = f"tgmd-{secrets.token_hex(3)}"
            engine.docker("network", "create", "-d", "macvlan", "-o", f"parent={peers.host_if}",
                          "--subnet", f"{peers.net4}.0/24", "--gateway", peers.api, "--ipv6",
                          "--subnet", f"{peers.net6}:/64", "--gateway", peers.api6, net, check=True)
            nets.append((engine, net))
            for tier in ("baseline", "restricted", "web", "database"):
                # localhost/tiergate-*: the shipped policy's trust rule lets these ask for any tier
                engine.import_image(f"localhost/tiergate-md-{tier}:1", {"io.tiergate.tier": tier}, expose=[5432])
        yield {"control": control, "tg": tg, "peers": peers, "nets": dict((id(e), n) for e, n in nets), "log": log,
               "database_image": "localhost/tiergate-md-database:1"}
    finally:
        for engine, net in nets:
            engine.remove_containers()
            engine.docker("network", "rm", net, timeout=60)
        peers.teardown()


def _docker_run(d, engine, image: str, script: str, *extra: str, runtime: str | None = None):
    net = d["nets"][id(engine)]
    args = ["--network", net, *(["--runtime", runtime] if runtime else []), *extra]
    return engine.run(image, "/bin/sh", "-c", script, args=args, timeout=90)


@pytest.mark.docker
def test_docker_through_the_shim_every_tier_is_closed_and_the_control_reaches_all(docker_peers):
    d = docker_peers
    peer = d["peers"].other
    ctl = _docker_run(d, d["control"], "localhost/tiergate-md-baseline:1", probe_script(peer, False))
    print("\ncontrol (no tiergate):", ctl.stdout, ctl.stderr[-300:])
    assert results(ctl.stdout) == {k: True for k in expected(True, undo=False)}
    for image, reach in (("localhost/tiergate-md-baseline:1", True), ("localhost/tiergate-md-restricted:1", True),
                         ("localhost/tiergate-md-web:1", False), ("localhost/tiergate-md-database:1", False)):
        proc = _docker_run(d, d["tg"], image, probe_script(peer, True), *NFT_MOUNTS, runtime="tiergate")
        print(f"\n{image}: {proc.stdout} {proc.stderr[-300:]}")
        assert proc.returncode == 0, proc.stderr[-500:]
        assert results(proc.stdout) == expected(reach), image
    recs = [json.loads(x) for x in d["log"].read_text().splitlines()]
    creates = [r for r in recs if r.get("stage") == "create" and r.get("engine") == "docker"]
    assert creates and all("closed" in str(r.get("metadata")) for r in creates), creates
    # docker's default set holds CAP_NET_RAW, which baseline keeps: egress chains too (restricted: none)
    assert any("CAP_NET_RAW: egress drops on eth0" in str(r.get("metadata")) for r in creates), creates
    assert not any(r.get("stage") == "createRuntime" for r in recs)  # no second process per start
