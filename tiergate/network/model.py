"""Network policy model: validated once at policy compile time (attrs allowed here).

The hot path never imports this module: it works on the plain dict `to_dict()`
produces (see docs/contracts.md, "Compiled network policy").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

import attrs

EGRESS = ("none", "allowlist", "any")
INGRESS = ("none", "published", "any")
PROTOS = ("tcp", "udp", "any")
DNS_MODES = ("resolv.conf", "none")
_RATE_RE = re.compile(r"^[1-9][0-9]{0,9}(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEYS = ("egress", "ingress", "allow", "deny", "ingress_ports", "dns", "allow_link_local", "log", "rate")
_ALLOW_KEYS = ("cidr", "ports", "proto")


def _cidr(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: CIDR must be a string, got {type(value).__name__}")
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{where}: not an IPv4/IPv6 CIDR: {value!r}") from None
    return str(net)


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{where}: port must be an integer 1..65535, got {value!r}")
    return value


def _ports(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: must be a list of ports, got {type(value).__name__}")
    return sorted({_port(p, f"{where}[{i}]") for i, p in enumerate(value)})


def _ip(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: must be an IP address string, got {value!r}")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{where}: not an IP address: {value!r}") from None


def _enum(choices: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name}: must be one of {'|'.join(choices)}, got {value!r}")

    return check


def _bool(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name}: must be true or false, got {value!r}")


@attrs.frozen
class AllowRule:
    cidr: str
    ports: tuple[int, ...] = ()
    proto: str = "any"

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "cidr", _cidr(self.cidr, "allow.cidr"))
        object.__setattr__(self, "ports", tuple(_ports(list(self.ports), "allow.ports")))
        if self.proto not in PROTOS:
            raise ValueError(f"allow.proto: must be one of {'|'.join(PROTOS)}, got {self.proto!r}")


def _check_dns(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, str):
        if value not in DNS_MODES:
            raise ValueError(f"dns: must be \"resolv.conf\", \"none\" or a list of IPs, got {value!r}")
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            _ip(v, f"dns[{i}]")
    else:
        raise ValueError(f"dns: must be \"resolv.conf\", \"none\" or a list of IPs, got {value!r}")


def _check_rate(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not _RATE_RE.match(value)):
        raise ValueError(f"rate: must be like \"10mbit\" or \"500kbit\" (or absent), got {value!r}")


def _check_name(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"name: must match {_NAME_RE.pattern}, got {value!r}")


@attrs.frozen
class NetworkPolicy:
    name: str = attrs.field(validator=_check_name)
    egress: str = attrs.field(default="none", validator=_enum(EGRESS))
    ingress: str = attrs.field(default="none", validator=_enum(INGRESS))
    allow: tuple[AllowRule, ...] = ()
    deny: tuple[str, ...] = ()
    ingress_ports: tuple[int, ...] = ()
    dns: str | tuple[str, ...] = attrs.field(default="resolv.conf", validator=_check_dns)
    allow_link_local: bool = attrs.field(default=False, validator=_bool)
    log: bool = attrs.field(default=True, validator=_bool)
    rate: str | None = attrs.field(default=None, validator=_check_rate)


def from_table(name: str, table: dict[str, Any]) -> NetworkPolicy:
    """Validate one `[network.<name>]` table; ValueError names the field in one line."""
    if not isinstance(table, dict):
        raise ValueError(f"network.{name}: must be a table, got {type(table).__name__}")
    try:
        unknown = sorted(set(table) - set(_KEYS) - {"name"})
        if unknown:
            raise ValueError(f"unknown key(s): {', '.join(map(str, unknown))}")
        if "name" in table and table["name"] != name:
            raise ValueError(f"name: {table['name']!r} differs from the table name")
        allow_in = table.get("allow", [])
        if not isinstance(allow_in, list):
            raise ValueError("allow: must be a list of {cidr, ports, proto} tables")
        allow = []
        for i, entry in enumerate(allow_in):
            if not isinstance(entry, dict):
                raise ValueError(f"allow[{i}]: must be a table with cidr, ports, proto")
            extra = sorted(set(entry) - set(_ALLOW_KEYS))
            if extra:
                raise ValueError(f"allow[{i}]: unknown key(s): {', '.join(map(str, extra))}")
            if "cidr" not in entry:
                raise ValueError(f"allow[{i}].cidr: missing")
            try:
                allow.append(AllowRule(
                    cidr=_cidr(entry["cidr"], f"allow[{i}].cidr"),
                    ports=tuple(_ports(entry.get("ports", []), f"allow[{i}].ports")),
                    proto=entry.get("proto", "any"),
                ))
            except ValueError as exc:
                msg = str(exc)
                raise ValueError(msg if msg.startswith(f"allow[{i}]") else msg.replace("allow.", f"allow[{i}].", 1)) from None
        deny_in = table.get("deny", [])
        if not isinstance(deny_in, list):
            raise ValueError("deny: must be a list of CIDRs")
        deny = tuple(_cidr(c, f"deny[{i}]") for i, c in enumerate(deny_in))
        ingress_ports = tuple(_ports(table.get("ingress_ports", []), "ingress_ports"))
        dns = table.get("dns", "resolv.conf")
        if isinstance(dns, list):
            dns = tuple(_ip(v, f"dns[{i}]") for i, v in enumerate(dns))
        egress = table.get("egress", "none")
        if allow and egress != "allowlist":
            raise ValueError(f"allow: only meaningful with egress = \"allowlist\" (egress is {egress!r})")
        if deny and egress != "any":
            raise ValueError(f"deny: only meaningful with egress = \"any\" (egress is {egress!r})")
        return NetworkPolicy(
            name=name,
            egress=egress,
            ingress=table.get("ingress", "none"),
            allow=tuple(allow),
            deny=deny,
            ingress_ports=ingress_ports,
            dns=dns,
            allow_link_local=table.get("allow_link_local", False),
            log=table.get("log", True),
            rate=table.get("rate"),
        )
    except ValueError as exc:
        raise ValueError(f"network.{name}: {exc}") from None
    except TypeError as exc:  # e.g. unhashable values in a list
        raise ValueError(f"network.{name}: {exc}") from None


def to_dict(np: NetworkPolicy) -> dict[str, Any]:
    """The compiled, plain-JSON form (docs/contracts.md)."""
    return {
        "name": np.name,
        "egress": np.egress,
        "ingress": np.ingress,
        "allow": [{"cidr": a.cidr, "ports": list(a.ports), "proto": a.proto} for a in np.allow],
        "deny": list(np.deny),
        "ingress_ports": list(np.ingress_ports),
        "dns": np.dns if isinstance(np.dns, str) else list(np.dns),
        "allow_link_local": np.allow_link_local,
        "log": np.log,
        "rate": np.rate,
    }
