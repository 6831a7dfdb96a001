"""Seccomp intersections remembered across starts (HOT PATH: os only; I/O, called from the edge).

Podman hands every container the same default profile, so every start of a tier
computed the same intersection (~6 M instructions, a third of the hook's own work).
The cache directory keeps the last few per tier: <cache>/seccomp/<tier>.json holds
the key the pipeline gives (the policy digest and its compiled generation: a recompile,
e.g. an upgrade that changed a tier's filter, never reads an older answer) and
[engine profile, intersection] pairs. A pair is used only when
its engine profile equals the spec's in full (the caller shapes it: nothing less is a
key), and the file only when it is as trusted as the compiled policy beside it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KEEP = 4  # pairs per tier: the engines' default profiles on this host (podman, docker, CRI)


def _path(cache_dir: str, tier: str) -> str:
    return os.path.join(cache_dir, "seccomp", f"{tier}.json")  # made 0700 by the cache's own writer


def _read(path: str, digest: str) -> list[list[Any]]:
    """The remembered pairs; none when absent, corrupt, of another policy, or not trusted (then never read)."""
    from tiergate.core.errors import PolicyError
    from tiergate.policy.cache import read_entry

    try:
        doc = read_entry(path)  # the compiled cache's own checks: no symlink, safely owned, its format
    except PolicyError:
        return []
    if doc is None or doc.get("policy") != digest or not isinstance(doc.get("pairs"), list):
        return []
    return [p for p in doc["pairs"] if isinstance(p, list) and len(p) == 2]


def intersection(cache_dir: str, digest: str, tier: str, profile: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """intersect(profile, current) for tier `tier`, from the cache when this start's profile was seen before
    under this policy; computed and remembered otherwise (a cache that cannot be written only costs time)."""
    path = _path(cache_dir, tier)
    pairs = _read(path, digest)
    for key, known in pairs:
        if key == current and isinstance(known, dict):
            return known
    from tiergate.policy import cache
    from tiergate.seccomp.intersect import intersect

    merged = intersect(profile, current)

    cache.write_entry(path, {"format": cache.FORMAT, "policy": digest, "pairs": [[current, merged], *pairs][:KEEP]})
    return merged
