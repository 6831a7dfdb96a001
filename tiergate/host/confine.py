"""The hook confines itself before it reads untrusted input.

It runs as root on specs, labels and metadata an attacker can shape. Before
parsing any of it: no_new_privs (nothing it executes can gain privileges) and
a bounding set cut down to what its own work needs, so a bug in parsing
cannot be turned into module loading, raw I/O or a reboot. Kept, and why:
"""

from __future__ import annotations

KEEP = {
    "CAP_SYS_ADMIN": "setns() into the container's network namespace (nsenter) to load its rules",
    "CAP_NET_ADMIN": "load nftables rules and tc qdiscs inside that namespace",
    "CAP_SYS_PTRACE": "open /proc/<pid>/ns/net of the container's init process",
    "CAP_MAC_ADMIN": "load the tier's AppArmor profile (apparmor_parser)",
    "CAP_DAC_OVERRIDE": "read storage metadata and bundles, write the log, whatever their owners",
    "CAP_DAC_READ_SEARCH": "walk storage directories of other users (rootless storage)",
    "CAP_CHOWN": "the shim rewrites config.json keeping its owner",
    "CAP_FOWNER": "the shim rewrites config.json keeping its mode",
}


def confine() -> str | None:
    """Set no_new_privs and drop every other capability from the bounding, permitted and
    effective sets; returns None, or one line saying what could not be done (not root)."""
    try:
        import prctl
    except ImportError:
        return "python-prctl is missing: the hook runs unconfined"
    prctl.set_no_new_privs(1)
    keep = [getattr(prctl, "CAP_" + name[4:]) for name in KEEP if hasattr(prctl, "CAP_" + name[4:])]
    drop = [c for c in range(prctl.CAP_LAST_CAP + 1) if c not in keep]
    try:
        prctl.capbset.drop(*drop)
        prctl.cap_effective.limit(*keep)  # effective must stay within permitted: lower it first
        prctl.cap_permitted.limit(*keep)
    except (OSError, ValueError) as exc:
        return f"could not drop capabilities ({exc}): not running as root?"
    return None
