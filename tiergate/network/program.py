"""The network stage: what a tier asks of a container's network namespace (the metadata block,
then its network policy), programmed into the namespace at a path, by the hook (podman's netns
at precreate, runc's at createRuntime) and by the shim (the init's, between create and start).

The shim starts on a namespace the spec names (a pod's, made by CNI before its sandbox) while the
runtime creates the container (program_ahead): replacing the egress chains of a namespace
programmed before waits for an RCU grace period (10-25 ms here), which then overlaps runc's own
work. What counts is still the init's namespace once created: unless it is the one programmed,
with the same interfaces (holds), it is programmed again there."""

from __future__ import annotations

import os

from tiergate.core import pipeline
from tiergate.core.errors import TiergateError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


def program_netns(spec: dict, tier: Mapping[str, Any], netns: str, rec: dict, ports: Sequence[Mapping[str, Any]]) -> None:
    """Close metadata, then load the network policy, in the namespace at `netns`; TiergateError if not."""
    from tiergate.host import facts as host
    from tiergate.network import metadata
    from tiergate.network.apply import NetworkApplyError
    from tiergate.network.netns import NetnsError

    dns = host.resolv_conf_nameservers(spec)  # read once: the metadata block's DNS exceptions, the policy's DNS
    if pipeline.closes_metadata(tier):
        proc = spec["process"] if isinstance(spec.get("process"), dict) else {}
        caps = proc["capabilities"] if isinstance(proc.get("capabilities"), dict) else {}
        raw = "CAP_NET_RAW" in (caps.get("bounding") or [])
        try:
            rec["metadata"] = metadata.close(netns, dns, raw)
        except (NetnsError, NetworkApplyError, OSError) as exc:
            raise TiergateError(f"cannot close cloud metadata in the container's network namespace: {exc}") from None
    if tier["network"] is not None:
        apply_network(tier, netns, ports, dns, rec)


def apply_network(tier: Mapping[str, Any], netns: str, ports: Sequence[Mapping[str, Any]], nameservers: list[str],
                  rec: dict) -> None:
    from tiergate.network import apply, ruleset

    facts = {"id": rec.get("container", ""), "nameservers": nameservers, "ports": ports}
    doc = ruleset.build(tier["network"], facts)
    if tier.get("audit"):
        from tiergate.network import flows

        doc = flows.record(log_only(doc))  # would-be drops: counted per flow in the container's netns
    try:
        apply.apply(doc, netns)
        if tier["network"].get("rate"):
            from tiergate.network import shaping  # pyroute2: only tiers that shape pay its import

            rec["shaped"] = shaping.shape(netns, tier["network"]["rate"])
    except apply.NetworkApplyError as exc:
        raise TiergateError(f"cannot apply network policy {tier['network']['name']}: {exc}") from None
    rec["network"] = tier["network"]["name"]


def log_only(node):
    """Audit mode: every drop becomes accept (its counter and log rule stay), chain policies accept."""
    if isinstance(node, dict):
        if set(node) == {"drop"}:
            return {"accept": None}
        return {k: ("accept" if k == "policy" and v == "drop" else log_only(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [log_only(v) for v in node]
    return node


Ahead = tuple[int, int, tuple[tuple[int, str], ...]]  # the namespace's (st_dev, st_ino), its interfaces before


def interfaces(netns: str) -> tuple[tuple[int, str], ...]:
    """(index, name) of every interface in the namespace at `netns`; indexes are never reused soon,
    so an interface removed and added again differs."""
    import _socket

    from tiergate.network.netns import run_in

    return tuple(sorted(run_in(netns, _socket.if_nameindex)))


def program_ahead(spec: dict, tier: Mapping[str, Any], rec: dict, ports: Sequence[Mapping[str, Any]]) -> Ahead | None:
    """Program the namespace the spec names, through one open descriptor (a path swapped meanwhile
    changes nothing here); what holds() compares, or None when there is none or it failed (the
    init's namespace is then programmed after create, as it always is when holds() says no)."""
    from tiergate.host.facts import netns_path

    path = netns_path(spec)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        where = f"/proc/{os.getpid()}/fd/{fd}"  # also valid in an nsenter process, which inherits no fd
        before = interfaces(where)  # taken first: an interface added while programming is not in it
        program_netns(spec, tier, where, rec, ports)
        return st.st_dev, st.st_ino, before
    except Exception:  # noqa: BLE001  programmed after create instead, where a failure refuses the start
        return None
    finally:
        os.close(fd)


def holds(ahead: Ahead | None, netns: str) -> bool:
    """Is the namespace at `netns` (the created init's) the one programmed ahead, with the same
    interfaces it had before (egress chains and shaping are per interface)?"""
    if ahead is None:
        return False
    try:
        st = os.stat(netns)
        return (st.st_dev, st.st_ino) == ahead[:2] and interfaces(netns) == ahead[2]
    except Exception:  # noqa: BLE001  then it is programmed again, and that says what is wrong
        return False
