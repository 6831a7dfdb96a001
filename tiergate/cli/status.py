"""`tiergate status`: running containers, the tier each got, and live facts read from the kernel.

Containers are found without asking an engine: a container's init process
is one whose pid namespace differs from its parent's, and whose parent
(conmon for podman, containerd-shim for docker/containerd) lives in ours.
The parent names the bundle (conmon `-b DIR`; a shim's working directory),
whose config.json carries the io.tiergate.* annotations the hook wrote; conmon
also names the container (`-c ID`, `-n NAME`). The decision log fills in the
rest. `--pid` skips discovery; a name no process shows is asked of
`podman inspect` when podman is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from tiergate.core.names import ANN_AUDIT, ANN_NETWORK, ANN_TIER, ANN_WHY
from tiergate.cli.probes import read_text as _read  # one /proc reader for doctor and status

EXAMPLES = """examples:
  tiergate status                               # every running container
  tiergate status 13dc0b9a                      # one container, by id prefix (or name)
  tiergate status web --log /tmp/decisions.jsonl
  tiergate status --pid 4242                    # any process, engine or not
  tiergate status --json
"""

SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}
HEX64 = re.compile(r"[0-9a-f]{64}")


def register(sub) -> None:
    import argparse

    c = sub.add_parser("status", help="running containers: enforced tier and live kernel facts",
                       description="For running containers: the tier tiergate enforced (bundle annotations, else "
                       "the decision log) and what the kernel says now: effective capabilities, no_new_privs, "
                       "seccomp mode and filter count, AppArmor label, and, when the tier has a network policy, the "
                       "packet counters of its nftables rules inside the container's network namespace (audit mode: also "
                       "each flow the tier would drop, counted per peer/proto/port).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("container", nargs="?", metavar="CONTAINER", help="container id prefix or name (default: all)")
    c.add_argument("--pid", type=int, help="report on this process (a container's init) instead of searching")
    c.add_argument("--log", metavar="F", help="decision log (default: $TIERGATE_LOG or /var/log/tiergate/decisions.jsonl)")
    c.add_argument("--json", action="store_true", help="print a JSON list, one object per container")
    c.set_defaults(func=cmd_status)


# -- /proc readers (proc_root is a parameter for tests) -------------------------------

def _stat_ppid(proc: str, pid: int) -> int | None:
    text = _read(f"{proc}/{pid}/stat")
    if not text:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return None


def _ns(proc: str, pid: int | str, kind: str = "pid") -> str | None:
    try:
        return os.readlink(f"{proc}/{pid}/ns/{kind}")
    except OSError:
        return None


def _cmdline(proc: str, pid: int) -> list[str]:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _opt(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if n.startswith("--") and a.startswith(n + "="):
                return a[len(n) + 1:]
    return None


def find_containers(proc: str = "/proc") -> list[dict]:
    """[{pid, id, name, bundle, engine}] for every container init process visible in proc."""
    ours = _ns(proc, "self") or _ns(proc, 1)
    out: list[dict] = []
    try:
        pids = [int(e) for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return out
    for pid in sorted(pids):
        ns = _ns(proc, pid)
        if ns is None or ns == ours:
            continue
        ppid = _stat_ppid(proc, pid)
        if not ppid or _ns(proc, ppid) != ours:
            continue  # a process inside a container, not its init
        info = describe(pid, proc, ppid)
        if info["id"] or info["bundle"]:  # e.g. `unshare --pid --fork` children are no containers
            out.append(info)
    return out


def describe(pid: int, proc: str = "/proc", ppid: int | None = None) -> dict:
    """What the parent and cgroup say about a container init: id, name, bundle, engine."""
    ppid = ppid if ppid is not None else _stat_ppid(proc, pid)
    parent = _cmdline(proc, ppid) if ppid else []
    info = {"pid": pid, "id": "", "name": "", "bundle": "", "engine": ""}
    exe = os.path.basename(parent[0]) if parent else ""
    if exe == "conmon":
        info.update(engine="podman", id=_opt(parent, "-c", "--cid") or "", name=_opt(parent, "-n", "--name") or "",
                    bundle=_opt(parent, "-b", "--bundle") or "")
    elif exe.startswith("containerd-shim"):
        info["engine"] = "containerd"
        try:
            cwd = os.readlink(f"{proc}/{ppid}/cwd")
        except OSError:
            cwd = ""
        if cwd and os.path.exists(os.path.join(cwd, "config.json")):
            info.update(bundle=cwd, id=os.path.basename(cwd))
            if "/moby/" in cwd + "/":
                info["engine"] = "docker"
    if not info["id"]:
        m = HEX64.search(_read(f"{proc}/{pid}/cgroup") or "")
        if m:
            info["id"] = m.group(0)
    if not info["id"]:
        env = (_read(f"{proc}/{pid}/environ") or "").split("\0")
        info["id"] = next((e[9:] for e in env if e.startswith("HOSTNAME=")), "")
    return info


def bundle_annotations(bundle: str) -> dict:
    if not bundle:
        return {}
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as fh:
            spec = json.loads(fh.read())
    except (OSError, ValueError):
        return {}
    ann = spec.get("annotations") if isinstance(spec, dict) else None
    return ann if isinstance(ann, dict) else {}


def kernel_facts(pid: int, proc: str = "/proc") -> dict:
    """CapEff (hex and names), NoNewPrivs, Seccomp mode and filters, AppArmor label, read now."""
    from tiergate.core.capabilities import NAMES, from_mask

    text = _read(f"{proc}/{pid}/status")
    if text is None:
        raise FileNotFoundError(f"no process {pid}")
    fields = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k] = v.strip()
    cap_hex = fields.get("CapEff", "")
    try:
        caps = sorted(from_mask(int(cap_hex, 16)), key=NAMES.index)  # kernel (bit) order
    except ValueError:
        caps = []
    label = None
    for attr in ("attr/apparmor/current", "attr/current"):
        raw = _read(f"{proc}/{pid}/{attr}")
        if raw is not None:
            label = raw.strip("\0\n ") or None
            break
    mode = fields.get("Seccomp")
    return {"cap_eff": cap_hex, "capabilities": caps, "no_new_privs": fields.get("NoNewPrivs"),
            "seccomp": SECCOMP_MODES.get(mode, mode) if mode is not None else None,
            "seccomp_filters": fields.get("Seccomp_filters"), "apparmor": label}


def last_decision(records: list[dict], cid: str) -> dict | None:
    """The newest record that decided this container's tier (not a follow-up stage)."""
    from tiergate.cli.log import same_container

    best = None
    for rec in records:
        if cid and same_container(cid, rec.get("container")) and rec.get("stage") != "createRuntime":
            best = rec
    return best


