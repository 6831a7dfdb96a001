"""Cloud metadata and link-local closed in a container's network namespace (HOT PATH: builtins only).

Every tier but those with `allow_metadata = true` (and passthrough tiers) gets
these, whatever its network policy: policy-routing rules (`ip rule ... prohibit`)
in the container's own namespace, ahead of the main table, so a route lookup
for a blocked destination fails with EACCES at once, for TCP, UDP, ICMP and raw
IP sockets alike. Undoing them needs CAP_NET_ADMIN in that namespace, which a
tier that closes metadata never gets (the policy compiler refuses the pair).

Why rules and not an nftables table: for a workload without CAP_NET_RAW
both hold (neither can be undone without NET_ADMIN); rules are one netlink
batch on a socket opened in the namespace (~0.3 ms in-kernel, no library), an
nft table needs libnftables (dlopen, JSON parse, and the socket's close waits
for the kernel's deferred destroy: 3-7 ms here) or an nft process (~20 ms).
bench/ measures both. A workload WITH CAP_NET_RAW (baseline when the engine
asks for it, as docker's default set does) can put a closed address in a
frame that needs no route lookup (AF_PACKET, IP_HDRINCL): for it an egress
chain on each of its interfaces (`netdev tiergate-metadata`) drops them too.

Kept working: the container's own addresses (the `local` table, priority 0,
is consulted before these rules), IPv6 neighbour discovery and router
discovery (sent without a route lookup), and DNS (udp/tcp 53) to a nameserver
of the container's resolv.conf that lies in a blocked range (Azure's
168.63.129.16, GCP's 169.254.169.254, Kubernetes' node-local 169.254.20.10):
only port 53, never the HTTP metadata service on the same address.
"""

from __future__ import annotations

import _socket
import os
import struct

# One table: what is closed, and why. (family, address, prefix length, who)
BLOCKED = (
    (4, "169.254.0.0", 16, "IPv4 link-local: AWS/GCP/OpenStack/Oracle/Azure IMDS 169.254.169.254, "
                           "AWS ECS 169.254.170.2, Tencent 169.254.0.23"),
    (4, "168.63.129.16", 32, "Azure WireServer"),
    (4, "100.100.100.200", 32, "Alibaba Cloud metadata"),
    (4, "192.0.0.192", 32, "Oracle Cloud metadata (legacy)"),
    (6, "fd00:ec2::254", 128, "AWS IMDS over IPv6"),
    (6, "fd20:ce::254", 128, "GCP metadata over IPv6"),
    (6, "fe80::", 10, "IPv6 link-local unicast (OpenStack metadata fe80::a9fe:a9fe); neighbour discovery unaffected"),
    (6, "64:ff9b::a9fe:0", 112, "169.254.0.0/16 through the NAT64 well-known prefix"),
)
DNS_PORT = 53
PRIO_DNS = 100        # exceptions first
PRIO_BLOCK = 101      # then the prohibits; the main table is 32766
PROTOCOL = 0xA9       # FRA_PROTOCOL: marks the rules as tiergate's (`ip rule` shows "proto 169")

# linux/rtnetlink.h, linux/fib_rules.h
NETLINK_ROUTE = 0
RTM_NEWRULE, NLMSG_ERROR = 32, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
FR_ACT_TO_TBL, FR_ACT_PROHIBIT = 1, 8
FRA_DST, FRA_PRIORITY, FRA_TABLE, FRA_PROTOCOL, FRA_IP_PROTO, FRA_DPORT_RANGE = 1, 6, 15, 21, 22, 24
RT_TABLE_MAIN = 254
_AF = {4: _socket.AF_INET, 6: _socket.AF_INET6}
_BITS = {4: 32, 6: 128}
EEXIST = 17


def closes(tier: dict) -> bool:
    """Does this tier close metadata? Every enforcing tier unless it opts out (audit tiers only log)."""
    return not (tier["passthrough"] or tier.get("allow_metadata") or tier.get("audit"))


def _net(family: int, addr: str, plen: int) -> tuple[int, int]:
    """(first address, last address) as integers."""
    n = int.from_bytes(_socket.inet_pton(_AF[family], addr), "big")
    host = _BITS[family] - plen
    return n, n | ((1 << host) - 1)


_RANGES = [(f, *_net(f, a, p)) for f, a, p, _ in BLOCKED]


def blocked(address: str) -> bool:
    """Is `address` (IPv4 or IPv6 text, zone id ignored) inside a closed range?"""
    addr = address.split("%", 1)[0]
    family = 6 if ":" in addr else 4
    try:
        n = int.from_bytes(_socket.inet_pton(_AF[family], addr), "big")
    except OSError:
        return False
    return any(f == family and lo <= n <= hi for f, lo, hi in _RANGES)


def nameservers(text: str) -> list[str]:
    """resolv.conf's `nameserver` addresses that parse as IPv4/IPv6 (zone ids dropped), in order."""
    out: list[str] = []
    for line in text.splitlines()[:1000]:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            addr = parts[1].split("%", 1)[0]
            family = 6 if ":" in addr else 4
            try:
                _socket.inet_pton(_AF[family], addr)
            except OSError:
                continue
            if addr not in out:
                out.append(addr)
    return out


def rules(dns: list[str]) -> list[dict]:
    """The rules, as data: DNS exceptions for resolvers in closed ranges, then one prohibit per range."""
    out = []
    for addr in dns:
        if blocked(addr):
            family = 6 if ":" in addr else 4
            for proto in (_socket.IPPROTO_UDP, _socket.IPPROTO_TCP):
                out.append({"family": family, "dst": addr, "len": _BITS[family], "prio": PRIO_DNS,
                            "action": FR_ACT_TO_TBL, "proto": proto, "port": DNS_PORT})
    for family, addr, plen, _ in BLOCKED:
        out.append({"family": family, "dst": addr, "len": plen, "prio": PRIO_BLOCK, "action": FR_ACT_PROHIBIT})
    return out


