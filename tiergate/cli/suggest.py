"""`tiergate collect` and `tiergate suggest`: from what audit-mode containers did, a tier and a delta.

`collect` (root, while audit-mode containers run) writes JSON lines, each naming
its container (the 64-hex id in the pid's cgroup, read at once; for a pid
already gone, its parent's container learnt from the kernel's fork events and a
/proc scan every 20 ms):
- syscalls: the audit filter logs (SCMP_ACT_LOG) what the tier would deny, and
  socket(AF_PACKET) where the tier allows it (seccomp/audit.py); the kernel
  prints `audit: type=1326 ... pid=P ... syscall=N` on /dev/kmsg.
- capabilities: every granted capability check, from the kernel tracepoint
  capability:cap_capable (telemetry/captrace.py): observed, not inferred.
  Without the tracepoint (Linux < 6.15) they are inferred from the syscalls.
- flows: every new TCP/UDP flow the tier's egress rules would drop, counted per
  peer/proto/port by a set in the container's own netns (network/flows.py),
  read through a netns handle held until the container is gone
  (telemetry/netflows.py). The host-wide nf_log_all_netns is never changed.
`suggest` then takes the evidence of one container, or of every container of an image.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from tiergate.core.names import DECISION_STAGES
from tiergate.core.capabilities import NAMES as CAP_NAMES

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
    "socket(AF_PACKET)": "CAP_NET_RAW",
    **dict.fromkeys(("reboot", "kexec_load", "kexec_file_load"), "CAP_SYS_BOOT"),
    **dict.fromkeys(("init_module", "finit_module", "delete_module"), "CAP_SYS_MODULE"),
    **dict.fromkeys(("ptrace", "process_vm_readv", "process_vm_writev"), "CAP_SYS_PTRACE"),
    **dict.fromkeys(("settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime"), "CAP_SYS_TIME"),
    **dict.fromkeys(("iopl", "ioperm"), "CAP_SYS_RAWIO"),
    "acct": "CAP_SYS_PACCT",
    **dict.fromkeys(("mknod", "mknodat"), "CAP_MKNOD"),
}
LIMITS = ("a seccomp record holds no arguments: where the tier admits AF_PACKET a logged socket() is reported as "
          "socket(AF_PACKET) (the only other family such tiers deny is AF_VSOCK); a granted capability check counts as a "
          "use unless the kernel made it with other credentials (overlayfs) or only to pick a behaviour (overcommit); "
          "flows are per network namespace (containers sharing one share them), ICMP and other protocols only in "
          "the rule counters of `tiergate status`; first/last seen of flows are to the collector's 0.5 s poll")


def register(sub) -> None:
    c = sub.add_parser("collect", help="attribute syscalls, capability uses and would-be-dropped flows to containers",
                       description="Read seccomp log records (audit type=1326) from /dev/kmsg, granted capability "
                       "checks (tracepoint capability:cap_capable) and the flows audit rulesets count in each "
                       "container's netns, and write them as JSON lines naming their container (from the pid's "
                       "cgroup), for `tiergate suggest`. Run it (as root) while audit-mode containers run; stop it "
                       "with SIGTERM/SIGINT.")
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
    """The 64-hex container id in the pid's cgroup path (podman libpod-<id>, docker/<id>, CRI), or "".

    Not podman's monitor (libpod-conmon-<id>.scope under systemd): conmon runs with the engine's
    privileges, outside the container."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return ""
    m = HEX64.search(text)
    return m.group(0) if m and "conmon" not in text else ""


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

    def refresh(self) -> dict[str, int]:
        """Scan /proc; the containers that have a live pid now, each with one of its pids."""
        try:
            pids = {int(e) for e in os.listdir(self.proc) if e.isdigit()}
        except OSError:
            return {}
        now = time.monotonic()
        for pid, (_, seen) in list(self.known.items()):
            if pid not in pids and now - seen > self.KEEP:
                del self.known[pid]
        for pid in pids - self.known.keys():
            self.known[pid] = (cgroup_container(pid, self.proc), now)
        return {self.known[p][0]: p for p in pids if p in self.known and self.known[p][0]}

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
        try:  # a burst of forks elsewhere on the host must not overflow it (ENOBUFS loses events)
            sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            pass
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
    """Attribute seccomp log records, capability checks and would-be-dropped flows to containers, as they happen."""
    import select
    import signal

    from tiergate.telemetry.captrace import CapTrace, Unavailable
    from tiergate.telemetry.netflows import FlowWatch

    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        caps, how_caps = CapTrace(), "observed: kernel tracepoint capability:cap_capable (granted checks)"
    except Unavailable as exc:
        caps, how_caps = None, f"inferred from the syscalls ({exc})"
    fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.lseek(fd, 0, os.SEEK_END)  # only what happens from now on
    forks = fork_events()
    pids = PidMap(proc)
    nets = FlowWatch(proc)
    nets.saw(pids.refresh())
    deadline = None if duration is None else time.monotonic() + duration
    written = 0
    used: dict[tuple[str, str], dict] = {}
    next_flush = time.monotonic() + 1.0
    os.makedirs(os.path.dirname(os.path.abspath(out)), mode=0o750, exist_ok=True)
    with open(out, "a", encoding="utf-8") as sink:
        def emit(rec: dict) -> None:
            nonlocal written
            sink.write(json.dumps(rec) + "\n")
            written += 1

        def attribute(pid: int) -> tuple[str, str]:
            """The container of `pid`, and how it was known; a pid that already exited is found
            through its fork event, which may have queued after the last drain."""
            cid, how = pids.container(pid)
            if not cid and forks:
                drain_forks(forks, pids)
                cid, how = pids.container(pid)
            return cid, how

        emit({"kind": "collector", "time": _now(), "capabilities": how_caps})
        sink.flush()  # ready: what happens from now on is seen
        try:
            while not stop and (deadline is None or time.monotonic() < deadline):
                try:
                    select.select([fd] + ([forks] if forks else []), [], [], 0.02)
                except InterruptedError:
                    continue
                if forks:
                    drain_forks(forks, pids)  # first: a record's pid may have been forked a moment ago
                for rec in read_kmsg(fd):
                    cid, how = attribute(rec["pid"])
                    rec.update(time=_now(), kind="syscall", container=cid, attributed_by=how,
                               syscall=syscall_name(rec["arch"], rec["nr"]))
                    emit(rec)
                if caps:
                    for comm, pid, cap in caps.read():
                        cid, _ = attribute(pid)
                        if cid:
                            note_use(used, cid, CAP_NAMES[cap] if cap < len(CAP_NAMES) else f"cap_{cap}", comm)
                nets.saw(pids.refresh())
                found = nets.records()
                if found or time.monotonic() >= next_flush:
                    flush(emit, used, found)
                    next_flush = time.monotonic() + 1.0
                sink.flush()
        finally:
            if caps:
                caps.close()
            flush(emit, used, nets.close())
    os.close(fd)
    if forks:
        forks.close()
    print(f"collected {written} record(s) into {out}; capabilities {how_caps}", file=sys.stderr)
    return 0


