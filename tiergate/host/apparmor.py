"""AppArmor profile per tier: render, load (cached by content), decide.

Hot path: standard library only; hashlib, subprocess and fcntl are imported
inside ensure_loaded, which runs only on hosts where AppArmor is enabled.

Values of a compiled tier (tiergate/policy/compile.py, docs/contracts.md) come
from a policy file: every value spliced into the profile is checked against a
strict character set first, and anything else raises ValueError.
"""

from __future__ import annotations

import os
from _collections_abc import Mapping  # loaded with os; collections.abc would import collections

from tiergate.core.errors import TiergateError
from tiergate.core.names import TIER_NAME_RULE, configs_dir, valid_tier_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from tiergate.core.contracts import Tier

__all__ = [
    "AppArmorError",
    "profile_name",
    "render",
    "host_enabled",
    "ensure_loaded",
    "decide",
]

DEFAULT_CACHE_DIR = "/var/cache/tiergate/apparmor"
PARSER_CANDIDATES = ("/sbin/apparmor_parser", "/usr/sbin/apparmor_parser")
SECURITYFS = "/sys/kernel/security/apparmor"
MODES = ("require", "prefer", "off")

_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/@+-")

# Capability names the kernel (and apparmor_parser 3.0) know, without CAP_.
_CAPS = frozenset(
    """chown dac_override dac_read_search fowner fsetid kill setgid setuid
    setpcap linux_immutable net_bind_service net_broadcast net_admin net_raw
    ipc_lock ipc_owner sys_module sys_rawio sys_chroot sys_ptrace sys_pacct
    sys_admin sys_boot sys_nice sys_resource sys_time sys_tty_config mknod
    lease audit_write audit_control setfcap mac_override mac_admin syslog
    wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore""".split()
)

# Written even on a read-only rootfs: podman mounts tmpfs on /tmp, /var/tmp,
# /run with --read-only; terminals, POSIX shm and mqueues live under /dev.
_DEFAULT_WRITABLE = ("/tmp", "/var/tmp", "/run", "/dev/shm", "/dev/mqueue")

_template_cache: str | None = None


class AppArmorError(TiergateError):
    """AppArmor could not be put in force as the tier asks (one line)."""


def profile_name(tier_name: object) -> str:
    """The stable profile name of a tier: tiergate-<tier>."""
    if not valid_tier_name(tier_name):
        raise ValueError(f"tier name {tier_name!r} is not {TIER_NAME_RULE}")
    return f"tiergate-{tier_name}"


def _template() -> str:
    global _template_cache
    if _template_cache is None:
        path = os.path.join(configs_dir(), "apparmor", "tiergate.profile")
        try:
            with open(path, encoding="utf-8") as f:
                _template_cache = f.read()
        except FileNotFoundError:  # installed layout differs: ask the package
            from importlib.resources import files

            _template_cache = (
                files("tiergate.configs").joinpath("apparmor/tiergate.profile").read_text("utf-8")
            )
    return _template_cache


def _capabilities(tier: Tier) -> list[str]:
    caps = tier.get("capabilities") or []
    if not isinstance(caps, list):
        raise ValueError("capabilities must be a list of CAP_* names")
    out: list[str] = []
    for cap in caps:
        if not isinstance(cap, str) or not cap.startswith("CAP_"):
            raise ValueError(f"capability {cap!r} is not a CAP_* name")
        name = cap[4:].lower()
        if name not in _CAPS or cap[4:] != name.upper():
            raise ValueError(f"unknown capability {cap!r}")
        if name not in out:
            out.append(name)
    return sorted(out)


def _safe_path(path: object) -> str:
    if not isinstance(path, str) or not path.startswith("/") or not set(path) <= _PATH_CHARS:
        raise ValueError(f"writable mount {path!r} is not an absolute path of [A-Za-z0-9._/@+-]")
    trimmed = path.rstrip("/")
    parts = trimmed.split("/")[1:]
    if not trimmed or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"writable mount {path!r} must name a directory below / without . or ..")
    return trimmed


def _writable_mounts(tier: Tier) -> list[str]:
    """writable_mounts plus the tier's tmpfs destinations (writable too)."""
    mounts = tier.get("writable_mounts")
    if mounts is None:
        mounts = []
    if not isinstance(mounts, list):
        raise ValueError("writable_mounts must be null or a list of paths")
    tmpfs = tier.get("tmpfs") or {}
    if not isinstance(tmpfs, (dict, list)):
        raise ValueError("tmpfs must be a mapping of paths to options")
    return sorted({_safe_path(m) for m in [*mounts, *tmpfs]})


def _network_rules(caps: list[str]) -> list[str]:
    rules = ["network inet,", "network inet6,", "network unix,", "network netlink,"]
    if "net_raw" in caps:
        rules.append("network packet,")
    else:
        # Raw IP and packet sockets need CAP_NET_RAW; deny them outright too.
        # (Only inet/inet6 raw: netlink sockets are SOCK_RAW and need no cap.)
        rules += ["deny network inet raw,", "deny network inet6 raw,", "deny network packet,"]
    return rules


def _file_rules(readonly_rootfs: bool, mounts: list[str]) -> list[str]:
    if not readonly_rootfs:
        return ["file,"]
    rules = [
        "# Read-only rootfs: read, map, lock and exec everywhere; writes only",
        "# below the writable paths (nothing else allows w, so it is denied).",
        "/{,**} rkmix,",
        "/dev/{null,zero,full,tty,console,ptmx} rw,",
        "/dev/pts/* rw,",
        "/memfd:** rw,",
        "owner @{PROC}/@{pid}/{,task/@{tid}/}{comm,oom_score_adj,setgroups,uid_map,gid_map} w,",
    ]
    for path in sorted(set(_DEFAULT_WRITABLE) | set(mounts)):
        rules.append(f"{path}/{{,**}} rwlk,")
    return rules


