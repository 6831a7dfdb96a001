"""The metadata block as data: which destinations, which exceptions, and the netlink bytes."""

from __future__ import annotations

import socket
import struct

import pytest

from tiergate.network import metadata as md


@pytest.mark.parametrize(("addr", "closed"), [
    ("169.254.169.254", True), ("169.254.170.2", True), ("169.254.0.1", True), ("169.254.255.255", True),
    ("168.63.129.16", True), ("100.100.100.200", True), ("192.0.0.192", True),
    ("fd00:ec2::254", True), ("fd20:ce::254", True), ("fe80::a9fe:a9fe", True), ("fe80::1%eth0", True),
    ("64:ff9b::a9fe:a9fe", True),
    ("169.253.255.255", False), ("169.255.0.0", False), ("168.63.129.17", False), ("100.100.100.201", False),
    ("10.88.0.1", False), ("fd00:ec2::253", False), ("2001:db8::1", False), ("fec0::1", False), ("nonsense", False),
])
def test_blocked_ranges(addr, closed):
    assert md.blocked(addr) is closed


def test_rules_put_dns_exceptions_for_blocked_resolvers_first():
    rules = md.rules(["10.0.0.1", "168.63.129.16", "fe80::1"])
    dns = [r for r in rules if r["prio"] == md.PRIO_DNS]
    assert [(r["dst"], r["proto"], r["port"]) for r in dns] == [
        ("168.63.129.16", socket.IPPROTO_UDP, 53), ("168.63.129.16", socket.IPPROTO_TCP, 53),
        ("fe80::1", socket.IPPROTO_UDP, 53), ("fe80::1", socket.IPPROTO_TCP, 53)]
    blocks = [(r["family"], r["dst"], r["len"]) for r in rules if r["prio"] == md.PRIO_BLOCK]
    assert blocks == [(f, a, p) for f, a, p, _ in md.BLOCKED]
    assert all(r["action"] == md.FR_ACT_PROHIBIT for r in rules if r["prio"] == md.PRIO_BLOCK)
    assert md.PRIO_DNS < md.PRIO_BLOCK < 32766  # before the main table


def test_nameservers_from_resolv_conf():
    text = ("# comment\nnameserver 10.88.0.1\nnameserver fe80::1%eth0\nnameserver bogus\n"
            "nameserver 10.88.0.1\nsearch dns.podman\n nameserver   2001:db8::53  \noptions ndots:1\n"
            "nameserver 1.2.3.4;rm\nnameserver\n")
    assert md.nameservers(text) == ["10.88.0.1", "fe80::1", "2001:db8::53"]
    assert md.nameservers("") == []