def read_kmsg(fd: int):
    """The seccomp records readable now from /dev/kmsg."""
    while True:
        try:
            raw = os.read(fd, 8192)
        except BlockingIOError:
            return
        except BrokenPipeError:  # the ring buffer overwrote records we had not read
            continue
        rec = parse_kmsg(raw.decode("utf-8", "replace"))
        if rec is not None:
            yield rec


def note_use(used: dict, cid: str, cap: str, comm: str) -> None:
    now = _now()
    ev = used.setdefault((cid, cap), {"count": 0, "first": now, "comms": set()})
    ev["count"] += 1
    ev["last"] = now
    ev["comms"].add(comm)


def flush(emit, used: dict, flows: list[dict]) -> None:
    """Capability uses aggregated since the last flush, and flow deltas, as evidence records."""
    for (cid, cap), ev in used.items():
        emit({"kind": "capability", "container": cid, "capability": cap, "count": ev["count"],
              "first": ev["first"], "last": ev["last"], "time": ev["last"], "comms": sorted(ev["comms"])})
    used.clear()
    now = _now()
    for f in flows:
        emit({**f, "first": now, "last": now, "time": now})


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


PACKET = "socket(AF_PACKET)"  # a socket record where the audited tier admits AF_PACKET (seccomp/audit.py)


def allows(tier: dict, syscall: str) -> bool:
    """Does the tier's seccomp filter allow this syscall whatever its arguments (AF_PACKET for PACKET)?"""
    from tiergate.seccomp.audit import AF_PACKET, admits

    profile = tier.get("seccomp")
    if not profile or tier.get("passthrough"):
        return True
    if syscall == PACKET:
        return admits(profile, "socket", AF_PACKET)
    rules = [r for r in profile.get("syscalls", []) if syscall in r.get("names", [])]
    if any(r.get("action") == "SCMP_ACT_ALLOW" and not r.get("args") for r in rules):
        return True
    return not rules and profile.get("defaultAction") == "SCMP_ACT_ALLOW"


