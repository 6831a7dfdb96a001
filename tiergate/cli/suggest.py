"""`tiergate collect` and `tiergate suggest`: from what audit-mode containers did, a tier and a delta.

In audit mode the tier's seccomp filter logs (SCMP_ACT_LOG) what it would deny:
the kernel prints `audit: type=1326 ... pid=P ... syscall=N` with a host pid and
no container. `collect` reads those records from /dev/kmsg as they arrive and
attributes each to its container by the pid's cgroup, read at once, or, for a
pid already gone (a short-lived `unshare` or `mount`), by its parent's container
learnt from the kernel's fork events (process connector) and a /proc scan every
20 ms; records it cannot attribute are kept with container "". `suggest` then
takes the evidence of one container, or of every container of an image.

Limits (said in the output too): capabilities are inferred from the syscalls
(mount -> CAP_SYS_ADMIN, chroot -> CAP_SYS_CHROOT, ...), not observed; a
syscall the tier allows but a capability would have refused (socket(AF_PACKET)
with CAP_NET_RAW) leaves no record; network flows are not collected (nflog
prints nothing in container namespaces unless the host-wide nf_log_all_netns is
set, which tiergate never changes; see `tiergate status` for per-rule counters).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from tiergate.core.names import DECISION_STAGES

KMSG = "/dev/kmsg"
HEX64 = re.compile(r"[0-9a-f]{64}")
SECCOMP = re.compile(r"type=1326\b.*?\bpid=(\d+)\b.*?\bcomm=(\"[^\"]*\"|\S+).*?\barch=([0-9a-f]+)\s+syscall=(\d+)")
AUDIT_ARCH = {"c000003e": "X86_64", "40000003": "X86", "c00000b7": "AARCH64", "40000028": "ARM"}
# What a syscall needs beyond seccomp, for the delta (inferred, not observed).
SYSCALL_CAPS = {
    **dict.fromkeys(("mount", "umount", "umount2", "pivot_root", "unshare", "setns", "sethostname",
                     "setdomainname", "swapon", "swapoff", "quotactl", "fsopen", "fsmount", "move_mount",
                     "open_tree", "fsconfig", "mount_setattr"), "CAP_SYS_ADMIN"),
    "chroot": "CAP_SYS_CHROOT",
    **dict.fromkeys(("reboot", "kexec_load", "kexec_file_load"), "CAP_SYS_BOOT"),
    **dict.fromkeys(("init_module", "finit_module", "delete_module"), "CAP_SYS_MODULE"),
    **dict.fromkeys(("ptrace", "process_vm_readv", "process_vm_writev"), "CAP_SYS_PTRACE"),
    **dict.fromkeys(("settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime"), "CAP_SYS_TIME"),
    **dict.fromkeys(("iopl", "ioperm"), "CAP_SYS_RAWIO"),
    "acct": "CAP_SYS_PACCT",
    **dict.fromkeys(("mknod", "mknodat"), "CAP_MKNOD"),
}
LIMITS = ("capabilities are inferred from the syscalls, not observed; a syscall the tier allows leaves no "
          "record (e.g. socket(AF_PACKET), which only CAP_NET_RAW guards); network flows are not collected")


def register(sub) -> None:
    c = sub.add_parser("collect", help="attribute the kernel's seccomp audit records to containers, while they run",
                       description="Read seccomp log records (audit type=1326) from /dev/kmsg as they arrive and "
                       "write each as a JSON line naming its container (from the pid's cgroup), for `tiergate "
                       "suggest`. Run it (as root) while audit-mode containers run; stop it with SIGTERM/SIGINT.")
    c.add_argument("--out", metavar="F", help="evidence file (default: the decision log's path + .kernel.jsonl)")
    c.add_argument("--file", metavar="LOG", help="decision log whose evidence file is the default --out")
    c.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until signalled)")
    c.set_defaults(func=cmd_collect)
    s = sub.add_parser("suggest", help="the least privileged tier and policy delta for what audited containers did",
                       description="From the audit-mode decisions of a container (id, short id or name) or of every "
                       "container of an image (reference or id), and the kernel records `tiergate collect` "
                       "attributed to them: the least privileged shipped tier that would have let them run, and the "
                       "smallest delta on top of the tier they were audited under, as a TOML snippet, with evidence. "
                       "Limits: " + LIMITS + ".")
    s.add_argument("target", metavar="CONTAINER|IMAGE")
    s.add_argument("--file", metavar="LOG", help="decision log (default: $TIERGATE_LOG or the system log)")
    s.add_argument("--evidence", metavar="F", help="what `tiergate collect` wrote (default: LOG.kernel.jsonl)")
    s.add_argument("--json", action="store_true", help="print the suggestion as JSON")
    s.set_defaults(func=cmd_suggest)


# -- collect ---------------------------------------------------------------------------

def cgroup_container(pid: int, proc: str = "/proc") -> str:
    """The 64-hex container id in the pid's cgroup path (podman libpod-<id>, docker/<id>, CRI), or ""."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            m = HEX64.search(fh.read())
    except OSError:
        return ""
    return m.group(0) if m else ""


