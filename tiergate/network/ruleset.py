"""Build the nftables JSON document for one container (HOT PATH: standard library only).

`build(policy, facts)` turns a compiled network policy (docs/contracts.md) and
the container facts into one nft JSON document that, loaded in a single
transaction inside the container's network namespace, replaces table
`inet tiergate` with:

  input / output filter chains, hook priority 0 (filter), policy drop unless
  the direction is `any`;
  loopback and ct established,related accepted; ct invalid dropped;
  ICMPv6 neighbour discovery / router solicitation+advert / MLD in both
  directions, ICMP(v6) errors and echo-reply inbound;
  output: cloud metadata endpoints, then (after the DNS accepts, so a
  link-local resolver named in resolv.conf keeps working) the rest of
  169.254.0.0/16 and fe80::/10 dropped unless allow_link_local;
  DNS (udp+tcp 53) only to the configured nameservers, every other port-53
  flow dropped (whatever the egress mode);
  egress allowlist as interval SETS (one per family/proto/ports group),
  egress any minus a deny set; ingress none / published / any.

Every drop has a counter and (log = true) a separate rate-limited log rule in
front of it: a `limit` statement in the drop rule itself would make packets
over the limit skip the drop. Rule names are stored as rule comments.
Nothing from the facts is ever spliced into rule text: the output is JSON data
and every address is parsed (inet_pton) first.
"""

from __future__ import annotations

import _socket  # not `socket`: its import (enum, selectors) costs more than this whole module

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

TABLE = "tiergate"
FAMILY = "inet"
LOG_RATE = {"rate": 5, "per": "second", "burst": 10}

METADATA4 = ("169.254.169.254", "168.63.129.16")
METADATA6 = ("fd00:ec2::254",)
LINK_LOCAL4 = ("169.254.0.0", 16)
LINK_LOCAL6 = ("fe80::", 10)

# Types a working IPv6 stack needs whatever the policy (not tracked by conntrack).
ICMP6_ND = [
    "nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert",
    "mld-listener-query", "mld-listener-report", "mld-listener-done", "mld2-listener-report",
]
ICMP6_IN = ["destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem", "echo-reply"]
ICMP4_IN = ["destination-unreachable", "time-exceeded", "parameter-problem", "echo-reply"]

_HEX = frozenset("0123456789abcdefABCDEF")
_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def sanitize_id(value: object, length: int = 12) -> str:
    """Alphanumerics only, at most `length` chars; 'unknown' if nothing is left."""
    s = "".join(c for c in str(value)[:256] if c in _ALNUM)[:length]
    return s or "unknown"


def _addr(value: object) -> tuple[int, str] | None:
    """(4 or 6, the address in canonical text) of an IPv4/IPv6 address (zone id dropped), else None."""
    if not isinstance(value, str):
        return None
    addr = value.strip().split("%", 1)[0]
    af = _socket.AF_INET6 if ":" in addr else _socket.AF_INET
    try:
        return (6 if af == _socket.AF_INET6 else 4), _socket.inet_ntop(af, _socket.inet_pton(af, addr))
    except (OSError, ValueError):
        return None


# -- JSON expression helpers ------------------------------------------------

