"""Issue 5 at podman level: per-container nftables policy on a network users really run.

Containers run on a podman macvlan network whose peers are a test netns
(roles_env.py: 10.214.N.0/24 + fd00:214:N::/64, a host answering on
169.254.169.254, 168.63.129.16, 169.254.1.1 and fd00:ec2::254). tiergate's
precreate hook applies the `web` tier's policy (shipped policy, test CIDRs)
in the container's namespace before the workload starts. Every blocked case
is paired with the same probe from a control container (the same image
labelled privileged: untouched by tiergate) that reaches the peer.
"""

from __future__ import annotations

import json
import secrets

import pytest

from harness import run_cmd
from roles_env import NFT, NSENTER, container_pid, refused, role_env_fixture, wait_for, wget

pytestmark = pytest.mark.podman


env = role_env_fixture("test_network_podman")


def test_every_rule_kind_against_a_control(env):
    p = env.peers
    probes = {
        "allowed api 443": wget(f"http://{p.api}:443/"),
        "allowed api v6 443": wget(f"http://[{p.api6}]:443/"),
        "other port api 8080": wget(f"http://{p.api}:8080/"),
        "other peer 443": wget(f"http://{p.other}:443/"),
        "other peer v6 443": wget(f"http://[{p.other6}]:443/"),
        "metadata 169.254.169.254": wget(f"http://{p.metadata}/"),
        "metadata 168.63.129.16": wget("http://168.63.129.16/"),
        "metadata fd00:ec2::254": wget(f"http://[{p.metadata6}]/"),
        "link-local 169.254.1.1": wget(f"http://{p.link_local}/"),
        # --dns names the nameserver in the bundle's resolv.conf: port 53 only there
        "dns (tcp 53) to the nameserver": wget(f"http://{p.api}:53/"),
        "tcp 53 to another peer": wget(f"http://{p.other}:53/"),
    }
    allowed = {"allowed api 443", "allowed api v6 443", "dns (tcp 53) to the nameserver",
               "in exposed 80"}
    serve = "httpd -p 80 -h /www && httpd -p 8081 -h /www"
    results = {}
    for image in ("web", "control-web"):
        ip = p.next_ip()
        results[image] = env.serving(image, ip, serve, probes,
                                     {"exposed 80": f"http://{ip}:80/", "unexposed 8081": f"http://{ip}:8081/"},
                                     args=["--dns", p.api])
        print(f"\n{image}: {json.dumps(results[image], indent=1)}")
    assert env.tier_granted("web") == {"web"} and env.tier_granted("control-web") == {"privileged"}
    assert results["control-web"] == dict.fromkeys(results["control-web"], True)
    assert results["web"] == {k: k in allowed for k in results["web"]}


def test_rules_are_in_place_before_the_first_instruction(env):
    """The workload's very first command already meets the policy (no window before a later hook)."""
    # blocked: refused at once (the metadata route is prohibited: EACCES) or dropped (a timeout)
    cmd = (f"if timeout 2 wget -q -O - http://{env.peers.metadata}/ | grep -q tiergate-peer-ok; "
           "then echo tiergate-peer-ok; else echo BLOCKED; fi")
    got = env.run("web", "/bin/sh", "-c", cmd, args=env.net_args())
    ctl = env.run("privileged", "/bin/sh", "-c", cmd, args=env.net_args())
    assert "BLOCKED" in got.stdout, (got.stdout, got.stderr)
    assert "tiergate-peer-ok" in ctl.stdout and "BLOCKED" not in ctl.stdout, (ctl.stdout, ctl.stderr)


def _detached(env, image: str, script: str, *, args=()) -> str:
    name = f"tg-np-{secrets.token_hex(4)}"
    ref = "localhost/tiergate-role-" + image
    env.podman.podman("run", "-d", "--name", name, *env.net_args(), *args, ref, "/bin/sh", "-c", script,
                      check=True, timeout=60)
    return name


def _logs(env, name: str) -> str:
    return env.podman.podman("logs", name, timeout=20).stdout


def _table(pid: int) -> list[dict]:
    """`nsenter -t PID -n nft -j list table inet tiergate`: the table as the kernel holds it."""
    out = run_cmd([NSENTER, "-t", str(pid), "-n", NFT, "-j", "list", "table", "inet", "tiergate"],
                  check=True, timeout=20).stdout
    return json.loads(out)["nftables"]