def parse_kmsg(line: str) -> dict | None:
    """A seccomp log record from one /dev/kmsg line ("prio,seq,usec,flags;text"), else None."""
    m = SECCOMP.search(line)
    if not m:
        return None
    return {"pid": int(m.group(1)), "comm": m.group(2).strip('"'), "arch": AUDIT_ARCH.get(m.group(3), m.group(3)),
            "nr": int(m.group(4))}


def syscall_name(arch: str, nr: int) -> str:
    import pyseccomp

    try:
        name = pyseccomp.resolve_syscall(getattr(pyseccomp.Arch, arch), nr)
    except (AttributeError, ValueError, OSError):
        return f"syscall_{nr}"
    return name.decode() if isinstance(name, bytes) else str(name)


class PidMap:
    """pid -> container, for pids that are gone by the time their record is read.

    Filled from fork events (the kernel's process connector: a child belongs to its
    parent's container, read while the parent lives) and by scanning /proc for new
    pids every 20 ms; entries of dead pids are kept KEEP seconds.
    """

    KEEP = 10.0

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.known: dict = {}

    def refresh(self) -> None:
        try:
            pids = {int(e) for e in os.listdir(self.proc) if e.isdigit()}
        except OSError:
            return
        now = time.monotonic()
        for pid, (_, seen) in list(self.known.items()):
            if pid not in pids and now - seen > self.KEEP:
                del self.known[pid]
        for pid in pids - self.known.keys():
            self.known[pid] = (cgroup_container(pid, self.proc), now)

    def forked(self, parent: int, child: int) -> None:
        cid = cgroup_container(parent, self.proc) or (self.known.get(parent) or ("", 0))[0]
        if cid:
            self.known[child] = (cid, time.monotonic())

    def container(self, pid: int) -> tuple[str, str]:
        now = cgroup_container(pid, self.proc)
        if now:
            return now, "cgroup"
        cid = (self.known.get(pid) or ("", 0))[0]
        return (cid, "pid map") if cid else ("", "unattributed")


def fork_events():
    """A netlink socket on the kernel's process connector (fork events), or None where it is missing."""
    import socket
    import struct

    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 11)  # NETLINK_CONNECTOR
        sock.bind((os.getpid(), 1))  # CN_IDX_PROC
        msg = struct.pack("=IIIIHHI", 1, 1, 0, 0, 4, 0, 1)  # cn_msg CN_IDX_PROC/CN_VAL_PROC, PROC_CN_MCAST_LISTEN
        sock.send(struct.pack("=IHHII", 16 + len(msg), 3, 0, 0, os.getpid()) + msg)  # NLMSG_DONE
        sock.setblocking(False)
    except OSError:
        return None
    return sock


def drain_forks(sock, pids: PidMap) -> None:
    import struct

    while True:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ENOBUFS: events were lost; the /proc scan still runs
            return
        if len(data) >= 68 and struct.unpack_from("=I", data, 36)[0] == 1:  # PROC_EVENT_FORK
            _, parent, _, child = struct.unpack_from("=IIII", data, 52)
            pids.forked(parent, child)


