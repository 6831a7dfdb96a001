"""attrs models of a policy file, as written (before `extends` is resolved).

Used only when a policy is compiled (``tiergate policy check``, cache
rebuild); the start-time path reads the compiled JSON form instead.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from tiergate.core.names import LABEL_KEY, LABEL_SOURCES

Escalation = Literal["clamp", "refuse"]
AppArmorMode = Literal["off", "prefer", "require"]


@attrs.define(kw_only=True)
class TierSpec:
    """One `[tiers.NAME]` table. None means: inherit from `extends` (or the built-in default)."""

    description: str = ""
    extends: str | None = None
    strictness: int | None = None
    passthrough: bool | None = None
    audit: bool | None = None
    on_escalation: Escalation | None = None
    capabilities: list[str] | None = None
    no_new_privileges: bool | None = None
    seccomp: str | None = None
    seccomp_deny: list[str] | None = None
    seccomp_allow: list[str] | None = None
    apparmor: AppArmorMode | None = None
    masked_paths: list[str] | None = None
    readonly_paths: list[str] | None = None
    readonly_rootfs: bool | None = None
    writable_mounts: list[str] | None = None
    tmpfs: dict[str, str] | None = None
    host_namespaces: list[str] | None = None
    devices: list[str] | None = None
    sensitive_mounts: bool | None = None
    writable_binds: list[str] | None = None
    mutable_bind_paths: list[str] | None = None
    sysctls: list[str] | None = None
    pids_limit: int | None = None
    network: str | None = None
    allow_net_admin_with_network: bool | None = None
    allow_metadata: bool | None = None


@attrs.define(kw_only=True)
class TrustRule:
    """First matching rule sets the most privileged tier an image may get."""

    max_tier: str
    match: str | None = None
    digest: str | None = None
    over_ceiling: Escalation | None = None


@attrs.define(kw_only=True)
class NamespaceRule:
    """A Kubernetes namespace (from containerd's CRI records, which a pod cannot forge):
    `max_tier` replaces the trust rules' ceiling for its pods, `min_tier` is a floor."""

    max_tier: str | None = None
    min_tier: str | None = None
    over_ceiling: Escalation | None = None


@attrs.define(kw_only=True)
class Sensitive:
    paths: list[str] = attrs.Factory(list)
    sockets: list[str] = attrs.Factory(list)


@attrs.define(kw_only=True)
class EngineSettings:
    """Per-engine choices: `on_error = "allow"` trades fail-closed for availability, loudly."""

    on_error: Literal["refuse", "allow"] | None = None


@attrs.define(kw_only=True)
class PolicyFile:
    version: int
    label_key: str = LABEL_KEY
    default_tier: str = "baseline"
    on_unknown_image: str = "refuse"
    default_ceiling: str = "baseline"
    over_ceiling: Escalation = "clamp"
    caller_may_loosen: bool = False
    on_error: Literal["refuse", "allow"] = "refuse"
    audit: bool = False
    label_sources: list[Literal["docker", "cri", "storage", "annotation"]] = attrs.Factory(
        lambda: list(LABEL_SOURCES))
    sandbox_tier: str | None = None
    namespaces: dict[str, NamespaceRule] = attrs.Factory(dict)
    sensitive: Sensitive = attrs.Factory(Sensitive)
    trust: list[TrustRule] = attrs.Factory(list)
    tiers: dict[str, TierSpec] = attrs.Factory(dict)
    networks: dict[str, Any] = attrs.Factory(dict)
    engines: dict[str, EngineSettings] = attrs.Factory(dict)


# Values a tier gets when neither it nor any ancestor sets a field.
TIER_DEFAULTS: dict[str, object] = {
    "strictness": 0,
    "passthrough": False,
    "audit": False,
    "on_escalation": "clamp",
    "capabilities": [],
    "no_new_privileges": True,
    "seccomp": None,
    "seccomp_deny": [],
    "seccomp_allow": [],
    "apparmor": "off",
    "masked_paths": [],
    "readonly_paths": [],
    "readonly_rootfs": False,
    "writable_mounts": None,
    "tmpfs": {},
    "host_namespaces": [],
    "devices": [],
    "sensitive_mounts": False,
    "writable_binds": None,
    "mutable_bind_paths": [],
    "sysctls": [],
    "pids_limit": None,
    "network": None,
    "allow_net_admin_with_network": False,
    "allow_metadata": False,
}
