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
    effective sets; returns None, or one line saying what could not be done (not root).

    python-prctl's C module directly: its `prctl` wrapper builds ~600 functions and
    attributes at import, a quarter of the hook's own cost (issue 20)."""
    try:
        import _prctl
    except ImportError:
        return "python-prctl is missing: the hook runs unconfined"
    _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)
    keep = {getattr(_prctl, name) for name in KEEP if hasattr(_prctl, name)}
    drop = [c for c in range(_prctl.CAP_LAST_CAP + 1) if c not in keep]
    try:
        for cap in drop:
            _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
        # set_caps(effective on, permitted on, inheritable on, effective off, permitted off, inheritable off):
        # effective and permitted are lowered in one capset(2)
        _prctl.set_caps([], [], [], drop, drop, [])
    except (OSError, ValueError) as exc:
        return f"could not drop capabilities ({exc}): not running as root?"
    return None
