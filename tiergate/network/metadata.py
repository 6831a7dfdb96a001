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
chain on each of its interfaces (`netdev tiergate-metadata`) drops them too,
sent as one nf_tables batch written here (libnftables' dlopen and JSON parse
would cost +5 M instructions). Interfaces added later (`docker network
connect`) get no chain: the rules still hold there for ordinary sockets.

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


# linux/netfilter/nfnetlink.h, nf_tables.h: the egress chains as one nf_tables batch, no libnftables
# (its dlopen and JSON parse cost ~5 M instructions here). Integers in nf_tables attributes are big-endian.
NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES, NFPROTO_NETDEV, NF_NETDEV_EGRESS = 12, 10, 5, 1
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE = 0, 1, 2, 3, 6
NFPROTO_INET, ENOENT = 1, 2
NLA_F_NESTED, NLM_F_APPEND = 0x8000, 0x800
NF_DROP, NF_ACCEPT, NFT_REG_VERDICT, NFT_REG_1 = 0, 1, 0, 1
NFT_META_PROTOCOL, NFT_META_L4PROTO = 1, 16
NFT_PAYLOAD_NETWORK, NFT_PAYLOAD_TRANSPORT = 1, 2
EGRESS_TABLE = "tiergate-metadata"


def _be32(v: int) -> bytes:
    return struct.pack(">I", v & 0xFFFFFFFF)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(1, _str(1, name), *((_nest(2, *attrs),) if attrs else ()))  # NFTA_LIST_ELEM {NAME, DATA}


def _load_cmp(load: bytes, value: bytes) -> list[bytes]:
    """A load into register 1, then `== value` (NFTA_CMP_SREG, OP eq, DATA {VALUE})."""
    return [load, _expr("cmp", _attr(1, _be32(NFT_REG_1)), _attr(2, _be32(0)), _nest(3, _attr(1, value)))]


def _meta(key: int, value: bytes) -> list[bytes]:
    return _load_cmp(_expr("meta", _attr(2, _be32(key)), _attr(1, _be32(NFT_REG_1))), value)


def _payload(base: int, offset: int, value: bytes) -> list[bytes]:
    return _load_cmp(_expr("payload", _attr(1, _be32(NFT_REG_1)), _attr(2, _be32(base)), _attr(3, _be32(offset)),
                           _attr(4, _be32(len(value)))), value)


def _verdict(code: int) -> bytes:
    return _expr("immediate", _attr(1, _be32(NFT_REG_VERDICT)), _nest(2, _nest(2, _attr(1, _be32(code)))))


