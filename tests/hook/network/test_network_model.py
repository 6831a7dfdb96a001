"""Unit tests of the NetworkPolicy model (compile-time validation)."""

from __future__ import annotations

import json

import pytest

from tiergate.network.model import NetworkPolicy, from_table, to_dict
from tiergate.network.ruleset import build

FULL = {
    "egress": "allowlist",
    "ingress": "published",
    "allow": [{"cidr": "203.0.113.0/24", "ports": [443, 80, 443], "proto": "tcp"},
              {"cidr": "2001:db8::1/64", "ports": [], "proto": "any"},
              {"cidr": "192.0.2.1"}],
    "ingress_ports": [8080],
    "dns": ["192.0.2.53", "2001:db8::53"],
    "allow_link_local": False,
    "log": True,
    "rate": "10mbit",
}


def test_full_roundtrip_to_contract_dict():
    np = from_table("web", FULL)
    assert isinstance(np, NetworkPolicy)
    d = to_dict(np)
    assert d == {
        "name": "web", "egress": "allowlist", "ingress": "published",
        "allow": [{"cidr": "203.0.113.0/24", "ports": [80, 443], "proto": "tcp"},
                  {"cidr": "2001:db8::/64", "ports": [], "proto": "any"},
                  {"cidr": "192.0.2.1/32", "ports": [], "proto": "any"}],
        "deny": [], "ingress_ports": [8080], "dns": ["192.0.2.53", "2001:db8::53"],
        "allow_link_local": False, "log": True, "rate": "10mbit",
    }
    assert json.loads(json.dumps(d)) == d
    build(d, {"id": "abc", "nameservers": [], "ports": []})  # the builder takes it as is


def test_defaults():
    d = to_dict(from_table("closed", {}))
    assert d["egress"] == "none" and d["ingress"] == "none" and d["dns"] == "resolv.conf"
    assert d["log"] is True and d["allow_link_local"] is False and d["rate"] is None


def test_egress_any_with_deny():
    d = to_dict(from_table("open", {"egress": "any", "ingress": "any", "deny": ["10.0.0.0/8", "fd00::/8"],
                                    "dns": "none", "rate": "500kbit"}))
    assert d["deny"] == ["10.0.0.0/8", "fd00::/8"] and d["dns"] == "none"


@pytest.mark.parametrize("table,field", [
    ({"egress": "some"}, "egress"),
    ({"ingress": "all"}, "ingress"),
    ({"egress": "allowlist", "allow": [{"cidr": "10.0.0.0/33"}]}, "allow[0].cidr"),
    ({"egress": "allowlist", "allow": [{"cidr": "fe80::/129"}]}, "allow[0].cidr"),
    ({"egress": "allowlist", "allow": [{"cidr": "10.0.0.0/8", "ports": [0]}]}, "allow[0].ports[0]"),
    ({"egress": "allowlist", "allow": [{"cidr": "10.0.0.0/8", "ports": [65536]}]}, "allow[0].ports[0]"),
    ({"egress": "allowlist", "allow": [{"cidr": "10.0.0.0/8", "ports": ["443"]}]}, "allow[0].ports[0]"),
    ({"egress": "allowlist", "allow": [{"cidr": "10.0.0.0/8", "ports": [True]}]}, "allow[0].ports[0]"),
    ({"egress": "allowlist", "allow": [{"cidr": "10.0.0.0/8", "proto": "icmp"}]}, "allow[0].proto"),
    ({"egress": "allowlist", "allow": [{"cidr": "10.0.0.0/8", "port": 1}]}, "allow[0]"),
    ({"egress": "allowlist", "allow": [{"ports": [1]}]}, "allow[0].cidr"),
    ({"egress": "allowlist", "allow": "10.0.0.0/8"}, "allow"),
    ({"egress": "any", "deny": ["nope"]}, "deny[0]"),
    ({"ingress_ports": [8080, 0]}, "ingress_ports[1]"),
    ({"dns": "8.8.8.8"}, "dns"),
    ({"dns": ["8.8.8.8", "x"]}, "dns[1]"),
    ({"dns": 5}, "dns"),
    ({"rate": "10"}, "rate"),
    ({"rate": "fast"}, "rate"),
    ({"rate": "10mbit; rm"}, "rate"),
    ({"log": "yes"}, "log"),
    ({"allow_link_local": 1}, "allow_link_local"),
    ({"egres": "none"}, "unknown key"),
    ({"egress": "none", "allow": [{"cidr": "10.0.0.0/8"}]}, "allow"),
    ({"egress": "allowlist", "deny": ["10.0.0.0/8"]}, "deny"),
])
def test_invalid_names_field_in_one_line(table, field):
    with pytest.raises(ValueError) as ei:
        from_table("p", table)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("network.p: ")
    assert field in msg, msg


def test_bad_name_and_non_table():
    with pytest.raises(ValueError, match="name"):
        from_table("bad name; x", {})
    with pytest.raises(ValueError, match="must be a table"):
        from_table("p", ["egress"])


@pytest.mark.parametrize("rate", ["10mbit", "500kbit", "1gbit", "100kbps"])
def test_rates_ok(rate):
    assert from_table("p", {"rate": rate}).rate == rate