def podman_pid(name: str) -> tuple[int, str] | None:
    podman = shutil.which("podman")
    if not podman:
        return None
    try:
        proc = subprocess.run([podman, "inspect", "--type", "container", "--format", "{{.State.Pid}} {{.Id}}", name],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = proc.stdout.split()
    if proc.returncode != 0 or len(parts) != 2 or not parts[0].isdigit() or parts[0] == "0":
        return None
    return int(parts[0]), parts[1]


def report(info: dict, records: list[dict], proc: str = "/proc", counters=None) -> dict:
    """One container's status: identity, tier and why, live facts, network counters."""
    ann = bundle_annotations(info.get("bundle", ""))
    rec = last_decision(records, info.get("id", ""))
    out = dict(info)
    out["tier"] = ann.get(ANN_TIER) or (rec or {}).get("tier")
    out["tier_source"] = "bundle annotations" if ann.get(ANN_TIER) else ("decision log" if rec else None)
    out["why"] = ann.get(ANN_WHY) or (rec or {}).get("why")
    out["mode"] = "audit" if ann.get(ANN_AUDIT) == "true" or (rec or {}).get("mode") == "audit" else (
        "enforce" if out["tier"] else None)
    out["image"] = (rec or {}).get("image")
    out.update(kernel_facts(info["pid"], proc))
    network = ann.get(ANN_NETWORK) or (rec or {}).get("network")
    out["network_policy"] = network
    out["network_counters"] = None
    if network:
        if counters is None:
            from tiergate.network.apply import read_counters as counters
        try:
            out["network_counters"] = counters(f"{proc}/{info['pid']}/ns/net")
        except Exception as exc:  # noqa: BLE001 - show why, keep the rest of the report
            out["network_counters"] = f"cannot read: {exc}"
        if out["mode"] == "audit" and isinstance(out["network_counters"], list):
            out["would_drop_flows"] = audit_flows(f"{proc}/{info['pid']}/ns/net")
    return out


def audit_flows(netns: str) -> list[dict] | str:
    """Audit mode: the flows the tier would drop, as counted per peer/proto/port in the container's netns."""
    from tiergate.network import flows
    from tiergate.network.apply import NetworkApplyError, list_table

    try:
        return flows.parse(list_table(netns))
    except NetworkApplyError as exc:
        return f"cannot read: {exc}"


def render(reports: list[dict]) -> str:
    blocks = []
    for r in reports:
        caps = ", ".join(c.removeprefix("CAP_") for c in r["capabilities"]) or "none"
        lines = [f"container {r['id'][:12] or '?'}" + (f" ({r['name']})" if r.get("name") else "")
                 + f"  pid {r['pid']}" + (f"  engine {r['engine']}" if r.get("engine") else ""),
                 f"  tier:          {r['tier'] or 'unknown (no tiergate annotation or log record)'}"
                 + ("  AUDIT MODE (logged, not enforced)" if r.get("mode") == "audit" else "")
                 + (f"  [from {r['tier_source']}]" if r.get("tier_source") else "")]
        if r.get("image"):
            lines.append(f"  image:         {r['image']}")
        if r.get("why"):
            lines.append(f"  why:           {r['why']}")
        lines += [f"  CapEff:        {r['cap_eff']} ({caps})",
                  f"  NoNewPrivs:    {r['no_new_privs']}",
                  f"  seccomp:       {r['seccomp']}" + (f" ({r['seccomp_filters']} filter(s))" if r.get("seccomp_filters") else ""),
                  f"  AppArmor:      {r['apparmor'] or 'none (AppArmor not enabled)'}"]
        if r.get("network_policy"):
            c = r["network_counters"]
            if isinstance(c, list):
                lines.append(f"  network:       policy {r['network_policy']}, {len(c)} counted rule(s)")
                for row in c:
                    lines.append(f"    {row['chain']:<10} {row['packets']:>8} pkts {row['bytes']:>10} bytes  {row['name']}")
                if "would_drop_flows" in r:
                    f = r["would_drop_flows"]
                    lines.append(f"  would drop:    {f}" if isinstance(f, str) else f"  would drop:    {len(f)} flow(s)")
                    for row in f if isinstance(f, list) else ():
                        lines.append(f"    {row['proto']:<10} {row['packets']:>8} pkts  to {row['peer']}:{row['port']}")
            else:
                lines.append(f"  network:       policy {r['network_policy']}: {c}")
        else:
            lines.append("  network:       no tiergate network policy")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def cmd_status(args) -> int:
    from tiergate.telemetry import record
    from tiergate.cli.log import same_container

    records = record.read(args.log)
    if args.pid:
        infos = [describe(args.pid)]
        if not os.path.exists(f"/proc/{args.pid}/status"):
            print(f"tiergate: no process {args.pid}", file=sys.stderr)
            return 2
    else:
        infos = find_containers()
        if args.container:
            want = args.container
            infos = [i for i in infos if same_container(want, i["id"]) or i["name"] == want]
            if not infos:
                found = podman_pid(want)
                if found:
                    info = describe(found[0])
                    info["id"] = info["id"] or found[1]
                    infos = [info]
            if not infos:
                print(f"tiergate: no running container matches {want!r}", file=sys.stderr)
                return 2
    reports = [report(i, records) for i in infos]
    if args.json:
        json.dump(reports, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif reports:
        print(render(reports))
    else:
        print("no running containers found", file=sys.stderr)
    return 0
