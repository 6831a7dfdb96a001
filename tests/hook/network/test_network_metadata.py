"""The metadata block as data: which destinations, which exceptions, and the netlink bytes."""

from __future__ import annotations

import socket
import struct

import pytest

from tiergate.hook.network import metadata as md


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
    assert md.closes(tier) is closes


def test_egress_doc_drops_closed_ranges_per_device_and_keeps_dns_and_neighbour_discovery():
    doc = md.egress_doc(["eth0", "eth1"], ["168.63.129.16", "10.0.0.1"])["nftables"]
    chains = [c["add"]["chain"] for c in doc if "add" in c and "chain" in c["add"]]
    assert [(c["dev"], c["hook"], c["policy"]) for c in chains] == [("eth0", "egress", "accept"), ("eth1", "egress", "accept")]
    rules = [c["add"]["rule"] for c in doc if "add" in c and "rule" in c["add"] and c["add"]["rule"]["chain"] == "egress0"]
    first = rules[0]["expr"]
    assert first[0]["match"]["right"] == "168.63.129.16" and first[-1] == {"accept": None}  # DNS to the resolver
    drops = [r["expr"][0]["match"]["right"] for r in rules[1:]]
    assert all(r["expr"][-1] == {"drop": None} for r in rules[1:])
    assert {"prefix": {"addr": "169.254.0.0", "len": 16}} in drops and "fe80::a9fe:a9fe" in drops
    assert {"prefix": {"addr": "fe80::", "len": 10}} not in drops  # neighbour advertisements go to fe80::
    assert doc[1:4] == [{"add": {"table": {"family": "netdev", "name": "tiergate-metadata"}}},
                        {"delete": {"table": {"family": "netdev", "name": "tiergate-metadata"}}},
                        {"add": {"table": {"family": "netdev", "name": "tiergate-metadata"}}}]