def _nfmsg(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    head = struct.pack("=IHHII", 16 + 4 + len(body), kind, NLM_F_REQUEST | flags, seq, 0)
    return head + struct.pack("=BBH", family, 0, _socket.htons(res_id)) + body


def egress_rules(dns: list[str]) -> list[list[bytes]]:
    """Expressions of the egress chain's rules: DNS to a resolver in a closed range (udp, tcp 53), then
    a counted drop of every closed range (IPv6 link-local itself left to the routing rules: neighbour
    advertisements go to fe80::; the OpenStack address is dropped). Prefixes here are whole bytes."""
    ip4, ip6 = _meta(NFT_META_PROTOCOL, struct.pack(">H", 0x0800)), _meta(NFT_META_PROTOCOL, struct.pack(">H", 0x86DD))
    out = []
    for addr in (a for a in dns if blocked(a)):
        family = 6 if ":" in addr else 4
        dst = _payload(NFT_PAYLOAD_NETWORK, 16 if family == 4 else 24, _socket.inet_pton(_AF[family], addr))
        for proto in (_socket.IPPROTO_UDP, _socket.IPPROTO_TCP):
            out.append([*(ip4 if family == 4 else ip6), *dst, *_meta(NFT_META_L4PROTO, bytes((proto,))),
                        *_payload(NFT_PAYLOAD_TRANSPORT, 2, struct.pack(">H", DNS_PORT)), _verdict(NF_ACCEPT)])
    closed = [(f, a, p) for f, a, p, _ in BLOCKED if (f, a, p) != (6, "fe80::", 10)] + [(6, "fe80::a9fe:a9fe", 128)]
    for family, addr, plen in closed:
        assert plen % 8 == 0, "egress prefixes must be whole bytes"
        dst = _payload(NFT_PAYLOAD_NETWORK, 16 if family == 4 else 24, _socket.inet_pton(_AF[family], addr)[:plen // 8])
        out.append([*(ip4 if family == 4 else ip6), *dst, _expr("counter"), _verdict(NF_DROP)])
    return out


def egress_batch(devices: list[str], dns: list[str], replace: bool = False) -> tuple[list[bytes], int]:
    """(the batch's messages, how many acks to expect): table `netdev tiergate-metadata` created
    (EEXIST if it exists: nothing is applied then), or with `replace` replaced (add, delete, add),
    an egress chain per device (`egress0`, ...), the rules of egress_rules() in each. Only a
    replacing commit leaves the kernel objects to free, whose deferred destroy the socket's last
    close waits for (5-20 ms here): see network/apply.py."""
    table = _str(1, EGRESS_TABLE)  # NFTA_TABLE_NAME / NFTA_CHAIN_TABLE / NFTA_RULE_TABLE
    create = NLM_F_CREATE | NLM_F_ACK
    msgs = [_nfmsg(NFNL_MSG_BATCH_BEGIN, 0, 1, 0, b"", NFNL_SUBSYS_NFTABLES)]

    def add(kind: int, flags: int, body: bytes) -> None:
        msgs.append(_nfmsg((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, len(msgs) + 1, NFPROTO_NETDEV, body))

    if replace:
        add(NFT_MSG_NEWTABLE, create, table)
        add(NFT_MSG_DELTABLE, NLM_F_ACK, table)
        add(NFT_MSG_NEWTABLE, create, table)
    else:
        add(NFT_MSG_NEWTABLE, create | NLM_F_EXCL, table)
    rules = egress_rules(dns)
    for i, dev in enumerate(devices):
        chain = _str(3, f"egress{i}")  # NFTA_CHAIN_NAME
        hook = _nest(4, _attr(1, _be32(NF_NETDEV_EGRESS)), _attr(2, _be32(0)), _str(3, dev))
        add(NFT_MSG_NEWCHAIN, create, table + chain + hook + _attr(5, _be32(NF_ACCEPT)) + _str(7, "filter"))
        for exprs in rules:
            add(NFT_MSG_NEWRULE, create | NLM_F_APPEND, table + _str(2, f"egress{i}") + _nest(4, *exprs))
    acks = len(msgs) - 1
    msgs.append(_nfmsg(NFNL_MSG_BATCH_END, 0, len(msgs) + 1, 0, b"", NFNL_SUBSYS_NFTABLES))
    return msgs, acks


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


def _errors(sock, count: int, batch: bool = False) -> list[int]:
    """Read `count` acks; the errno of each (0 = done). batch (nf_tables): an error ends the batch."""
    errs: list[int] = []
    while len(errs) < count and not (batch and any(errs)):
        data = sock.recv(65536)
        off = 0
        while off + 16 <= len(data):
            size, kind = struct.unpack_from("=IH", data, off)
            if kind == NLMSG_ERROR and size >= 20:
                errs.append(-struct.unpack_from("=i", data, off + 16)[0])
            off += (size + 3) & ~3 if size else len(data)
    return errs


def load(msgs: list[bytes], protocol: int = NETLINK_ROUTE, acks: int | None = None) -> list[int]:
    """Send the messages on a netlink socket of the current thread's namespace; the acks' errnos."""
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, protocol)
    try:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        sock.send(b"".join(msgs))
        return _errors(sock, len(msgs) if acks is None else acks, protocol == NETLINK_NETFILTER)
    finally:
        sock.close()


def table_exists(family: int, name: str) -> bool:
    """Does the current thread's namespace hold nf_tables table `name` of `family`? A query, not a
    transaction: a failed transaction (a create meeting an existing table) is aborted, and the
    abort waits for an RCU grace period. True unless the kernel says ENOENT."""
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        sock.send(_nfmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_ACK, 1, family, _str(1, name)))
        return _errors(sock, 1) != [ENOENT]
    finally:
        sock.close()


def load_egress(devices: list[str], dns: list[str]) -> list[int]:
    """The egress chains created, or where the table exists (a namespace programmed before)
    replaced; the acks' errnos."""
    errs = [EEXIST]
    if not table_exists(NFPROTO_NETDEV, EGRESS_TABLE):
        msgs, acks = egress_batch(devices, dns)
        errs = load(msgs, NETLINK_NETFILTER, acks)
    if errs and errs[0] == EEXIST:  # there, or made in between
        msgs, acks = egress_batch(devices, dns, replace=True)
        errs = load(msgs, NETLINK_NETFILTER, acks)
    return errs


def close(netns: str, dns: list[str], raw: bool = False) -> str:
    """Install the rules in the namespace at `netns` (idempotent), and with `raw` (the workload holds
    CAP_NET_RAW) the egress chains too; what was done, in words. Raises NetnsError or NetworkApplyError.

    IPv6 rules are skipped only when the kernel has no IPv6 at all (EAFNOSUPPORT):
    then no IPv6 address can be reached either.
    """
    from tiergate.network.apply import check_not_host
    from tiergate.network.netns import NetnsError, run_in

    check_not_host(netns)
    todo = rules(dns)

    def work():
        errs = load([encode(r, i + 1) for i, r in enumerate(todo)])
        devices = [n for _, n in _socket.if_nameindex() if n != "lo"] if raw else []
        return errs, devices, load_egress(devices, dns) if devices else []

    errs, devices, nft = run_in(netns, work)
    for rule, err in zip(todo, errs):
        if err and err != EEXIST and not (err == 97 and rule["family"] == 6):
            raise NetnsError(f"ip rule {rule['dst']}/{rule['len']}: {os.strerror(err)}")
    bad = next((e for e in nft if e), 0)
    if bad:
        raise NetnsError(f"nf_tables egress chains: {os.strerror(bad)}")
    done = f"closed ({len(todo)} rules"
    if devices:
        done += f"; CAP_NET_RAW: egress drops on {', '.join(devices)}"
    return done + ")"