def _attrs(data: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off < len(data):
        size, kind = struct.unpack_from("=HH", data, off)
        out[kind] = data[off + 4:off + size]
        off += (size + 3) & ~3
    return out


def test_encode_is_an_exclusive_rtm_newrule():
    msg = md.encode({"family": 6, "dst": "fd00:ec2::254", "len": 128, "prio": 101, "action": md.FR_ACT_PROHIBIT}, 7)
    size, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (size, kind, seq) == (len(msg), md.RTM_NEWRULE, 7)
    assert flags == md.NLM_F_REQUEST | md.NLM_F_ACK | md.NLM_F_CREATE | md.NLM_F_EXCL
    family, dst_len, _, _, table, _, _, action, _ = struct.unpack_from("=BBBBBBBBI", msg, 16)
    assert (family, dst_len, table, action) == (socket.AF_INET6, 128, 0, md.FR_ACT_PROHIBIT)
    attrs = _attrs(msg[28:])
    assert attrs[md.FRA_DST] == socket.inet_pton(socket.AF_INET6, "fd00:ec2::254")
    assert struct.unpack("=I", attrs[md.FRA_PRIORITY])[0] == 101 and attrs[md.FRA_PROTOCOL] == bytes((md.PROTOCOL,))
    assert md.FRA_IP_PROTO not in attrs and md.FRA_TABLE not in attrs


def test_encode_dns_exception_looks_up_main_for_port_53_only():
    rule = md.rules(["169.254.169.254"])[0]
    msg = md.encode(rule, 1)
    attrs = _attrs(msg[28:])
    assert struct.unpack_from("=BBBBBBBBI", msg, 16)[7] == md.FR_ACT_TO_TBL
    assert struct.unpack("=I", attrs[md.FRA_TABLE])[0] == md.RT_TABLE_MAIN
    assert attrs[md.FRA_IP_PROTO] == bytes((socket.IPPROTO_UDP,))
    assert struct.unpack("=HH", attrs[md.FRA_DPORT_RANGE]) == (53, 53)


@pytest.mark.parametrize(("tier", "closes"), [
    ({"passthrough": False, "allow_metadata": False, "audit": False}, True),
    ({"passthrough": True, "allow_metadata": False, "audit": False}, False),
    ({"passthrough": False, "allow_metadata": True, "audit": False}, False),
    ({"passthrough": False, "allow_metadata": False, "audit": True}, False),
])
def test_which_tiers_close(tier, closes):
    from tiergate.core.pipeline import closes_metadata

    assert closes_metadata(tier) is closes


@pytest.mark.parametrize("replace", [False, True])
def test_egress_batch_is_one_nf_tables_transaction_with_a_chain_per_device(replace):
    msgs, acks = md.egress_batch(["eth0", "eth1"], ["168.63.129.16", "10.0.0.1"], replace)
    kinds = [struct.unpack_from("=IHHII", m)[1] for m in msgs]
    flags = [struct.unpack_from("=IHHII", m)[2] for m in msgs]
    nft = md.NFNL_SUBSYS_NFTABLES << 8
    rules = md.egress_rules(["168.63.129.16", "10.0.0.1"])
    assert kinds[0] == md.NFNL_MSG_BATCH_BEGIN and kinds[-1] == md.NFNL_MSG_BATCH_END
    if replace:  # add, delete, add: replaces a table there from before
        assert kinds[1:4] == [nft | md.NFT_MSG_NEWTABLE, nft | md.NFT_MSG_DELTABLE, nft | md.NFT_MSG_NEWTABLE]
    else:  # only creates: the kernel refuses it whole (EEXIST) where the table exists
        assert kinds[1] == nft | md.NFT_MSG_NEWTABLE and flags[1] & md.NLM_F_EXCL
        assert nft | md.NFT_MSG_DELTABLE not in kinds and kinds.count(nft | md.NFT_MSG_NEWTABLE) == 1
    chain_at = [i for i, k in enumerate(kinds) if k == nft | md.NFT_MSG_NEWCHAIN]
    assert len(chain_at) == 2 and kinds.count(nft | md.NFT_MSG_NEWRULE) == 2 * len(rules)
    assert acks == len(msgs) - 2  # every message but the batch markers is acknowledged
    assert b"eth0\0" in msgs[chain_at[0]] and b"eth1\0" in msgs[chain_at[1]]
    assert all(struct.unpack_from("=B", m, 16)[0] == md.NFPROTO_NETDEV for m in msgs[1:-1])
    assert [len(m) for m in msgs] == [struct.unpack_from("=I", m)[0] for m in msgs]


def test_egress_rules_keep_dns_to_a_closed_resolver_and_drop_every_closed_range():
    rules = md.egress_rules(["168.63.129.16", "10.0.0.1"])
    accepts = [r for r in rules if b"immediate" in r[-1] and struct.pack(">I", md.NF_ACCEPT) in r[-1][-8:]]
    assert len(accepts) == 2  # udp and tcp 53 to 168.63.129.16 only (10.0.0.1 is not closed)
    assert len(rules) - len(accepts) == len(md.BLOCKED)  # fe80::/10 swapped for fe80::a9fe:a9fe
    joined = b"".join(b"".join(r) for r in rules)
    assert socket.inet_pton(socket.AF_INET6, "fe80::a9fe:a9fe") in joined and bytes((169, 254)) in joined