def test_drop_counters_rise_when_a_blocked_peer_is_tried(env):
    from tiergate.network import apply as A

    p = env.peers
    name = _detached(env, "web", "echo READY; exec sleep 120")
    try:
        wait_for(lambda: "READY" in _logs(env, name), 20, "container start")
        pid = container_pid(env.podman, name)
        before = {r["name"]: r["packets"] for r in A.read_counters(pid)}
        for url in (f"http://{p.metadata}/", f"http://{p.other}:443/", f"http://{p.api}:8080/"):
            r = env.podman.podman("exec", name, "timeout", "2", "wget", "-q", "-O", "-", url, timeout=30)
            assert r.returncode != 0, url
        ok = env.podman.podman("exec", name, "timeout", "2", "wget", "-q", "-O", "-", f"http://{p.api}:443/",
                               timeout=30)
        assert ok.returncode == 0, ok.stderr
        after = {r["name"]: r["packets"] for r in A.read_counters(pid)}
        print("\ncounters before:", before, "\ncounters after:", after)
        # metadata never reaches nft: the tier's policy-routing rule refuses its route first (EACCES)
        for rule in ("egress-default",):
            assert after[rule] > before.get(rule, 0), (rule, before.get(rule), after[rule])
        # the same, read raw through nsenter + nft -j
        rules = [x["rule"] for x in _table(pid) if "rule" in x]
        counted = {r.get("comment"): next(e["counter"]["packets"] for e in r["expr"] if "counter" in e)
                   for r in rules if any("counter" in e for e in r["expr"])}
        assert counted["egress-default"] >= after["egress-default"] > 0
    finally:
        env.podman.podman("rm", "-f", "--time", "0", name, timeout=60)


def test_workload_cannot_undo_its_rules(env):
    """No CAP_NET_ADMIN inside: `ip link set` fails (nft is not in busybox; the netns proof runs nft itself),
    and traffic stays blocked; the same commands work with NET_ADMIN in an untouched container."""
    p = env.peers
    script = ("ip link set lo down; echo LO=$?; ip link set eth0 down; echo ETH=$?; "
              "ip addr add 10.99.99.99/32 dev eth0; echo ADDR=$?; "
              f"timeout 2 wget -q -O - http://{p.metadata}/ >/dev/null; echo META=$?; "
              f"timeout 2 wget -q -O - http://{p.other}:443/ >/dev/null; echo OTHER=$?; "
              f"timeout 2 wget -q -O - http://{p.api}:443/ >/dev/null; echo API=$?; echo DONE; exec sleep 120")
    name = _detached(env, "web", script)
    try:
        wait_for(lambda: "DONE" in _logs(env, name), 30, "undo attempts")
        out = _logs(env, name)
        print("\nweb:", out.replace("\n", " "))
        pid = container_pid(env.podman, name)
        table = _table(pid)
        assert any("table" in x and x["table"]["name"] == "tiergate" for x in table)
        assert sum(1 for x in table if "rule" in x) > 10
    finally:
        env.podman.podman("rm", "-f", "--time", "0", name, timeout=60)
    for key in ("LO", "ETH", "ADDR"):
        assert f"{key}=0" not in out, out
    assert "META=0" not in out and "OTHER=0" not in out and "API=0" in out, out
    # control: the same commands with CAP_NET_ADMIN in an untouched container succeed
    ctl = env.run("privileged", "/bin/sh", "-c", "ip link set lo down; echo LO=$?", args=[
        *env.net_args(), "--cap-add", "NET_ADMIN"])
    assert "LO=0" in ctl.stdout, (ctl.stdout, ctl.stderr)
    # and the tier does not hand out NET_ADMIN on request
    asked = env.run("web", "true", args=[*env.net_args(), "--cap-add", "NET_ADMIN"])
    assert refused(asked), asked.stderr[-300:]


def test_host_network_refused_for_a_tier_with_a_policy(env):
    proc = env.run("web", "true", args=["--network", "host"])
    assert refused(proc) and "network policy" in proc.stderr, proc.stderr[-400:]
    ctl = env.run("privileged", "true", args=["--network", "host"])  # the engine itself would run it
    assert ctl.returncode == 0, ctl.stderr[-300:]


def test_egress_rate_limit_is_shaped_in_the_namespace(env):
    """A network policy with `rate` gets a tbf qdisc on the container's interface, inside its
    namespace (tc through pyroute2); the host's interfaces are untouched. Control: without `rate`
    the interface keeps the kernel's default qdisc."""
    policy = env.tg / "policy.toml"
    original = policy.read_text()
    assert "[networks.web]" in original
    host_before = run_cmd(["tc", "qdisc", "show"], timeout=10).stdout

    def qdisc_of_web() -> str:
        name = _detached(env, "web", "echo READY; exec sleep 60")
        try:
            wait_for(lambda: "READY" in _logs(env, name), 20, "container start")
            pid = container_pid(env.podman, name)
            return run_cmd([NSENTER, "-t", str(pid), "-n", "tc", "qdisc", "show", "dev", "eth0"], timeout=10).stdout
        finally:
            env.podman.podman("rm", "-f", "--time", "0", name, timeout=60)

    control = qdisc_of_web()
    try:
        policy.write_text(original.replace("[networks.web]\n", '[networks.web]\nrate = "1mbit"\n', 1))
        shaped = qdisc_of_web()
    finally:
        policy.write_text(original)  # the cache notices the change and recompiles
    assert "tbf" not in control, control
    assert "tbf" in shaped and "rate 1Mbit" in shaped, shaped
    assert run_cmd(["tc", "qdisc", "show"], timeout=10).stdout == host_before
