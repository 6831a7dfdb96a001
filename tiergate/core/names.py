"""The names tiergate knows, one table for each set: policy checks, the modifiers, the spec
validator, the shim, `doctor --json` and `explain` all read these (capabilities: capabilities.py).

On the start path: standard library only, plain tuples and frozensets, no work at import.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from typing import Literal

# Linux namespaces as the runtime-spec names them, each with its file under /proc/<pid>/ns.
NAMESPACE_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
                   "cgroup": "cgroup", "user": "user", "time": "time"}
NAMESPACES = tuple(NAMESPACE_FILES)
# Every hardened container gets its own of these (a missing entry means the host's); user,
# cgroup and time are not required: rootful engines run without them by default.
PRIVATE_NAMESPACES = ("pid", "network", "ipc", "uts", "mount")

# Seccomp, as the runtime-spec (config-linux.md) names them.
SECCOMP_ACTIONS = (
    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_LOG", "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_NOTIFY",
)
SECCOMP_OPERATORS = (
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
    "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
)
SECCOMP_ARCHES = (
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K", "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
    "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
)
# The architectures a process on a host of this machine type can make syscalls as
# (native and compat ABIs): a compiled filter names only its host's family.
SECCOMP_ARCH_FAMILIES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}

# The runtime shim's subcommands: those that make a container from a bundle, and all that
# tiergate reads (every other one is passed to the real runtime unread).
SHIM_CREATE = frozenset({"create", "run", "restore"})
SHIM_ENFORCED = SHIM_CREATE | {"exec", "update"}
# Where a tier is decided for a new container (decision log's `stage`): the hook's and the shim's.
DECISION_STAGES = ("precreate", *sorted(SHIM_CREATE))

# Where an image's labels are read, in the default order (policy: label_sources; policy/model.py's
# Literal lists the same names for the loader).
LABEL_SOURCES: tuple[Literal["docker", "storage", "cri", "annotation"], ...] = (
    "docker", "storage", "cri", "annotation")

# Tier names end up in AppArmor profile names, file names and log lines: [a-z0-9][a-z0-9-]{0,62}.
TIER_NAME_RULE = "[a-z0-9][a-z0-9-]{0,62}"
_TIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def valid_tier_name(name: object) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 63 and name[0] != "-"
            and all(c in _TIER_CHARS for c in name))


# Labels and annotations. The image label is the policy's label_key (this is its default);
# tiergate writes the io.tiergate.* annotations and reads back only what it wrote.
ANNOTATION_PREFIX = "io.tiergate."
LABEL_KEY = ANNOTATION_PREFIX + "tier"
ANN_TIER = ANNOTATION_PREFIX + "tier"
ANN_WHY = ANNOTATION_PREFIX + "why"
ANN_POLICY = ANNOTATION_PREFIX + "policy"
ANN_NETWORK = ANNOTATION_PREFIX + "network"
ANN_PORTS = ANNOTATION_PREFIX + "ports"
ANN_NOTES = ANNOTATION_PREFIX + "notes"
ANN_AUDIT = ANNOTATION_PREFIX + "audit"
ANN_REFUSED = ANNOTATION_PREFIX + "refused"
ANN_LOG_ERROR = ANNOTATION_PREFIX + "log-error"
# What engines write that tiergate reads (podman run --privileged).
PODMAN_PRIVILEGED = "io.podman.annotations.privileged"
ANNOTATIONS = (ANN_TIER, ANN_WHY, ANN_POLICY, ANN_NETWORK, ANN_PORTS, ANN_NOTES, ANN_AUDIT, ANN_REFUSED,
               ANN_LOG_ERROR)


def configs_dir() -> str:
    """The shipped configs/ (default policy, seccomp profiles, AppArmor template)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def known() -> dict[str, object]:
    """What this tiergate knows, for `doctor --json` (as `runc features`); tiers are policy, not here."""
    from tiergate.core import capabilities

    return {
        "capabilities": list(capabilities.NAMES),
        "namespaces": list(NAMESPACES),
        "private_namespaces": list(PRIVATE_NAMESPACES),
        "seccomp": {"actions": list(SECCOMP_ACTIONS), "operators": list(SECCOMP_OPERATORS),
                    "architectures": list(SECCOMP_ARCHES)},
        "shim_subcommands": {"create": sorted(SHIM_CREATE), "enforced": sorted(SHIM_ENFORCED)},
        "tier_name": TIER_NAME_RULE,
        "label_key": LABEL_KEY,
        "label_sources": list(LABEL_SOURCES),
        "annotations": list(ANNOTATIONS),
        "engine_annotations": [PODMAN_PRIVILEGED],
    }
