"""`tiergate explain CONTAINER`: why a container that tiergate hardened may be failing.

Reads the container's decision from the log and names the likely causes in
the tier: the capabilities it dropped with the failures each typically causes,
its seccomp denials, a read-only root, its network policy, and the exit status
when an engine on PATH still knows the container. Nothing here runs on the
start path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from tiergate.core.capabilities import ENGINE_DEFAULTS
from tiergate.cli.log import NOT_ALLOWED, same_container

# What software typically reports when the tier took the capability away.
SYMPTOMS: dict[str, str] = {
    "CAP_CHOWN": "chown() to another owner fails with EPERM (nginx: chown(\"/var/lib/nginx/body\", 33) "
                 "failed; entrypoints that chown their data or volumes)",
    "CAP_DAC_OVERRIDE": "root cannot open files other users own unless their mode allows it (EACCES)",
    "CAP_FOWNER": "chmod/utime/chattr on files root does not own fail with EPERM",
    "CAP_FSETID": "setuid/setgid bits are cleared when files are written",
    "CAP_KILL": "signals to processes of other users fail with EPERM",
    "CAP_SETGID": "setgid/setgroups/initgroups fail with EPERM (nginx and php-fpm workers: "
                  "setgid(33) failed; su, gosu, runuser)",
    "CAP_SETUID": "setuid fails with EPERM (a root process switching to its service user)",
    "CAP_SETPCAP": "changing capability sets fails with EPERM",
    "CAP_SETFCAP": "setting file capabilities (setcap) fails with EPERM",
    "CAP_NET_BIND_SERVICE": "binding ports below 1024 fails with EACCES",
    "CAP_SYS_CHROOT": "chroot fails with EPERM",
    "CAP_MKNOD": "mknod of device nodes fails with EPERM",
    "CAP_NET_RAW": "raw and packet sockets (ping, tcpdump) fail with EPERM",
    "CAP_AUDIT_WRITE": "writing audit records fails (login, sshd, su)",
}
ENGINES = ("podman", "docker")
EPERM = r"(Operation not permitted|EPERM|\(1: )"
# A line of the container's output that points at one cause: (pattern, the cause it names).
LOG_CAUSES: tuple[tuple[str, str], ...] = (
    (rf"\bchown\b.*{EPERM}", "CAP_CHOWN"),
    (rf"\b(setgid|setgroups|initgroups)\b.*{EPERM}", "CAP_SETGID"),
    (rf"\bsetuid\b.*{EPERM}", "CAP_SETUID"),
    (r"\bbind\b.*(Permission denied|EACCES)", "CAP_NET_BIND_SERVICE"),
    (r"Read-only file system|EROFS", "the read-only root filesystem"),
    (rf"\b(fork|spawn|clone)\b.*({EPERM}|EAGAIN)", "the seccomp profile (process creation)"),
    (rf"\bsocket\b.*{EPERM}", "the seccomp profile (socket families)"),
)


def decision_for(container: str, path: str) -> dict | None:
    """The last record that decided a tier for container (an id prefix, or a name an engine resolves)."""
    from tiergate.telemetry import record

    records = [r for r in record.read(path) if r.get("tier") or r.get("outcome") in NOT_ALLOWED]
    found = [r for r in records if same_container(container, r.get("container"))]
    for wanted in [] if found else _engine_ids(container):  # a name: ask the engines for its id
        found = [r for r in records if same_container(wanted, r.get("container"))]
        if found:
            break
    return found[-1] if found else None


def _inspect(container: str, fmt: str) -> list[str]:
    """`ENGINE inspect --format FMT container` for each engine on PATH that knows it."""
    out = []
    for engine in ENGINES:
        exe = shutil.which(engine)
        if not exe:
            continue
        try:
            proc = subprocess.run([exe, "inspect", "--format", fmt, container], capture_output=True,
                                  text=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and proc.stdout.strip():
            out.append(f"{engine}: {proc.stdout.strip()}")
    return out


def _log_lines(container: str) -> list[str]:
    """The last lines the container wrote (stdout and stderr), from the first engine that has them."""
    for engine in ENGINES:
        exe = shutil.which(engine)
        if not exe:
            continue
        try:
            proc = subprocess.run([exe, "logs", "--tail", "50", container], capture_output=True, text=True,
                                  timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0:
            return (proc.stdout + proc.stderr).splitlines()
    return []


def causes_in_log(lines: list[str]) -> list[tuple[str, str]]:
    """(cause, line) for each output line that matches a known symptom, first match per cause."""
    found: dict[str, str] = {}
    for line in lines:
        for pattern, cause in LOG_CAUSES:
            if cause not in found and re.search(pattern, line):
                found[cause] = line.strip()
    return list(found.items())


def _engine_ids(container: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in _inspect(container, "{{.Id}}")]


def dropped_caps(tier: dict) -> list[str]:
    """Engine-default capabilities the tier takes away."""
    return [] if tier.get("passthrough") else sorted(ENGINE_DEFAULTS - set(tier.get("capabilities") or ()))


def removed(tier: dict) -> set[str]:
    """The causes (LOG_CAUSES names) this tier can be behind."""
    out = set(dropped_caps(tier))
    if tier.get("readonly_rootfs"):
        out.add("the read-only root filesystem")
    if tier.get("seccomp"):
        out |= {cause for _, cause in LOG_CAUSES if cause.startswith("the seccomp")}
    return out


def likely_causes(tier: dict) -> list[str]:
    """Lines naming what in the tier can make software fail, most common first."""
    lines = []
    if not tier.get("passthrough"):
        dropped = dropped_caps(tier)
        if dropped:
            lines.append(f"  capabilities dropped (an engine grants them by default): {', '.join(dropped)}")
            lines += [f"    {cap}: {SYMPTOMS[cap]}" for cap in dropped if cap in SYMPTOMS]
        lines.append("    a process running as a non-root user has no capabilities at all under this tier "
                     "(not even those it keeps)")
    if tier.get("readonly_rootfs"):
        tmpfs = ", ".join(sorted(tier.get("tmpfs") or {})) or "none"
        lines.append(f"  read-only root filesystem: writes fail with EROFS except in its tmpfs ({tmpfs})")
    if tier.get("seccomp"):
        lines.append(f"  seccomp profile {tier.get('seccomp_profile')}: calls it denies fail with an errno "
                     "(EPERM, or ENOSYS), no audit record is written; see `tiergate explain --tier "
                     f"{tier['name']}` for the denied syscalls")
    net = tier.get("network")
    if net:
        lines.append(f"  network policy {net['name']}: egress {net['egress']}, ingress {net['ingress']}, "
                     f"dns {net['dns']}: other connections time out; `tiergate status CONTAINER` counts drops")
    return lines


def explain_container(args) -> int:
    from tiergate.telemetry import record
    from tiergate.policy.cache import load_compiled

    path = record.log_path(getattr(args, "log", None))
    rec = decision_for(args.container, path)
    if rec is None:
        print(f"tiergate: no decision for container {args.container!r} in {path} "
              "(pass --log F, or the container was not started through tiergate)", file=sys.stderr)
        return 2
    policy = load_compiled(args.policy)
    name = rec.get("tier")
    out = [f"container {rec.get('container')}  image {rec.get('image', '-')}  ({rec.get('engine', '-')}, "
           f"{rec.get('time', '-')})",
           f"tier: {name}  outcome {rec.get('outcome')}  mode {rec.get('mode', 'enforce')}",
           f"why:  {rec.get('why') or rec.get('reason') or '-'}"]
    for status in _inspect(args.container, "exit status {{.State.ExitCode}} ({{.State.Status}})"):
        out.append(f"state: {status}")
    if rec.get("changes"):
        out.append(f"changes ({len(rec['changes'])}):")
        out += [f"  - {_short(c)}" for c in rec["changes"]]
    if rec.get("outcome") in NOT_ALLOWED:
        out.append("it did not start: tiergate refused it (the why line says what to change)")
        print("\n".join(out))
        return 0
    tier = policy["tiers"].get(name)
    seen = [(c, line) for c, line in causes_in_log(_log_lines(args.container)) if tier and c in removed(tier)]
    if seen:
        out.append("most likely (from the container's output):")
        out += [f"  {cause}, which tier {name} removes: {line[-200:]}" for cause, line in seen]
    if tier is None:
        out.append(f"note: tier {name!r} is not in the current policy; causes cannot be listed")
    else:
        out.append("likely causes, if it fails:")
        out += likely_causes(tier)
    out.append("fixes by symptom: docs/roles.md, \"My container fails under tier X\"")
    print("\n".join(out))
    return 0


def _short(change: str | dict) -> str:
    text = change if isinstance(change, str) else f"{change.get('field')}: {change.get('what')}"
    return re.sub(r"\s+", " ", text)