def render(tier: Tier) -> str:
    """The AppArmor profile text for a compiled tier dict."""
    if not isinstance(tier, Mapping):  # a dict, or the cached policy's lazy tier (policy/stored.py)
        raise ValueError("tier must be a dict")
    name = profile_name(tier.get("name"))
    caps = _capabilities(tier)
    readonly = tier.get("readonly_rootfs", False)
    if not isinstance(readonly, bool):
        raise ValueError("readonly_rootfs must be true or false")
    mounts = _writable_mounts(tier)
    network = tier.get("network")
    if network is not None and not isinstance(network, dict):
        raise ValueError("network must be null or a compiled network policy")
    # The network policy (addresses, ports) is enforced with nftables; the
    # profile keeps inet sockets even for egress "none" (loopback).

    def block(lines: list[str]) -> str:
        return "\n".join(f"  {line}" for line in lines)

    sections = {
        "name": name,
        "network": block(_network_rules(caps)),
        "capabilities": block([f"capability {' '.join(caps)},"] if caps else ["# (none)"]),
        "files": block(_file_rules(readonly, mounts)),
    }
    import re  # render runs at install/load time, not on every start

    text = re.sub(r"\{\{[a-z]+\}\}", lambda m: sections[m.group(0)[2:-2]], _template())
    return text


def host_enabled(sys_root: str = "/sys") -> bool:
    """True when the kernel has AppArmor enabled and securityfs shows it."""
    try:
        with open(os.path.join(sys_root, "module/apparmor/parameters/enabled"), encoding="ascii") as f:
            flag = f.read().strip()
    except OSError:
        return False
    return flag == "Y" and os.path.isdir(os.path.join(sys_root, "kernel/security/apparmor"))


def _find_parser() -> str:
    for cand in PARSER_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    raise AppArmorError("apparmor_parser not found in /sbin or /usr/sbin")


def _is_listed(name: str, profiles_path: str) -> bool:
    try:
        with open(profiles_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                # "<name> (enforce)"; names may contain spaces, the mode may not
                if line.rstrip("\n").rpartition(" (")[0] == name:
                    return True
    except OSError:
        return False
    return False


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def ensure_loaded(
    tier: Tier,
    cache_dir: str = DEFAULT_CACHE_DIR,
    *,
    parser: str | None = None,
    profiles_path: str = SECURITYFS + "/profiles",
) -> str:
    """Load (replace) the tier's profile unless this exact text is in force.

    The text is kept as cache_dir/<name>.<sha256-12>; cache_dir/<name>.loaded
    records the digest last loaded. The parser runs only when that digest
    differs or the kernel does not list the profile (e.g. after a reboot).
    """
    import fcntl
    import hashlib
    import subprocess

    text = render(tier)
    name = profile_name(tier["name"])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    try:
        os.makedirs(cache_dir, mode=0o755, exist_ok=True)
        lock_fd = os.open(os.path.join(cache_dir, f"{name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as e:
        raise AppArmorError(f"apparmor cache {cache_dir}: {e.strerror}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        path = os.path.join(cache_dir, f"{name}.{digest}")
        marker = os.path.join(cache_dir, f"{name}.loaded")
        if _read(path) != text:
            _write_atomic(path, text)
        if (_read(marker) or "").strip() == digest and _is_listed(name, profiles_path):
            return name
        exe = parser or _find_parser()
        try:
            proc = subprocess.run(
                [exe, "-r", "-W", path],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AppArmorError(f"apparmor_parser for {name} failed: {e}") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            why = lines[0] if lines else f"exit status {proc.returncode}"
            raise AppArmorError(f"apparmor_parser could not load {name}: {why}")
        if not _is_listed(name, profiles_path):
            raise AppArmorError(f"profile {name} was loaded but {profiles_path} does not list it")
        _write_atomic(marker, digest + "\n")
        for entry in os.listdir(cache_dir):  # drop texts of older versions
            stem, _, tail = entry.rpartition(".")
            if stem == name and tail != digest and len(tail) == 12 and set(tail) <= set("0123456789abcdef"):
                try:
                    os.unlink(os.path.join(cache_dir, entry))
                except OSError:
                    pass
        return name
    except OSError as e:
        raise AppArmorError(f"apparmor cache {cache_dir}: {e.strerror or e}") from None
    finally:
        os.close(lock_fd)


def decide(tier: Tier, enabled: bool, *, load=None) -> tuple[str | None, str]:
    """(process.apparmorProfile to set or None, short note) for a tier.

    enabled is host_enabled(); load (default ensure_loaded) loads the
    profile and returns its name. A "prefer" tier whose profile cannot be
    loaded runs without it; a "require" tier is refused with AppArmorError.
    """
    mode = tier.get("apparmor")
    tname = tier.get("name")
    profile_name(tname)  # validates
    if mode not in MODES:
        raise ValueError(f"tier {tname}: apparmor must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return None, f"apparmor off for tier {tname}"
    if not enabled:
        if mode == "require":
            raise AppArmorError(f"tier {tname} requires AppArmor, which this host's kernel does not offer")
        return None, f"apparmor unavailable: tier {tname} runs without its profile"
    try:
        name = (load or ensure_loaded)(tier)
    except AppArmorError as e:
        if mode == "require":
            raise
        return None, f"apparmor profile not loaded ({e}): tier {tname} runs without it"
    return name, f"apparmor profile {name} in force"