def reaches(network: dict | None, flow: dict) -> bool:
    """Would this network policy let the flow (peer, proto, port) out? (None: no policy of tiergate's.)"""
    import ipaddress

    if network is None:
        return True
    peer = ipaddress.ip_address(flow["peer"])

    def covers(cidr: str) -> bool:
        net = ipaddress.ip_network(cidr, strict=False)
        return net.version == peer.version and peer in net

    if network["egress"] == "any":
        return not any(covers(c) for c in network.get("deny") or [])
    if network["egress"] == "none":
        return False
    return any(covers(e["cidr"]) and (not e.get("ports") or flow["port"] in e["ports"])
               and e.get("proto", "any") in ("any", flow["proto"]) for e in network.get("allow") or [])


def delta(tier: dict, syscalls: dict, caps: dict | None = None, flows: dict | None = None) -> dict:
    """What the tier lacks for this evidence: syscalls, capabilities (observed or needed by a syscall), egress."""
    if tier.get("passthrough"):
        return {"seccomp_allow": [], "capabilities": [], "egress": []}
    needed = sorted(s for s in syscalls if s != PACKET and not allows(tier, s))
    wanted = {SYSCALL_CAPS[s] for s in syscalls if s in SYSCALL_CAPS} | set(caps or ())
    egress: dict[tuple[str, str], set[int]] = {}
    for f in (flows or {}).values():
        if not reaches(tier.get("network"), f):
            egress.setdefault((f["peer"], f["proto"]), set()).add(f["port"])
    return {"seccomp_allow": needed + ([PACKET] if PACKET in syscalls and not allows(tier, PACKET) else []),
            "capabilities": sorted(wanted - set(tier.get("capabilities") or ())),
            "egress": [{"cidr": f"{peer}/{128 if ':' in peer else 32}", "ports": sorted(ports), "proto": proto}
                       for (peer, proto), ports in sorted(egress.items())]}


def _seen(table: dict, key, k: dict, count: int = 1) -> dict:
    ev = table.setdefault(key, {"count": 0, "containers": set(), "first": k.get("first", k["time"]),
                                "last": k.get("last", k["time"])})
    ev["count"] += count
    ev["containers"].add(k["container"])
    ev["first"], ev["last"] = min(ev["first"], k.get("first", k["time"])), max(ev["last"], k.get("last", k["time"]))
    return ev