def collect(out: str, duration: float | None = None, kmsg: str = KMSG, proc: str = "/proc") -> int:
    import select
    import signal

    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.lseek(fd, 0, os.SEEK_END)  # only what happens from now on
    forks = fork_events()
    pids = PidMap(proc)
    pids.refresh()
    deadline = None if duration is None else time.monotonic() + duration
    written = 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), mode=0o750, exist_ok=True)
    with open(out, "a", encoding="utf-8") as sink:
        while not stop and (deadline is None or time.monotonic() < deadline):
            try:
                select.select([fd] + ([forks] if forks else []), [], [], 0.02)
            except InterruptedError:
                continue
            if forks:
                drain_forks(forks, pids)  # first: a record's pid may have been forked a moment ago
            while True:
                try:
                    raw = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except BrokenPipeError:  # the ring buffer overwrote records we had not read
                    continue
                rec = parse_kmsg(raw.decode("utf-8", "replace"))
                if rec is None:
                    continue
                cid, how = pids.container(rec["pid"])
                if not cid and forks:  # its fork event may have queued after the last drain
                    drain_forks(forks, pids)
                    cid, how = pids.container(rec["pid"])
                rec.update(time=_now(), kind="syscall", container=cid, attributed_by=how,
                           syscall=syscall_name(rec["arch"], rec["nr"]))
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
                written += 1
            pids.refresh()
    os.close(fd)
    if forks:
        forks.close()
    print(f"collected {written} record(s) into {out}", file=sys.stderr)
    return 0


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def evidence_path(log: str) -> str:
    return log + ".kernel.jsonl"


def cmd_collect(args) -> int:
    from tiergate.telemetry import record

    return collect(args.out or evidence_path(record.log_path(args.file)), args.duration)


# -- suggest ---------------------------------------------------------------------------

def containers_of(records: list[dict], target: str) -> list[dict]:
    """The latest decision record of each container the target names (a container, else an image)."""
    from tiergate.cli.log import same_container

    decisions = [r for r in records if r.get("stage") in DECISION_STAGES and r.get("container")
                 and r.get("outcome") in ("allowed", "allowed-on-error")]
    chosen = [r for r in decisions if same_container(target, r["container"]) or r.get("name") == target]
    if not chosen:
        bare = target.removeprefix("sha256:")
        chosen = [r for r in decisions if target in (r.get("image"), str(r.get("image", "")).rsplit(":", 1)[0])
                  or (len(bare) >= 12 and str(r.get("image_id") or "").startswith(bare[:12]))]
    latest: dict[str, dict] = {}
    for r in chosen:
        latest[r["container"]] = r
    return list(latest.values())


def allows(tier: dict, syscall: str) -> bool:
    """Does the tier's seccomp filter allow this syscall whatever its arguments?"""
    profile = tier.get("seccomp")
    if not profile or tier.get("passthrough"):
        return True
    rules = [r for r in profile.get("syscalls", []) if syscall in r.get("names", [])]
    if any(r.get("action") == "SCMP_ACT_ALLOW" and not r.get("args") for r in rules):
        return True
    return not rules and profile.get("defaultAction") == "SCMP_ACT_ALLOW"


def delta(tier: dict, syscalls: dict) -> dict:
    needed = sorted(s for s in syscalls if not allows(tier, s))
    caps = sorted({SYSCALL_CAPS[s] for s in syscalls if s in SYSCALL_CAPS} - set(tier.get("capabilities") or ()))
    if tier.get("passthrough"):
        caps = []
    return {"seccomp_allow": needed, "capabilities": caps}


