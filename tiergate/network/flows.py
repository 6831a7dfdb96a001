"""Audit mode: record, inside the container's own netns, every flow the tier would drop (HOT PATH: stdlib only).

`record(doc)` adds to a ruleset from ruleset.build a dynamic set per family keyed
`daddr . l4proto . dport`, with a counter per element, and in front of each
would-drop egress rule (egress-default, deny4/deny6) a rule that updates it.
The kernel thus keeps the exact peer, protocol, port and packet count of every
new TCP/UDP flow the allowlist would refuse, with no listener to race and no
host setting: `nf_log_all_netns` stays 0, so `log` statements print nothing
from container namespaces, and an nflog listener would have to join each
netns before the first packet. `tiergate collect` reads the sets (as
`tiergate status` reads the rule counters) while the container runs.
Other protocols (ICMP, ...) are counted by the rule counters only.
"""

from __future__ import annotations

TABLE = "tiergate"
FAMILY = "inet"
WOULD_DROP = ("egress-default", "deny4", "deny6")
SETS = {4: ("flows4", "ipv4_addr", "ip"), 6: ("flows6", "ipv6_addr", "ip6")}
SIZE = 4096  # elements per family; flows past it are still counted by the rule counters


def _update(fam: int, matches: list) -> dict:
    name, _, proto = SETS[fam]
    key = {"concat": [{"payload": {"protocol": proto, "field": "daddr"}}, {"meta": {"key": "l4proto"}},
                      {"payload": {"protocol": "th", "field": "dport"}}]}
    l4 = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}}
    nfproto = {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": f"ipv{fam}"}}
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": "output", "comment": f"audit-{name}",
                             "expr": list(matches) + [nfproto, l4,
                                                      {"set": {"op": "update", "elem": key, "set": "@" + name}}]}}}


def record(doc: dict) -> dict:
    """The document with the flow sets and, before each would-drop egress rule, the rules that fill them."""
    cmds = doc["nftables"]
    out: list = []
    added = False
    for cmd in cmds:
        rule = cmd.get("add", {}).get("rule") if isinstance(cmd, dict) else None
        if rule and rule.get("chain") == "output" and rule.get("comment") in WOULD_DROP:
            if not added:
                at = next(i for i, c in enumerate(out) if isinstance(c, dict) and "chain" in c.get("add", {}))
                out[at:at] = [{"add": {"set": {"family": FAMILY, "table": TABLE, "name": name, "type": [typ, "inet_proto",
                              "inet_service"], "flags": ["timeout"], "timeout": 86400, "size": SIZE,
                              "stmt": [{"counter": None}]}}} for name, typ, _ in SETS.values()]
                added = True
            matches = [e for e in rule["expr"] if isinstance(e, dict) and "match" in e]
            out += [_update(fam, matches) for fam in SETS]
        out.append(cmd)
    return {"nftables": out}


def has_sets(listing: dict) -> bool:
    """Does this `nft -j list table` output hold the audit flow sets?"""
    items = listing.get("nftables") if isinstance(listing, dict) else None
    return any(isinstance(i, dict) and isinstance(i.get("set"), dict) and i["set"].get("name") in ("flows4", "flows6")
               for i in items or [])


def parse(listing: dict) -> list[dict]:
    """[{"peer", "proto", "port", "packets"}] from `nft -j list table inet tiergate` output."""
    rows = []
    for item in listing.get("nftables", []) if isinstance(listing, dict) else []:
        st = item.get("set") if isinstance(item, dict) else None
        if not isinstance(st, dict) or st.get("name") not in ("flows4", "flows6"):
            continue
        for e in st.get("elem") or []:
            e = e.get("elem", e) if isinstance(e, dict) else {}
            key = (e.get("val") or {}).get("concat") if isinstance(e.get("val"), dict) else None
            if not (isinstance(key, list) and len(key) == 3):
                continue
            peer, proto, port = key
            rows.append({"peer": str(peer), "proto": str(proto), "port": int(port),
                         "packets": int((e.get("counter") or {}).get("packets", 0))})
    return rows
