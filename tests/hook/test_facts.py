"""Host facts: when a network namespace will hold only loopback (no rules, no createRuntime hook)."""

from __future__ import annotations

import pytest

from tiergate.host.facts import empty_netns, fresh_netns, netns_path


def spec(ns: dict | None, hooks: dict | None = None) -> dict:
    out = {"linux": {"namespaces": [{"type": "pid"}] + ([ns] if ns else [])}}
    if hooks is not None:
        out["hooks"] = hooks
    return out


@pytest.mark.parametrize(("s", "fresh", "empty", "path"), [
    (spec({"type": "network"}), True, True, None),
    (spec({"type": "network", "path": "/run/netns/netns-1"}), False, False, "/run/netns/netns-1"),
    (spec(None), False, False, None),  # the host's: never "empty"
    (spec({"type": "network"}, {"prestart": [{"path": "/usr/bin/setkey"}]}), True, False, None),
    (spec({"type": "network"}, {"createRuntime": [{"path": "/opt/cni-hook"}]}), True, False, None),
    (spec({"type": "network"}, {"poststop": [{"path": "/bin/true"}]}), True, True, None),
], ids=["no path", "podman netns", "host network", "docker setkey", "cni hook", "only poststop"])
def test_loopback_only_namespaces(s, fresh, empty, path) -> None:
    """Fresh = runc makes it; empty = fresh and no hook that could move an interface in."""
    assert fresh_netns(s) is fresh and empty_netns(s) is empty and netns_path(s) == path
