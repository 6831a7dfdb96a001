"""The network stage: what a tier asks of a container's network namespace (the metadata block,
then its network policy), programmed into the namespace at a path, by the hook (podman's netns
at precreate, runc's at createRuntime) and by the shim (the init's, between create and start)."""

from __future__ import annotations

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
