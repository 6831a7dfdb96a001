"""Audit mode's per-flow sets (network/flows.py): where the rules go, and reading a listing back."""

from __future__ import annotations

from tiergate.network import flows, ruleset

POLICY = {"egress": "allowlist", "ingress": "none", "dns": "none",
          "allow": [{"cidr": "203.0.113.10/32", "ports": [5672], "proto": "tcp"}]}


def _rules(doc: dict) -> list[dict]:
    return [c["add"]["rule"] for c in doc["nftables"] if "rule" in c.get("add", {})]


def test_flow_sets_fill_right_before_the_would_drop_egress_rule():
    doc = flows.record(ruleset.build(POLICY, {"id": "abc"}))
    cmds = doc["nftables"]
    kinds = [next(iter(c.get("add", {})), None) for c in cmds]
    assert kinds.index("set") < kinds.index("chain")  # defined before anything refers to them
    out = [r["comment"] for r in _rules(doc) if r["chain"] == "output"]
    i = out.index("egress-default")
    assert out[i - 2:i] == ["audit-flows4", "audit-flows6"] and out.count("audit-flows4") == 1
    assert out.index("allow4_0 tcp 5672") < i - 2  # allowed flows never reach the sets
    upd = _rules(doc)[[r["comment"] for r in _rules(doc)].index("audit-flows4")]["expr"][-1]["set"]
    assert upd["op"] == "update" and upd["set"] == "@flows4"


def test_egress_any_records_what_its_deny_sets_hold():
    doc = flows.record(ruleset.build({**POLICY, "egress": "any", "allow": [], "deny": ["198.51.100.0/24"]}, {}))
    out = [r["comment"] for r in _rules(doc) if r["chain"] == "output"]
    assert out[out.index("deny4") - 2:out.index("deny4")] == ["audit-flows4", "audit-flows6"]
    rule = _rules(doc)[[r["comment"] for r in _rules(doc)].index("audit-flows4")]
    assert rule["expr"][0]["match"]["right"] == "@deny4"  # only flows the deny rule would drop


def test_no_egress_rule_no_sets():
    doc = flows.record(ruleset.build({**POLICY, "egress": "any", "allow": []}, {}))
    assert not any("set" in c.get("add", {}) for c in doc["nftables"])


LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "tiergate"}},
    {"set": {"family": "inet", "name": "flows4", "table": "tiergate", "type": ["ipv4_addr", "inet_proto", "inet_service"],
             "flags": ["timeout"], "timeout": 86400, "elem": [
                 {"elem": {"val": {"concat": ["10.99.0.9", "tcp", 81]}, "expires": 86399,
                           "counter": {"packets": 3, "bytes": 180}}}]}},
    {"set": {"family": "inet", "name": "flows6", "table": "tiergate", "type": ["ipv6_addr", "inet_proto", "inet_service"]}},
    {"set": {"family": "inet", "name": "allow4_0", "table": "tiergate", "elem": ["10.1.1.1"]}}]}


def test_parse_reads_each_flow_and_its_count():
    assert flows.has_sets(LISTING) and not flows.has_sets({"nftables": LISTING["nftables"][:2]})
    assert flows.parse(LISTING) == [{"peer": "10.99.0.9", "proto": "tcp", "port": 81, "packets": 3}]
