"""The capability name table: one source of truth for policy checks, hardening and status."""

from __future__ import annotations

# Index = capability number (include/uapi/linux/capability.h, Linux 6.x).
NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
KNOWN = frozenset(NAMES)

# What podman and docker grant when nobody asks for more. A capability outside
# this set in a spec was asked for (--cap-add, --privileged): an escalation.
ENGINE_DEFAULTS = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
    "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_NET_RAW", "CAP_AUDIT_WRITE",
})

SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def normalize(name: str) -> str:
    """`net_raw`, `NET_RAW` and `CAP_NET_RAW` all name CAP_NET_RAW."""
    upper = name.strip().upper()
    return upper if upper.startswith("CAP_") else "CAP_" + upper


def from_mask(mask: int) -> set[str]:
    """Names of the bits set in a /proc/<pid>/status Cap* mask."""
    return {n for i, n in enumerate(NAMES) if mask >> i & 1}