def suggest(policy: dict, records: list[dict], kernel: list[dict], target: str) -> dict:
    from tiergate.core.errors import TiergateError

    ran = containers_of(records, target)
    if not ran:
        raise TiergateError(f"no started container of {target!r} in the decision log")
    ids = {r["container"] for r in ran}
    syscalls: dict[str, dict] = {}
    for k in kernel:
        if k.get("kind") == "syscall" and k.get("container") in ids:
            ev = syscalls.setdefault(k["syscall"], {"count": 0, "containers": set(), "first": k["time"], "last": k["time"]})
            ev["count"] += 1
            ev["containers"].add(k["container"])
            ev["first"], ev["last"] = min(ev["first"], k["time"]), max(ev["last"], k["time"])
    tiers = policy["tiers"]
    audited = sorted({r.get("tier") for r in ran if r.get("tier") in tiers},
                     key=lambda t: -tiers[t]["strictness"])
    base = audited[0] if audited else policy["default_tier"]
    fits = [n for n, t in tiers.items() if not any(delta(t, syscalls).values())]
    least = max(fits, key=lambda n: tiers[n]["strictness"]) if fits else None
    d = delta(tiers[base], syscalls)
    return {
        "target": target,
        "containers": sorted(ids),
        "audit_mode": sum(1 for r in ran if r.get("mode") == "audit"),
        "audited_as": base,
        "least_privileged_fitting_tier": least,
        "delta": d,
        "evidence": {s: {**e, "containers": sorted(e["containers"]),
                         "needs": SYSCALL_CAPS.get(s)} for s, e in sorted(syscalls.items())},
        "limits": LIMITS,
    }


def snippet(result: dict, policy: dict) -> str:
    base = result["audited_as"]
    tier = policy["tiers"][base]
    name = re.sub(r"[^a-z0-9-]+", "-", f"{base}-{result['target'].rsplit('/', 1)[-1].split(':')[0]}".lower())[:63]
    lines = [f"[tiers.{name.strip('-')}]", f'extends = "{base}"']
    d = result["delta"]
    if d["seccomp_allow"]:
        lines.append("seccomp_allow = [" + ", ".join(f'"{s}"' for s in d["seccomp_allow"]) + "]")
    if d["capabilities"]:
        caps = sorted(set(tier["capabilities"]) | set(d["capabilities"]))
        lines.append("capabilities = [" + ", ".join(f'"{c}"' for c in caps) + "]  # the tier's, plus "
                     + ", ".join(d["capabilities"]) + " (inferred)")
    return "\n".join(lines) + "\n"


def render(result: dict, policy: dict) -> str:
    out = [f"# tiergate suggest {result['target']}: {len(result['containers'])} container(s), "
           f"{result['audit_mode']} in audit mode, audited as tier {result['audited_as']}",
           f"# least privileged shipped tier that would have let them run: {result['least_privileged_fitting_tier']}",
           f"# smallest delta on top of {result['audited_as']}:"]
    if not any(result["delta"].values()):
        out.append(f"# none: tier {result['audited_as']} already lets them run")
    else:
        out.append(snippet(result, policy).rstrip("\n"))
    out.append("# evidence (seccomp log records attributed to these containers):")
    for name, e in result["evidence"].items():
        out.append(f"#   {name}: {e['count']} call(s) by {len(e['containers'])} container(s), first {e['first']}, "
                   f"last {e['last']}" + (f"; needs {e['needs']}" if e["needs"] else ""))
    if not result["evidence"]:
        out.append("#   none recorded (was `tiergate collect` running?)")
    out.append(f"# limits: {result['limits']}")
    return "\n".join(out)


def read_evidence(path: str) -> list[dict]:
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("syscall"), str) and isinstance(rec.get("time"), str):
                    out.append(rec)
    except OSError:
        pass
    return out


def cmd_suggest(args) -> int:
    from tiergate.telemetry import record
    from tiergate.policy.cache import load_compiled

    log = record.log_path(args.file)
    policy = load_compiled(args.policy)
    result = suggest(policy, record.read(log), read_evidence(args.evidence or evidence_path(log)), args.target)
    if args.json:
        result["snippet"] = snippet(result, policy)
        print(json.dumps(result, indent=2))
    else:
        print(render(result, policy))
    return 0