def egress_doc(devices: list[str], dns: list[str]) -> dict:
    """nft JSON: table `netdev tiergate-metadata`, an egress chain per device dropping the closed ranges.

    For workloads holding CAP_NET_RAW: a packet socket (AF_PACKET) or an IP_HDRINCL
    raw socket can put a closed address in a frame without a route lookup; the
    device's egress hook still sees every frame, packet sockets' qdisc bypass
    included (measured here). IPv6 link-local is left to the rules: neighbour
    advertisements go to fe80:: addresses; the OpenStack address is dropped here.
    """
    name = "tiergate-metadata"
    table = {"family": "netdev", "name": name}
    cmds: list = [{"add": {"table": dict(table)}}, {"delete": {"table": dict(table)}}, {"add": {"table": dict(table)}}]
    dns_ok = [a for a in dns if blocked(a)]
    closed = [(f, a, p) for f, a, p, _ in BLOCKED if (f, a, p) != (6, "fe80::", 10)] + [(6, "fe80::a9fe:a9fe", 128)]

    def daddr(family: int, addr: str, plen: int) -> dict:
        right = addr if plen == _BITS[family] else {"prefix": {"addr": addr, "len": plen}}
        return {"match": {"op": "==", "left": {"payload": {"protocol": "ip" if family == 4 else "ip6", "field": "daddr"}},
                          "right": right}}

    dns53 = [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}},
             {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": DNS_PORT}},
             {"accept": None}]
    for i, dev in enumerate(devices):
        chain = f"egress{i}"
        cmds.append({"add": {"chain": {"family": "netdev", "table": name, "name": chain, "type": "filter",
                                       "hook": "egress", "dev": dev, "prio": 0, "policy": "accept"}}})
        rules = [[daddr(6 if ":" in a else 4, a, _BITS[6 if ":" in a else 4]), *dns53] for a in dns_ok]
        rules += [[daddr(f, a, p), {"counter": None}, {"drop": None}] for f, a, p in closed]
        cmds += [{"add": {"rule": {"family": "netdev", "table": name, "chain": chain, "expr": e}}} for e in rules]
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}] + cmds}


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def encode(rule: dict, seq: int) -> bytes:
    """One RTM_NEWRULE message (create, exclusive: an identical rule present already is EEXIST)."""
    family = rule["family"]
    body = struct.pack("=BBBBBBBBI", _AF[family], rule["len"], 0, 0,
                       RT_TABLE_MAIN if rule["action"] == FR_ACT_TO_TBL else 0, 0, 0, rule["action"], 0)
    body += _attr(FRA_DST, _socket.inet_pton(_AF[family], rule["dst"]))
    body += _attr(FRA_PRIORITY, struct.pack("=I", rule["prio"]))
    body += _attr(FRA_PROTOCOL, bytes((PROTOCOL,)))
    if rule["action"] == FR_ACT_TO_TBL:
        body += _attr(FRA_TABLE, struct.pack("=I", RT_TABLE_MAIN))
    if "proto" in rule:
        body += _attr(FRA_IP_PROTO, bytes((rule["proto"],)))
        body += _attr(FRA_DPORT_RANGE, struct.pack("=HH", rule["port"], rule["port"]))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWRULE, flags, seq, 0) + body


def _errors(sock, count: int) -> list[int]:
    """Read `count` acks; the errno of each (0 = done)."""
    errs: list[int] = []
    while len(errs) < count:
        data = sock.recv(65536)
        off = 0
        while off + 16 <= len(data):
            size, kind = struct.unpack_from("=IH", data, off)
            if kind == NLMSG_ERROR and size >= 20:
                errs.append(-struct.unpack_from("=i", data, off + 16)[0])
            off += (size + 3) & ~3 if size else len(data)
    return errs


def load(msgs: list[bytes]) -> list[int]:
    """Send the messages on a NETLINK_ROUTE socket of the current thread's namespace; their errnos."""
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        sock.send(b"".join(msgs))
        return _errors(sock, len(msgs))
    finally:
        sock.close()


def close(netns: str, dns: list[str], raw: bool = False, detach_close: bool = False) -> str:
    """Install the rules in the namespace at `netns` (idempotent), and with `raw` (the workload holds
    CAP_NET_RAW) the egress chains too; what was done, in words. Raises NetnsError or NetworkApplyError.

    IPv6 rules are skipped only when the kernel has no IPv6 at all (EAFNOSUPPORT):
    then no IPv6 address can be reached either.
    """
    from .apply import check_not_host
    from .netns import NetnsError, run_in

    check_not_host(netns)
    todo = rules(dns)
    errs, devices = run_in(netns, lambda: (load([encode(r, i + 1) for i, r in enumerate(todo)]),
                                           [n for _, n in _socket.if_nameindex() if n != "lo"] if raw else []))
    for rule, err in zip(todo, errs):
        if err and err != EEXIST and not (err == 97 and rule["family"] == 6):
            raise NetnsError(f"ip rule {rule['dst']}/{rule['len']}: {os.strerror(err)}")
    done = f"closed ({len(todo)} rules"
    if devices:
        from .apply import apply

        apply(egress_doc(devices, dns), netns, detach_close=detach_close)
        done += f"; CAP_NET_RAW: egress drops on {', '.join(devices)}"
    return done + ")"
