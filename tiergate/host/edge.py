"""The host side of the enforcement pipeline: the Edge every entry point hands it (I/O lives here)."""

from __future__ import annotations

from tiergate.core.pipeline import Edge


def host_edge(engine: str, cache_dir: str | None, log: str | None, network_hook: dict,
              netns_ready: bool = False) -> Edge:
    """This host's facts (host.facts.gather), tiergate's own paths, and the published ports in `engine`'s records."""
    from tiergate.host import facts

    def own_paths(policy_file: str) -> list[str]:
        return facts.own_paths(policy_file, cache_dir, log)

    def published(spec: dict) -> list[str]:
        from tiergate.sources import published

        return published.ports(spec, engine)

    return Edge(engine, facts.gather, own_paths, published, network_hook, netns_ready)