def _match(left: dict[str, Any], right: object, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _one_or_set(values: list[int] | list[str]) -> object:
    return values[0] if len(values) == 1 else {"set": list(values)}


def _l4(proto: str) -> dict[str, Any]:
    return _match(_meta("l4proto"), proto if proto in ("tcp", "udp") else {"set": ["tcp", "udp"]})


class _Builder:
    def __init__(self, cid: str, log: bool) -> None:
        self.cid = cid
        self.log = log
        self.cmds: list[dict[str, Any]] = []

    def rule(self, chain: str, name: str, exprs: list[dict[str, Any]]) -> None:
        self.cmds.append({"add": {"rule": {
            "family": FAMILY, "table": TABLE, "chain": chain, "comment": name, "expr": exprs}}})

    def accept(self, chain: str, name: str, matches: list[dict[str, Any]]) -> None:
        self.rule(chain, name, matches + [{"accept": None}])

    def drop(self, chain: str, name: str, matches: list[dict[str, Any]]) -> None:
        if self.log:
            prefix = f"tiergate {self.cid} {name}: "[:127]
            self.rule(chain, name + " (log)", matches + [
                {"limit": dict(LOG_RATE)}, {"log": {"prefix": prefix}}])
        self.rule(chain, name, matches + [{"counter": None}, {"drop": None}])

    def set(self, name: str, family: int, elems: list[str | dict[str, Any]]) -> str:
        # Elements inline in the set object: ~20% faster for nft 1.0.6 to parse
        # than a separate "add element" command (10k CIDRs: ~55 vs ~70 ms).
        st: dict[str, object] = {"family": FAMILY, "table": TABLE, "name": name,
              "type": "ipv4_addr" if family == 4 else "ipv6_addr", "flags": ["interval"]}
        if elems:
            st["elem"] = elems
        self.cmds.append({"add": {"set": st}})
        return "@" + name


def _parse_cidr(c: object) -> tuple[int, int, int]:
    """(family, network int, prefix len) of a CIDR or bare address; ValueError if it is neither."""
    if not isinstance(c, str):
        raise ValueError
    addr, sep, plen = c.strip().partition("/")
    if ":" in addr:
        fam, af, bits = 6, _socket.AF_INET6, 128
    else:
        fam, af, bits = 4, _socket.AF_INET, 32
    try:
        n = int.from_bytes(_socket.inet_pton(af, addr), "big")
    except OSError:
        raise ValueError from None
    if sep:
        if not plen.isdigit() or len(plen) > 3:
            raise ValueError
        length = int(plen)
        if length > bits:
            raise ValueError
    else:
        length = bits
    host = bits - length
    return fam, (n >> host) << host, length


def _nets(cidrs: Iterable[str], where: str) -> tuple[list[str | dict[str, Any]], list[str | dict[str, Any]]]:
    """Parse CIDRs (ValueError on a bad one), drop nested ones, split by family into set elements.

    Prefixes either nest or are disjoint, so after sorting by (start, -size)
    dropping every prefix inside the last kept one leaves disjoint intervals,
    which an interval set accepts without auto-merge. (ipaddress is ~4x slower.)
    """
    by_fam: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for c in cidrs:
        try:
            fam, n, length = _parse_cidr(c)
        except ValueError:
            raise ValueError(f"network policy {where}: not a CIDR: {c!r}") from None
        by_fam[fam].append((n, length))
    out = []
    for fam, bits, af in ((4, 32, _socket.AF_INET), (6, 128, _socket.AF_INET6)):
        elems: list[str | dict[str, Any]] = []
        end = -1
        nbytes = bits // 8
        for n, length in sorted(by_fam[fam], key=lambda t: (t[0], t[1])):
            if n <= end:
                continue  # inside the previous (larger or equal) prefix
            end = n + (1 << (bits - length)) - 1
            a = _socket.inet_ntop(af, n.to_bytes(nbytes, "big"))
            elems.append(a if length == bits else {"prefix": {"addr": a, "len": length}})
        out.append(elems)
    return out[0], out[1]


def _fact_ports(facts: dict[str, Any], policy: dict[str, Any]) -> dict[str, list[int]]:
    ports: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for p in facts.get("ports") or []:
        if not isinstance(p, dict):
            continue
        port, proto = p.get("port"), p.get("proto", "tcp")
        if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535 and proto in ports:
            ports[proto].add(port)
    for port in policy.get("ingress_ports") or []:
        if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
            ports["tcp"].add(port)
            ports["udp"].add(port)
    return {k: sorted(v) for k, v in ports.items()}


def _nameservers(policy: dict[str, Any], facts: dict[str, Any]) -> tuple[list[str], list[str]]:
    dns = policy.get("dns", "resolv.conf")
    if dns == "none":
        src: list[str] = []
    elif dns == "resolv.conf":
        src = facts.get("nameservers") or []
    elif isinstance(dns, list):
        src = dns
    else:
        raise ValueError(f"network policy dns: unexpected value {dns!r}")
    v4: list[str] = []
    v6: list[str] = []
    for s in src:
        ip = _addr(s)
        if ip is not None:
            lst = v4 if ip[0] == 4 else v6
            if ip[1] not in lst:
                lst.append(ip[1])
    return v4, v6


def build(policy: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """nft JSON document that (re)creates `inet tiergate` for this container in one transaction."""
    egress = policy.get("egress", "none")
    ingress = policy.get("ingress", "none")
    if egress not in ("none", "allowlist", "any"):
        raise ValueError(f"network policy egress: unexpected value {egress!r}")
    if ingress not in ("none", "published", "any"):
        raise ValueError(f"network policy ingress: unexpected value {ingress!r}")
    b = _Builder(sanitize_id(facts.get("id", "")), bool(policy.get("log", True)))
    tbl = {"family": FAMILY, "name": TABLE}
    # add + delete + add: replaces an existing table atomically, works when absent.
    b.cmds += [{"add": {"table": dict(tbl)}}, {"delete": {"table": dict(tbl)}}, {"add": {"table": dict(tbl)}}]
    for chain in ("input", "output"):
        wide_open = (egress if chain == "output" else ingress) == "any"
        b.cmds.append({"add": {"chain": {
            "family": FAMILY, "table": TABLE, "name": chain, "type": "filter", "hook": chain,
            "prio": 0, "policy": "accept" if wide_open else "drop"}}})

    ct_state = {"ct": {"key": "state"}}
    icmp6 = _match(_meta("l4proto"), "ipv6-icmp")
    icmp4 = _match(_meta("l4proto"), "icmp")
    nd = [icmp6, _match(_payload("icmpv6", "type"), {"set": list(ICMP6_ND)})]

    # ---- input ----
    b.accept("input", "loopback", [_match(_meta("iif"), "lo")])
    b.accept("input", "established", [_match(ct_state, ["established", "related"], "in")])
    b.accept("input", "icmpv6-nd", nd)
    b.accept("input", "icmpv6", [icmp6, _match(_payload("icmpv6", "type"), {"set": list(ICMP6_IN)})])
    b.accept("input", "icmp", [icmp4, _match(_payload("icmp", "type"), {"set": list(ICMP4_IN)})])
    b.drop("input", "invalid", [_match(ct_state, ["invalid"], "in")])
    if ingress == "published":
        published = _fact_ports(facts, policy)
        for proto in ("tcp", "udp"):
            if published[proto]:
                b.accept("input", f"published-{proto}",
                         [_match(_meta("l4proto"), proto),
                          _match(_payload(proto, "dport"), _one_or_set(published[proto]))])
    if ingress != "any":
        b.drop("input", "ingress-default", [])

    # ---- output ----
    b.accept("output", "loopback", [_match(_meta("oif"), "lo")])
    b.accept("output", "established", [_match(ct_state, ["established", "related"], "in")])
    b.accept("output", "icmpv6-nd", nd)
    b.drop("output", "invalid", [_match(ct_state, ["invalid"], "in")])
    link_local = bool(policy.get("allow_link_local", False))
    if not link_local:
        b.drop("output", "metadata4", [_match(_payload("ip", "daddr"), {"set": list(METADATA4)})])
        b.drop("output", "metadata6", [_match(_payload("ip6", "daddr"), _one_or_set(list(METADATA6)))])
    ns4, ns6 = _nameservers(policy, facts)
    dns_match = [_l4("any"), _match(_payload("th", "dport"), 53)]
    if ns4:
        b.accept("output", "dns4", [_match(_payload("ip", "daddr"), _one_or_set(ns4))] + dns_match)
    if ns6:
        b.accept("output", "dns6", [_match(_payload("ip6", "daddr"), _one_or_set(ns6))] + dns_match)
    b.drop("output", "dns-other", list(dns_match))
    if not link_local:
        b.drop("output", "link-local4", [_match(_payload("ip", "daddr"),
                                                {"prefix": {"addr": LINK_LOCAL4[0], "len": LINK_LOCAL4[1]}})])
        b.drop("output", "link-local6", [_match(_payload("ip6", "daddr"),
                                                {"prefix": {"addr": LINK_LOCAL6[0], "len": LINK_LOCAL6[1]}})])

    if egress == "allowlist":
        groups: dict[tuple[str, tuple[int, ...]], list[str]] = {}
        for i, entry in enumerate(policy.get("allow") or []):
            proto = entry.get("proto", "any")
            if proto not in ("tcp", "udp", "any"):
                raise ValueError(f"network policy allow[{i}].proto: unexpected value {proto!r}")
            ports = entry.get("ports") or []
            for p in ports:
                if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
                    raise ValueError(f"network policy allow[{i}].ports: bad port {p!r}")
            groups.setdefault((proto, tuple(sorted(set(ports)))), []).append(entry.get("cidr"))
        for g, ((proto, ports), cidrs) in enumerate(groups.items()):
            v4, v6 = _nets(cidrs, f"allow group {g}")
            extra = []
            if ports:
                extra = [_l4(proto), _match(_payload("th", "dport"), _one_or_set(list(ports)))]
            elif proto != "any":
                extra = [_l4(proto)]
            for fam, nets, pl in ((4, v4, "ip"), (6, v6, "ip6")):
                if nets:
                    ref = b.set(f"allow{fam}_{g}", fam, nets)
                    label = f"allow{fam}_{g} {proto}" + (f" {','.join(map(str, ports))}" if ports else "")
                    b.accept("output", label[:120], [_match(_payload(pl, "daddr"), ref)] + extra)
    elif egress == "any":
        v4, v6 = _nets(policy.get("deny") or [], "deny")
        for fam, nets, pl in ((4, v4, "ip"), (6, v6, "ip6")):
            if nets:
                ref = b.set(f"deny{fam}", fam, nets)
                b.drop("output", f"deny{fam}", [_match(_payload(pl, "daddr"), ref)])
    if egress != "any":
        b.drop("output", "egress-default", [])
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}] + b.cmds}


def creating(doc: dict[str, Any]) -> dict[str, Any] | None:
    """`doc` (from build, maybe through flows.record or program.log_only) as a transaction that only
    creates the table: it fails as a whole (EEXIST) where the table exists. None if `doc` does not
    begin with build's add, delete, add. Its commit frees nothing, so the socket's close does not
    wait for the kernel's deferred destroy work (network/apply.py)."""
    cmds = doc["nftables"]
    table = {"add": {"table": {"family": FAMILY, "name": TABLE}}}
    if cmds[1:4] != [table, {"delete": table["add"]}, table]:
        return None
    return {"nftables": [cmds[0], {"create": table["add"]}, *cmds[4:]]}
