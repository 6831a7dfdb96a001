"""The core's contracts as types: the compiled policy and tier, the host facts, a change.

They stay plain JSON values at run time (the compiled policy is cached as JSON, a spec passes
through untouched). This module is for type checkers and readers: the start path never
imports it (``typing`` costs more than a decision), modules name it under ``TYPE_CHECKING``:

    TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
    if TYPE_CHECKING:
        from tiergate.core.contracts import Facts, Tier

docs/contracts.md describes each field; tests/hook/test_contracts.py checks that what the
compiler and facts.gather produce has exactly these keys.
"""

# No `from __future__ import annotations`: TypedDict reads NotRequired[...] from evaluated annotations.
from typing import Any, Literal, NotRequired, TypedDict


class Change(TypedDict):
    """One thing harden() did to a spec (or, in audit mode, would do)."""

    field: str  # a $-path: "$.process.capabilities.bounding"
    what: str   # "dropped CAP_SYS_ADMIN"
    why: str    # "tier restricted allows CAP_NET_BIND_SERVICE"


class Tier(TypedDict):
    """A compiled tier (policy/compile.py, _compile_tier)."""

    name: str
    description: str
    extends: str | None
    strictness: int
    passthrough: bool  # the spec is left as it is, annotations aside
    audit: bool  # decisions logged, not applied
    on_escalation: Literal["clamp", "refuse"]
    capabilities: list[str]  # the allowed set, in capability-number order
    no_new_privileges: bool
    seccomp: dict[str, Any] | None  # an OCI linux.seccomp object; None: keep the caller's
    seccomp_profile: str | None
    seccomp_deny: list[str]  # the policy's extra denies (in `seccomp` already; `explain` names them)
    apparmor: Literal["off", "prefer", "require"]
    apparmor_profile: str | None
    masked_paths: list[str]
    readonly_paths: list[str]
    readonly_rootfs: bool
    writable_mounts: list[str] | None  # a list: every other mount is made read-only
    tmpfs: dict[str, str]  # destination -> extra mount options
    host_namespaces: list[str]  # names.NAMESPACES the container may share with the host
    devices: list[str]
    sensitive_mounts: bool
    writable_binds: list[str] | None
    mutable_bind_paths: list[str]
    sysctls: list[str]
    pids_limit: int | None
    network: dict[str, Any] | None  # a compiled network policy (network/model.py, to_dict)
    allow_metadata: bool


class TrustRule(TypedDict):
    match: str | None
    digest: str | None
    max_tier: str
    over_ceiling: Literal["clamp", "refuse"]


class NamespaceRule(TypedDict):
    max_tier: str | None
    min_tier: str | None
    over_ceiling: Literal["clamp", "refuse"]


class Sensitive(TypedDict):
    paths: list[str]
    sockets: list[str]


class Policy(TypedDict):
    """A compiled policy (policy/compile.py, compile_policy; the cache adds `inputs`, and `stale`
    when the file on disk is broken and the last good policy is used). The compiler and the cache
    hand it on as a dict (JSON); tests/hook/test_contracts.py holds it to these keys."""

    format: int
    file: str
    digest: str
    label_key: str
    default_tier: str
    default_ceiling: str
    on_unknown_image: str
    over_ceiling: Literal["clamp", "refuse"]
    caller_may_loosen: bool
    label_sources: list[str]
    on_error: dict[str, str]  # engine (or "*") -> "refuse" | "allow"
    sensitive: Sensitive
    trust: list[TrustRule]
    sandbox_tier: str | None
    namespaces: dict[str, NamespaceRule]
    tiers: dict[str, Tier]
    stale: NotRequired[str]
    inputs: NotRequired[Any]  # the cache's: the files and stat data the entry was compiled from
    generation: NotRequired[str]  # the cache's: the generation directory it was read from


class MountFact(TypedDict):
    """What a host path a mount exposes really is (host/facts.py, mount_paths)."""

    real: str
    mutable: str | None  # why someone other than root could swap a component, or None
    aliases: NotRequired[list[str]]  # the same files at other host paths
    socket: NotRequired[str | None]  # an engine socket under it


class Port(TypedDict):
    port: int
    proto: Literal["tcp", "udp"]


# The edge's remembered seccomp intersection (seccomp/memo.py), used only for the profile it was made for.
SeccompFact = TypedDict("SeccompFact", {"for": dict[str, Any], "intersection": dict[str, Any]})


class Facts(TypedDict, total=False):
    """What the pure core may know about the host (host/facts.py, gather; hook/stages.py adds the
    edge's own). Every key is optional: a missing key means unknown, and each modifier fails closed."""

    notes: list[tuple[str, str]]
    host_ns: dict[str, list[str]]  # namespace type -> the host's identities ("dev:ino")
    ns_paths: dict[str, str | None]  # namespace path in the spec -> its identity (None: unreadable)
    mount_paths: dict[str, MountFact]  # host path -> what it is
    devices: dict[str, list[Any]]  # allowed device path -> [type, major, minor] as the host has it
    cgroup_limits: bool  # can the runtime apply cgroup limits here
    apparmor: str | None  # the loaded profile's name; None: AppArmor unavailable
    own_paths: list[str]  # tiergate's own state and code
    refuse_host_ns: bool  # Kubernetes: refuse a forbidden host namespace instead of clamping it
    sandbox: bool  # a pod's sandbox (pause) container, by containerd's own records
    network_hook: dict[str, Any]  # the createRuntime hook that programs the network namespace
    network_applied: bool  # the edge programs it itself
    ports: list[Port] | list[dict[str, Any]]  # (pipeline.port_list builds them)
    seccomp: SeccompFact  # pipeline.host_facts asks the edge
