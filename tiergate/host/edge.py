"""The host side of the enforcement pipeline: the Edge every entry point hands it (I/O lives here)."""

from __future__ import annotations

from tiergate.core.pipeline import Edge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tiergate.core.contracts import Tier


def host_edge(engine: str, cache_dir: str | None, log: str | None, network_hook: dict | None,
              netns_ready: bool = False) -> Edge:
    """This host's facts (host.facts.gather), tiergate's own paths, and the published ports in `engine`'s records."""
    from tiergate.host import facts

    def own_paths(policy_file: str) -> list[str]:
        return facts.own_paths(policy_file, cache_dir, log)

    def published(spec: dict) -> list[str]:
        from tiergate.sources import published

        return published.ports(spec, engine)

    def seccomp(digest: str, tier: Tier, current: dict[str, Any]) -> dict[str, Any] | None:
        from tiergate.policy.cache import cache_dir_for
        from tiergate.seccomp import memo

        try:
            profile = tier["seccomp"]
            return memo.intersection(cache_dir_for(cache_dir), digest, tier["name"], profile, current) if profile else None
        except (AttributeError, KeyError, TypeError):
            return None  # a profile intersect cannot read: the modifier says so (SpecError)

    return Edge(engine, facts.gather, own_paths, published, network_hook, netns_ready, seccomp)