def suggest(policy: dict, records: list[dict], kernel: list[dict], target: str) -> dict:
    from tiergate.core.errors import TiergateError
    from tiergate.seccomp.audit import AF_PACKET, admits

    ran = containers_of(records, target)
    if not ran:
        raise TiergateError(f"no started container of {target!r} in the decision log")
    ids = {r["container"] for r in ran}
    tiers = policy["tiers"]
    audited = sorted({r.get("tier") for r in ran if r.get("tier") in tiers},
                     key=lambda t: -tiers[t]["strictness"])
    base = audited[0] if audited else policy["default_tier"]
    # the record holds no arguments: where the audited tier admits AF_PACKET, its log filter logs a socket
    # call only for AF_PACKET and the families the tier denies (AF_VSOCK in the shipped profiles)
    packet = admits(tiers[base].get("seccomp"), "socket", AF_PACKET)
    syscalls: dict[str, dict] = {}
    caps: dict[str, dict] = {}
    flows: dict[tuple, dict] = {}
    how_caps = "inferred from the syscalls (no `tiergate collect` header in the evidence)"
    for k in kernel:
        if k.get("kind") == "collector":
            how_caps = str(k.get("capabilities"))
        if k.get("container") not in ids:
            continue
        if k.get("kind") == "syscall":
            name = PACKET if k["syscall"] == "socket" and packet else k["syscall"]
            _seen(syscalls, name, k)
        elif k.get("kind") == "capability":
            _seen(caps, k["capability"], k, int(k.get("count", 1)))
        elif k.get("kind") == "flow":
            f = _seen(flows, (k["peer"], k["proto"], k["port"]), k, int(k.get("count", 1)))
            f.update(peer=k["peer"], proto=k["proto"], port=k["port"])
    fits = [n for n, t in tiers.items() if not any(delta(t, syscalls, caps, flows).values())]
    least = max(fits, key=lambda n: tiers[n]["strictness"]) if fits else None
    d = delta(tiers[base], syscalls, caps, flows)

    def shown(e: dict) -> dict:
        return {**e, "containers": sorted(e["containers"])}

    return {
        "target": target,
        "containers": sorted(ids),
        "audit_mode": sum(1 for r in ran if r.get("mode") == "audit"),
        "audited_as": base,
        "least_privileged_fitting_tier": least,
        "delta": d,
        "evidence": {s: {**shown(e), "needs": SYSCALL_CAPS.get(s)} for s, e in sorted(syscalls.items())},
        "capabilities": {c: {**shown(e), "how": "observed"} for c, e in sorted(caps.items())},
        "flows": [{**shown(e), "would_drop_under": base} for _, e in sorted(flows.items())],
        "capabilities_source": how_caps,
        "limits": LIMITS,
    }


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def snippet(result: dict, policy: dict) -> str:
    base = result["audited_as"]
    tier = policy["tiers"][base]
    name = re.sub(r"[^a-z0-9-]+", "-", f"{base}-{result['target'].rsplit('/', 1)[-1].split(':')[0]}".lower())[:63]
    name = name.strip("-")
    lines = [f"[tiers.{name}]", f'extends = "{base}"']
    d = result["delta"]
    syscalls = [s for s in d["seccomp_allow"] if s != PACKET]
    if syscalls:
        lines.append("seccomp_allow = [" + ", ".join(f'"{s}"' for s in syscalls) + "]")
    if d["capabilities"]:
        caps = sorted(set(tier["capabilities"]) | set(d["capabilities"]))
        lines.append("capabilities = [" + ", ".join(f'"{c}"' for c in caps) + "]  # the tier's, plus "
                     + ", ".join(d["capabilities"]))
    net = tier.get("network")
    if d["egress"] and net is not None and net["egress"] != "any":
        lines.append(f'network = "{name}"')
        lines += ["", f"[networks.{name}]  # network {net['name']}, plus the flows seen"]
        for key in ("egress", "ingress", "ingress_ports", "dns", "allow_link_local", "log", "rate"):
            value = "allowlist" if key == "egress" else net.get(key)
            if value is not None and value != []:
                lines.append(f"{key} = {_toml(value)}")
        lines.append("allow = [")
        lines += [f"  {_toml(e)}," for e in list(net.get("allow") or []) + d["egress"]]
        lines.append("]")
    elif d["egress"]:
        lines.append(f"# egress: network {net['name'] if net else '?'} denies "
                     + ", ".join(f"{e['cidr']}:{e['ports']}/{e['proto']}" for e in d["egress"])
                     + ": remove them from its deny list")
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
    out.append("# evidence: syscalls (seccomp log records attributed to these containers):")
    for name, e in result["evidence"].items():
        out.append(f"#   {name}: {e['count']} call(s) by {len(e['containers'])} container(s), first {e['first']}, "
                   f"last {e['last']}" + (f"; needs {e['needs']}" if e["needs"] else ""))
    if not result["evidence"]:
        out.append("#   none recorded (was `tiergate collect` running?)")
    out.append(f"# evidence: capabilities ({result['capabilities_source']}):")
    for cap, e in result["capabilities"].items():
        out.append(f"#   {cap}: {e['count']} granted check(s), first {e['first']}, last {e['last']}")
    out.append(f"# evidence: flows tier {result['audited_as']} would drop (counted in the container's netns):")
    for f in result["flows"]:
        out.append(f"#   {f['proto']} {f['peer']}:{f['port']}: {f['count']} packet(s) opening it, "
                   f"first {f['first']}, last {f['last']}")
    out.append(f"# limits: {result['limits']}")
    return "\n".join(out)


def _valid(rec: dict) -> bool:
    kind = rec.get("kind", "syscall")
    if kind == "syscall":
        return isinstance(rec.get("syscall"), str)
    if kind == "capability":
        return isinstance(rec.get("capability"), str) and isinstance(rec.get("count"), int)
    if kind == "flow":
        import ipaddress

        try:
            ipaddress.ip_address(str(rec.get("peer")))
        except ValueError:
            return False
        return rec.get("proto") in ("tcp", "udp") and isinstance(rec.get("port"), int) and isinstance(rec.get("count"), int)
    return kind == "collector"


def read_evidence(path: str) -> list[dict]:
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("time"), str) and _valid(rec):
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
