"""Unit tests of ruleset.build(): shapes of the generated nft JSON (no root needed)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from tiergate.network.ruleset import (
    build,
    sanitize_id,
)

FACTS = {"id": "0123456789abcdef0123", "nameservers": ["10.88.0.1"], "ports": [{"port": 80, "proto": "tcp"}]}


def pol(**kw) -> dict:
    base = {"name": "t", "egress": "none", "ingress": "none", "allow": [], "deny": [], "ingress_ports": [],
            "dns": "resolv.conf", "allow_link_local": False, "log": True, "rate": None}
    base.update(kw)
    return base


def cmds(doc: dict) -> list[dict]:
    return [c for c in doc["nftables"] if "metainfo" not in c]


def rules(doc: dict, chain: str | None = None) -> list[dict]:
    out = [c["add"]["rule"] for c in cmds(doc) if "rule" in c.get("add", {})]
    return [r for r in out if chain is None or r["chain"] == chain]


def rule(doc: dict, chain: str, name: str) -> dict | None:
    found = [r for r in rules(doc, chain) if r["comment"] == name]
    assert len(found) <= 1, name
    return found[0] if found else None


def names(doc: dict, chain: str) -> list[str]:
    return [r["comment"] for r in rules(doc, chain)]


def chains(doc: dict) -> dict[str, dict]:
    return {c["add"]["chain"]["name"]: c["add"]["chain"] for c in cmds(doc) if "chain" in c.get("add", {})}


def sets(doc: dict) -> dict[str, dict]:
    return {c["add"]["set"]["name"]: c["add"]["set"] for c in cmds(doc) if "set" in c.get("add", {})}


def verdict(r: dict) -> str:
    last = r["expr"][-1]
    return next(iter(last))


def has_match(r: dict, left: dict, right=None) -> bool:
    for e in r["expr"]:
        m = e.get("match")
        if m and m["left"] == left and (right is None or m["right"] == right):
            return True
    return False


DADDR4 = {"payload": {"protocol": "ip", "field": "daddr"}}
DADDR6 = {"payload": {"protocol": "ip6", "field": "daddr"}}
THDPORT = {"payload": {"protocol": "th", "field": "dport"}}
L4 = {"meta": {"key": "l4proto"}}


# ---- structure -------------------------------------------------------------

def test_transaction_replaces_table_add_delete_add():
    doc = build(pol(), FACTS)
    head = cmds(doc)[:3]
    t = {"family": "inet", "name": "tiergate"}
    assert head == [{"add": {"table": t}}, {"delete": {"table": t}}, {"add": {"table": t}}]
    # nothing outside table inet tiergate is ever touched
    for c in cmds(doc):
        (verb, body), = c.items()
        assert verb in ("add", "delete")
        (kind, obj), = body.items()
        assert obj.get("family") == "inet"
        assert obj.get("table", obj.get("name")) == "tiergate"
        assert kind in ("table", "chain", "rule", "set")


def test_creating_is_the_same_transaction_creating_the_table():
    from tiergate.network import flows
    from tiergate.network.program import log_only
    from tiergate.network.ruleset import creating

    t = {"family": "inet", "name": "tiergate"}
    for doc in (build(pol(), FACTS), flows.record(log_only(build(pol(), FACTS)))):
        fresh = creating(doc)
        assert cmds(fresh)[0] == {"create": {"table": t}}
        assert cmds(fresh)[1:] == cmds(doc)[3:] and fresh["nftables"][0] == doc["nftables"][0]
    assert creating({"nftables": [{"metainfo": {}}, {"add": {"table": t}}]}) is None  # not build's head


def test_idempotent_and_json_serialisable():
    p = pol(egress="allowlist", allow=[{"cidr": "192.0.2.0/24", "ports": [443], "proto": "tcp"}])
    a, b = build(p, FACTS), build(p, FACTS)
    assert a == b
    json.dumps(a)


@pytest.mark.parametrize("egress,ingress,out_policy,in_policy", [
    ("none", "none", "drop", "drop"),
    ("allowlist", "published", "drop", "drop"),
    ("any", "any", "accept", "accept"),
])
def test_chain_policies(egress, ingress, out_policy, in_policy):
    c = chains(build(pol(egress=egress, ingress=ingress), FACTS))
    assert c["output"]["policy"] == out_policy and c["output"]["hook"] == "output"
    assert c["input"]["policy"] == in_policy and c["input"]["hook"] == "input"
    assert c["input"]["type"] == "filter" and c["input"]["prio"] == 0


# ---- always-present rules ---------------------------------------------------

@pytest.mark.parametrize("chain,iface", [("input", "iif"), ("output", "oif")])
def test_loopback_established_invalid_first(chain, iface):
    doc = build(pol(), FACTS)
    n = names(doc, chain)
    assert n[0] == "loopback" and n[1] == "established"
    assert has_match(rule(doc, chain, "loopback"), {"meta": {"key": iface}}, "lo")
    assert has_match(rule(doc, chain, "established"), {"ct": {"key": "state"}}, ["established", "related"])
    inv = rule(doc, chain, "invalid")
    assert verdict(inv) == "drop" and {"counter": None} in inv["expr"]
    # ND accepted before the invalid drop
    assert n.index("icmpv6-nd") < n.index("invalid")


def test_icmpv6_neighbour_discovery_both_directions():
    doc = build(pol(), FACTS)
    for chain in ("input", "output"):
        r = rule(doc, chain, "icmpv6-nd")
        types = next(e["match"]["right"]["set"] for e in r["expr"]
                     if e.get("match", {}).get("left") == {"payload": {"protocol": "icmpv6", "field": "type"}})
        assert {"nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"} <= set(types)
        assert verdict(r) == "accept"
    errs = rule(doc, "input", "icmpv6")
    assert "packet-too-big" in json.dumps(errs) and "echo-reply" in json.dumps(errs)
    assert "time-exceeded" in json.dumps(rule(doc, "input", "icmp"))


def test_metadata_and_link_local_dropped_by_default():
    doc = build(pol(egress="any"), FACTS)
    m4 = rule(doc, "output", "metadata4")
    assert has_match(m4, DADDR4, {"set": ["169.254.169.254", "168.63.129.16"]}) and verdict(m4) == "drop"
    assert has_match(rule(doc, "output", "metadata6"), DADDR6, "fd00:ec2::254")
    assert has_match(rule(doc, "output", "link-local4"), DADDR4, {"prefix": {"addr": "169.254.0.0", "len": 16}})
    assert has_match(rule(doc, "output", "link-local6"), DADDR6, {"prefix": {"addr": "fe80::", "len": 10}})
    n = names(doc, "output")
    # ND (which uses fe80::/10) is accepted before the link-local drop
    assert n.index("icmpv6-nd") < n.index("link-local6")


def test_allow_link_local_opts_out():
    doc = build(pol(egress="any", allow_link_local=True), FACTS)
    assert not {"metadata4", "metadata6", "link-local4", "link-local6"} & set(names(doc, "output"))


# ---- drops: counter + rate-limited log --------------------------------------

def test_every_drop_has_counter_and_rate_limited_log_rule():
    doc = build(pol(egress="any", deny=["10.0.0.0/8"]), FACTS)
    all_rules = rules(doc)
    drops = [r for r in all_rules if verdict(r) == "drop"]
    assert len(drops) >= 8
    for r in drops:
        assert {"counter": None} in r["expr"], r["comment"]
        log = [x for x in all_rules if x["comment"] == r["comment"] + " (log)" and x["chain"] == r["chain"]]
        assert len(log) == 1, r["comment"]
        exprs = log[0]["expr"]
        kinds = [next(iter(e)) for e in exprs]
        # limit before log, no verdict in the log rule: packets over the limit still reach the drop
        assert kinds[-2:] == ["limit", "log"]
        assert exprs[-2]["limit"]["per"] == "second"
        assert exprs[-1]["log"]["prefix"] == f"tiergate 0123456789ab {r['comment']}: "
        assert exprs[:-2] == r["expr"][:-2]  # same matches as the drop
        # log rule immediately precedes its drop rule
        assert all_rules.index(log[0]) + 1 == all_rules.index(r)


def test_log_false_no_log_rules():
    doc = build(pol(log=False), FACTS)
    assert not [r for r in rules(doc) if "log" in json.dumps(r["expr"])]
    assert rule(doc, "output", "egress-default")["expr"] == [{"counter": None}, {"drop": None}]


@pytest.mark.parametrize("hostile,expect", [
    ('"; flush ruleset', "flushruleset"),
    ("abc\ndef\" } table ip x { }", "abcdeftablei"),
    ("x" * 10000, "x" * 12),
    ("", "unknown"),
    ("\u00e9\u00e8\u202e;;", "unknown"),
    (12345, "12345"),
])
def test_hostile_container_id_sanitised(hostile, expect):
    assert sanitize_id(hostile) == expect
    doc = build(pol(), dict(FACTS, id=hostile))
    prefixes = [e["log"]["prefix"] for r in rules(doc) for e in r["expr"] if "log" in e]
    assert prefixes
    for p in prefixes:
        assert p.startswith(f"tiergate {expect} ") and len(p) <= 127
        assert all(c.isalnum() or c in " -:()_" for c in p), p


# ---- DNS --------------------------------------------------------------------

def test_dns_resolv_conf_nameservers_only():
    facts = dict(FACTS, nameservers=["10.88.0.1", "fd00::53", "not-an-ip", "1.2.3.4; flush ruleset"])
    doc = build(pol(), facts)
    d4, d6 = rule(doc, "output", "dns4"), rule(doc, "output", "dns6")
    assert has_match(d4, DADDR4, "10.88.0.1") and has_match(d4, THDPORT, 53)
    assert has_match(d4, L4, {"set": ["tcp", "udp"]}) and verdict(d4) == "accept"
    assert has_match(d6, DADDR6, "fd00::53")
    other = rule(doc, "output", "dns-other")
    assert verdict(other) == "drop" and has_match(other, THDPORT, 53)
    n = names(doc, "output")
    assert n.index("dns4") < n.index("dns-other")
    assert "flush" not in json.dumps(doc)


def test_dns_listed_servers():
    doc = build(pol(dns=["192.0.2.53", "192.0.2.54"]), FACTS)
    assert has_match(rule(doc, "output", "dns4"), DADDR4, {"set": ["192.0.2.53", "192.0.2.54"]})
    assert "10.88.0.1" not in json.dumps(doc)


def test_dns_none():
    doc = build(pol(dns="none"), FACTS)
    assert rule(doc, "output", "dns4") is None and rule(doc, "output", "dns6") is None
    assert verdict(rule(doc, "output", "dns-other")) == "drop"


def test_dns_other_dropped_even_with_egress_any():
    doc = build(pol(egress="any"), FACTS)
    assert verdict(rule(doc, "output", "dns-other")) == "drop"


# ---- egress -----------------------------------------------------------------

def test_egress_none_final_drop():
    doc = build(pol(egress="none"), FACTS)
    assert names(doc, "output")[-1] == "egress-default"
    assert not sets(doc)


def test_egress_allowlist_sets_grouped_by_family_proto_ports():
    allow = [
        {"cidr": "203.0.113.0/24", "ports": [443], "proto": "tcp"},
        {"cidr": "198.51.100.7", "ports": [443], "proto": "tcp"},
        {"cidr": "2001:db8::/32", "ports": [443], "proto": "tcp"},
        {"cidr": "192.0.2.0/24", "ports": [], "proto": "any"},
        {"cidr": "192.0.2.128/25", "ports": [], "proto": "any"},   # nested: folded
        {"cidr": "10.1.2.3/16", "ports": [53, 5353], "proto": "udp"},  # host bits: normalised
    ]
    doc = build(pol(egress="allowlist", allow=allow), FACTS)
    s = sets(doc)
    assert s["allow4_0"]["type"] == "ipv4_addr" and s["allow4_0"]["flags"] == ["interval"]
    assert s["allow4_0"]["elem"] == ["198.51.100.7", {"prefix": {"addr": "203.0.113.0", "len": 24}}]
    assert s["allow6_0"]["type"] == "ipv6_addr"
    assert s["allow6_0"]["elem"] == [{"prefix": {"addr": "2001:db8::", "len": 32}}]
    assert s["allow4_1"]["elem"] == [{"prefix": {"addr": "192.0.2.0", "len": 24}}]
    assert s["allow4_2"]["elem"] == [{"prefix": {"addr": "10.1.0.0", "len": 16}}]
    r0 = [r for r in rules(doc, "output") if has_match(r, DADDR4, "@allow4_0")][0]
    assert has_match(r0, L4, "tcp") and has_match(r0, THDPORT, 443) and verdict(r0) == "accept"
    r1 = [r for r in rules(doc, "output") if has_match(r, DADDR4, "@allow4_1")][0]
    assert not has_match(r1, THDPORT) and not has_match(r1, L4)
    r2 = [r for r in rules(doc, "output") if has_match(r, DADDR4, "@allow4_2")][0]
    assert has_match(r2, L4, "udp") and has_match(r2, THDPORT, {"set": [53, 5353]})
    r6 = [r for r in rules(doc, "output") if has_match(r, DADDR6, "@allow6_0")][0]
    assert has_match(r6, THDPORT, 443)
    n = names(doc, "output")
    assert n[-1] == "egress-default"
    # allowlist accepts come after the metadata / link-local drops
    assert n.index("link-local4") < n.index(r0["comment"])


def test_allowlist_proto_without_ports():
    doc = build(pol(egress="allowlist", allow=[{"cidr": "192.0.2.1/32", "ports": [], "proto": "udp"}]), FACTS)
    r = [r for r in rules(doc, "output") if has_match(r, DADDR4, "@allow4_0")][0]
    assert has_match(r, L4, "udp") and not has_match(r, THDPORT)


def test_allowlist_bad_cidr_is_valueerror():
    with pytest.raises(ValueError, match="not a CIDR"):
        build(pol(egress="allowlist", allow=[{"cidr": "10.0.0.0/33", "ports": [], "proto": "any"}]), FACTS)
    with pytest.raises(ValueError, match="not a CIDR"):
        build(pol(egress="allowlist", allow=[{"cidr": "1.2.3.4; flush ruleset", "ports": [], "proto": "any"}]), FACTS)


def test_egress_any_minus_deny():
    doc = build(pol(egress="any", deny=["10.0.0.0/8", "10.5.0.0/16", "fd00::/8"]), FACTS)
    s = sets(doc)
    assert s["deny4"]["elem"] == [{"prefix": {"addr": "10.0.0.0", "len": 8}}]
    assert s["deny6"]["elem"] == [{"prefix": {"addr": "fd00::", "len": 8}}]
    d4 = rule(doc, "output", "deny4")
    assert has_match(d4, DADDR4, "@deny4") and verdict(d4) == "drop"
    assert rule(doc, "output", "egress-default") is None
    assert chains(doc)["output"]["policy"] == "accept"


# ---- ingress ----------------------------------------------------------------

def test_ingress_none():
    doc = build(pol(ingress="none"), FACTS)
    assert names(doc, "input")[-1] == "ingress-default"
    assert not [r for r in rules(doc, "input") if r["comment"].startswith("published")]


def test_ingress_published_ports_from_facts_and_policy():
    facts = dict(FACTS, ports=[{"port": 80, "proto": "tcp"}, {"port": 5353, "proto": "udp"},
                               {"port": 0, "proto": "tcp"}, {"port": 70000}, {"port": "22"}, "junk",
                               {"port": 81, "proto": "sctp"}])
    doc = build(pol(ingress="published", ingress_ports=[8080]), facts)
    t = rule(doc, "input", "published-tcp")
    u = rule(doc, "input", "published-udp")
    assert has_match(t, {"payload": {"protocol": "tcp", "field": "dport"}}, {"set": [80, 8080]})
    assert has_match(u, {"payload": {"protocol": "udp", "field": "dport"}}, {"set": [5353, 8080]})
    assert names(doc, "input")[-1] == "ingress-default"


def test_ingress_any():
    doc = build(pol(ingress="any"), FACTS)
    assert chains(doc)["input"]["policy"] == "accept"
    assert rule(doc, "input", "ingress-default") is None


@pytest.mark.parametrize("bad", [{"egress": "some"}, {"ingress": "all"}, {"dns": 5}])
def test_bad_policy_values(bad):
    with pytest.raises(ValueError):
        build(pol(**bad), FACTS)


# ---- scale ------------------------------------------------------------------

def big_allowlist(n: int = 10000, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if i % 5 == 0:
            a = rnd.getrandbits(64) << 64
            out.append({"cidr": f"{a >> 112:x}:{(a >> 96) & 0xffff:x}:{(a >> 80) & 0xffff:x}:{(a >> 64) & 0xffff:x}::/64",
                        "ports": [443], "proto": "tcp"})
        else:
            a = rnd.getrandbits(32)
            plen = rnd.choice([24, 28, 32])
            out.append({"cidr": f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{plen}",
                        "ports": [443] if i % 2 else [], "proto": "tcp" if i % 2 else "any"})
    return out


def test_10k_cidrs_build_few_sets_and_rules():
    """Size, not speed: 10,000 CIDRs land in a handful of sets (build time is measured in bench/)."""
    doc = build(pol(egress="allowlist", allow=big_allowlist()), FACTS)
    s = sets(doc)
    assert len(s) <= 4
    assert sum(len(x.get("elem", [])) for x in s.values()) > 9000
    assert len(rules(doc)) < 40


def test_ruleset_module_imports_only_stdlib():
    code = ("import sys; import tiergate.network.ruleset; "
            "bad = [m for m in ('attrs', 'cattrs', 'pyroute2', 'nftables') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
