#!/usr/bin/env python3
"""tiergate's cost on every start, exec and pod, measured side by side (issues 10 and 20).

    sudo .venv/bin/python bench/bench.py [--quick] [--publish] [--rounds N] [--out bench/results]

Run on demand (never as a test), as root, on a machine with the engines
integration/setup.sh installs. Everything runs in scratch engines from
integration/harness.py (own storage, hooks dirs, a private dockerd and
containerd, runc roots, cgroup parents, throwaway network namespaces) and is
removed at the end. Every comparison is interleaved round by round: bare, a
no-op Python floor, tiergate. Sections (bench/README.md says how to read them):

  e2e      container start: podman bare / no-op hook / tiergate per tier; docker
           bare / no-op runtime / --runtime tiergate; runc / no-op / tiergate-runtime run
  hook     the precreate hook process alone on saved specs (wall, CPU, callgrind
           instructions) beside the no-op hook; tiergate-runtime pass-through vs runc
  network  web, database, isolated with and without their network policy (macvlan)
  storage  10 vs 1,000 images + 1,000 containers in containers-storage
  cold     the first start after a policy change vs a warm cache
  scale    policy size (1,000 trust rules x 200 tiers), spec size, 10,000-CIDR
           allowlists, 20 and 50 parallel starts (throughput vs bare)
  cri      containerd CRI pod start and ExecSync (bench/cri.py)
  seccomp  bench/syscalls.c (static) in a container per tier, unconfined and
           under podman's default profile (derived from Docker's); ns/syscall
  filters  what runc pays to build each filter on every create and exec (bench/filters.py):
           BPF length, libseccomp's instructions (callgrind), `runc exec` CPU and wall
           time; none, containerd's RuntimeDefault, each tier (and listing every ABI)
  metadata (extra) baseline with and without the metadata block on a macvlan network

Writes OUT/latest.json, OUT/latest.md and OUT/latest.png (a copy of each under
a timestamped name too) and prints the Markdown (bench/report.py) at the end;
--publish then regenerates README.md's table and docs/benchmark/ from the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(1, str(REPO / "bench"))

import report  # noqa: E402  (bench/report.py: the tables, README block and docs from a results file)

LABEL = "io.tiergate.tier"
SHIPPED_POLICY = REPO / "tiergate" / "configs" / "policy.toml"
SYSTEM_PYTHON = "/usr/bin/python3"
DOCKER_DEFAULT_SECCOMP = "/usr/share/containers/seccomp.json"  # podman's; derived from moby's default.json
SHIPPED_TIERS = ("privileged", "baseline", "restricted", "isolated")
# Tiers whose seccomp profile differs (the other roles reuse restricted's).
SECCOMP_TIERS = ("baseline", "restricted", "isolated", "image-processor", "node-worker", "scheduler")
NETWORK_TIERS = ("web", "database", "isolated")  # tiers measured with and without their network policy
SECTIONS = "e2e,hook,network,storage,cold,cri,seccomp,filters,scale"  # the default (scale last: its 50 parallel starts leave a load of ~20 behind); `metadata` is extra


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stats(samples_s: list[float]) -> dict:
    """Milliseconds: median, quartiles, min, n (from samples in seconds)."""
    raw = [x * 1000 for x in samples_s]
    ms = sorted(raw)
    out = {"n": len(ms), "median_ms": None, "p25_ms": None, "p75_ms": None, "min_ms": None, "max_ms": None,
           "samples_ms": [round(x, 2) for x in raw]}  # in run order
    if ms:
        out["median_ms"] = round(statistics.median(ms), 2)
        out["min_ms"], out["max_ms"] = round(ms[0], 2), round(ms[-1], 2)
        if len(ms) >= 2:
            q = statistics.quantiles(ms, n=4, method="inclusive")
            out["p25_ms"], out["p75_ms"] = round(q[0], 2), round(q[2], 2)
        else:
            out["p25_ms"] = out["p75_ms"] = out["median_ms"]
    return out


PARALLEL_ROUNDS = 6  # batches per config and size: a multiple of the six configs, so the rotation is balanced
PERF_HZ = 499  # perf's sampling rate per CPU for the CPU split: ~2 ms a sample
# Which processes a batch's CPU went to, by comm (the first matching prefix wins). "hook": the hook
# or runtime front, /bin/cat, the no-op hook's script or tiergate's compiled fronts (tiergate-hook,
# tiergate-runtim: a comm stops at 15 bytes), and the warm helper's children (python).
CPU_GROUPS = (("podman", ("podman",)), ("conmon", ("conmon",)), ("runc init", ("runc:[2:INIT]",)),
              ("runc", ("runc",)), ("hook", ("cat", "noop-hook", "tiergate-", "python")),
              ("idle", ("swapper",)), ("kernel threads", ("kworker", "ksoftirqd", "rcu", "kdamond", "migration",
                                                          "kcompactd", "khugepaged", "jbd2", "kswapd")))


def cpu_groups(report: str, own_pid: int, n: int) -> dict[str, float]:
    """CPU ms per container by CPU_GROUPS from `perf report --sort pid,comm -n` ("pct samples pid:comm"
    lines); this script's own samples (own_pid) go to "other", with whatever matches no group."""
    out = {name: 0.0 for name, _ in CPU_GROUPS} | {"other": 0.0}
    for line in report.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[1].isdigit() or ":" not in parts[2]:
            continue
        head, _, comm = parts[2].strip().partition(" ")  # "pid:comm   comm" (the comm at the sample)
        pid, _, first = head.partition(":")
        comm = comm.strip() or first
        group = "other" if pid == str(own_pid) else next(
            (name for name, prefixes in CPU_GROUPS if comm.startswith(prefixes)), "other")
        out[group] += int(parts[1]) / PERF_HZ * 1000 / n
    return {k: round(v, 1) for k, v in out.items()}


def host_cpu() -> float:
    """CPU seconds the whole host has spent busy (all CPUs, /proc/stat): a batch's CPU, whoever
    spent it (podman, conmon, runc, hooks, the warm helper's children, the kernel)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv, *, env=None, input: bytes | None = None, timeout: float = 120,
          executable: str | None = None, cwd: str | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the child and what it waited for, CompletedProcess[bytes])."""
    cpu0 = cpu_children()
    t0 = time.perf_counter()
    proc = subprocess.run([os.fspath(a) for a in argv], input=input, capture_output=True, env=env,
                          timeout=timeout, executable=executable, cwd=cwd,
                          stdin=None if input is not None else subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, cpu_children() - cpu0, proc


def last_line(data: bytes | str) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class Failed(Exception):
    pass


def start_cmd(argv: list, env: dict | None, what: str):
    """A callable for alternate(): runs argv, returns its wall seconds, raises Failed on a non-zero exit."""
    def run() -> float:
        wall, _, proc = timed(argv, env=env)
        if proc.returncode != 0:
            raise Failed(f"{what} exited {proc.returncode}: {last_line(proc.stderr)}")
        return wall
    return run


# Idle seconds before each measured call. An engine calls tiergate once per container start, and
# sequential starts are >= 100 ms apart; back to back, a start finds the warm helper still forking
# and pre-faulting its next spare (~3.5 ms here), so a config's figure would depend on which config
# ran just before it. Starts that really arrive together are the parallel batches (scale).
GAP = 0.025


def alternate(configs: dict, rounds: int, what: str, warmup: bool = True) -> dict[str, dict]:
    """Run each config's callable (returns wall seconds, raises Failed) once per round, in an
    order rotated every round, GAP seconds apart; a config that fails is dropped and its error kept."""
    samples: dict[str, list[float]] = {name: [] for name in configs}
    errors: dict[str, str] = {}
    names = list(configs)
    if warmup:
        for name in names:
            try:
                configs[name]()
            except (Failed, subprocess.TimeoutExpired) as exc:
                errors[name] = str(exc)
                say(f"  {name}: FAILED (warm-up): {exc}")
    live = [n for n in names if n not in errors]
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for name in order:
            if name in errors:
                continue
            time.sleep(GAP)
            try:
                samples[name].append(configs[name]())
            except (Failed, subprocess.TimeoutExpired) as exc:
                errors[name] = str(exc)
                say(f"  {name}: FAILED: {exc}")
        done = ", ".join(f"{n} {statistics.median(samples[n]) * 1000:.0f}" for n in live
                         if samples[n] and n not in errors)
        say(f"  {what} round {r + 1}/{rounds} (median ms so far): {done}")
    out = {}
    for name in names:
        out[name] = stats(samples[name])
        if name in errors:
            out[name]["error"] = errors[name]
    return out


def with_deltas(results: dict, bare: str, floor: str | None = None) -> dict:
    b = results.get(bare, {}).get("median_ms")
    f = results.get(floor, {}).get("median_ms") if floor else None
    for _name, r in results.items():
        m = r.get("median_ms")
        if m is None:
            continue
        if b:
            r["added_vs_bare_ms"] = round(m - b, 2)
            r["ratio_to_bare"] = round(m / b, 3)
        if f:
            r["added_vs_noop_ms"] = round(m - f, 2)
            r["ratio_to_noop"] = round(m / f, 3)
    return results


def pad_storage(graphroot: Path, n_images: int, n_containers: int) -> dict[Path, bytes]:
    """Pad containers-storage's images.json and containers.json to n entries each with copies of
    the first real entry (new ids and names; the same layers, so nothing else changes). A copy's
    id replaces the model's everywhere in it (an image names its config `sha256:<id>`): no two
    real entries share an id, and a lookup by id must not meet it in the padding. Written compact,
    as containers-storage writes: tiergate's lookup searches the bytes the engine writes. Returns the
    original bytes of each file, to be written back before the engine removes its storage."""
    originals = {}
    for kind, n, key in (("images", n_images, "names"), ("containers", n_containers, "names")):
        path = Path(graphroot) / f"overlay-{kind}" / f"{kind}.json"
        raw = path.read_bytes()
        originals[path] = raw
        entries = json.loads(raw)
        model = entries[0]
        for i in range(max(0, n - len(entries))):
            e = json.loads(json.dumps(model).replace(model["id"], uuid.uuid4().hex + uuid.uuid4().hex))
            e[key] = [f"localhost/tgb-pad-{kind}-{i}:latest" if kind == "images" else f"tgb-pad-{i}"]
            e.pop("digests", None)
            entries.insert(0, e)  # before the real ones: a lookup cannot stop early
        path.write_text(json.dumps(entries, separators=(",", ":")))  # as containers-storage writes it (Go)
    return originals


def cache_bytes(cache_dir: Path) -> int | None:
    """Bytes of the compiled policy in a cache dir (its files but the lock and failure notes)."""
    if not cache_dir.is_dir():
        return None
    return sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file() and not f.name.startswith(".")) or None


def nsenter_apply(doc: dict, netns_path: str, timeout: float = 120) -> None:
    """The loader tiergate used before libnftables: `nsenter --net=PATH nft -j -f -` (for comparison)."""
    proc = subprocess.run(["/usr/bin/nsenter", f"--net={netns_path}", "/usr/sbin/nft", "-j", "-f", "-"], input=json.dumps(doc),
                          capture_output=True, text=True, timeout=timeout, env={}, cwd="/")
    if proc.returncode != 0:
        raise Failed(f"nsenter nft exited {proc.returncode}: {last_line(proc.stderr)}")


# ---------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        import harness

        self.h = harness
        self.args = args
        self.quick = args.quick
        self.rounds = args.rounds or (3 if args.quick else 15)
        self.d = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
        self.d.chmod(0o755)
        self.results: dict = {"skipped": [], "notes": []}
        self.podman = None
        self.docker = None
        self.netns: str | None = None
        self.netnses: list[str] = []  # throwaway namespaces holding a macvlan parent's veth peer
        self.stores: list = []  # extra podmans (the storage-size section): (Podman, {path: original bytes})
        self.runc_cgroup = f"/tiergate-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.footprint = harness.HostFootprint(warm_roots=[str(self.d)])  # its warm helpers too
        self.footprint.snapshot()
        self.policy = str(Path(args.policy or SHIPPED_POLICY).resolve())
        with open(self.policy, "rb") as fh:
            self.policy_doc = tomllib.load(fh)
        self.tiers = [t for t in self.policy_doc.get("tiers", {})]
        if self.quick and args.tiers is None:
            pass  # quick still covers every tier: 3 rounds of each are cheap
        if args.tiers:
            self.tiers = [t for t in self.tiers if t in args.tiers.split(",")]
        self.log = self.d / "decisions.jsonl"
        self.cache = self.d / "cache"
        self.hook_argv: list[str] = []
        self.shim: str | None = None
        self.specs: dict[str, dict] = {}
        self.podman_seccomp: dict | None = None

    # -- setup ------------------------------------------------------------------
    def tiergate(self, *args, check=True):
        proc = subprocess.run([sys.executable, "-m", "tiergate.cli.main", *map(str, args)], capture_output=True,
                              text=True, timeout=120, cwd=REPO)
        if check and proc.returncode != 0:
            raise RuntimeError(f"tiergate {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr[-1000:]}")
        return proc

    def trust_privileged(self, image_id: str) -> None:
        """No name earns trust: the privileged bench image gets a digest rule on its id, in a copy
        of the policy (the hook's cache notices the change)."""
        from tiergate_fixtures import trusting_policy

        dest = self.d / "bench-policy.toml"
        trusting_policy(dest, [image_id], base=Path(self.policy))
        self.policy = str(dest)

    def setup(self) -> None:
        h = self.h
        say(f"scratch dir {self.d}")
        # The workload binary and the image rootfs (busybox-static + bench/syscalls).
        self.syscalls_bin = self.d / "syscalls"
        subprocess.run(["gcc", "-O2", "-static", "-o", str(self.syscalls_bin), str(REPO / "bench/syscalls.c")],
                       check=True, timeout=120)
        rootfs = h.busybox_rootfs(self.d / "img")
        shutil.copy2(self.syscalls_bin, rootfs.path / "bin/tg-syscalls")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs.path), "-cf", str(rootfs.tar), "."],
                       check=True, timeout=60)
        self.rootfs = rootfs

        # Hooks dirs: empty (bare), no-op Python hook, tiergate, capture (for saved specs).
        self.hooks = {k: self.d / f"hooks-{k}" for k in ("bare", "noop", "tiergate", "capture")}
        for p in self.hooks.values():
            p.mkdir()
        self.noop = self.d / "noop-hook"
        self.noop.write_text(f"#!{SYSTEM_PYTHON} -IS\n"
                             "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n")
        self.noop.chmod(0o755)
        # The no-op floor of a runtime shim: Python that execs runc unchanged.
        runc = shutil.which("runc") or "/usr/sbin/runc"
        self.noop_runtime = self.d / "noop-runtime"
        self.noop_runtime.write_text(f"#!{SYSTEM_PYTHON} -IS\nimport os, sys\n"
                                     f"os.execv({runc!r}, [{runc!r}, *sys.argv[1:]])\n")
        self.noop_runtime.chmod(0o755)
        self.capture_file = self.d / "captured-spec.json"
        capture = self.d / "capture-hook"
        capture.write_text(f"#!{SYSTEM_PYTHON} -IS\nimport sys\ndata = sys.stdin.buffer.read()\n"
                           f"open({str(self.capture_file)!r}, 'wb').write(data)\nsys.stdout.buffer.write(data)\n")
        capture.chmod(0o755)
        self.hooks["cat"] = self.d / "hooks-cat"  # podman's own cost of a precreate hook: one that costs nothing
        self.hooks["cat"].mkdir()
        for kind, exe in (("noop", self.noop), ("capture", capture), ("cat", Path(shutil.which("cat") or "/bin/cat"))):
            (self.hooks[kind] / "50-bench.json").write_text(json.dumps({
                "version": "1.0.0", "hook": {"path": str(exe), "args": [exe.name]},
                "when": {"always": True}, "stages": ["precreate"]}))

        self.podman = h.Podman(self.d / "podman", image_tar=rootfs.tar, hooks_dir=self.hooks["bare"])
        self.images = {t: f"localhost/tiergate-bench-{t}" for t in self.tiers}
        say(f"importing {len(self.images)} podman images")
        for tier, ref in self.images.items():
            self.podman.import_image(ref, {LABEL: tier})
        if "privileged" in self.images:
            self.trust_privileged(self.podman.image_inspect(self.images["privileged"])["Id"])

        self.tiergate("install", "--engine", "podman", "--hooks-dir", self.hooks["tiergate"],
                      "--bin-dir", self.d / "bin-podman", "--log", self.log, "--cache-dir", self.cache,
                      "--policy", self.policy)
        hook_json = json.loads((self.hooks["tiergate"] / "99-tiergate-precreate.json").read_text())
        self.hook_path = hook_json["hook"]["path"]
        self.hook_argv = hook_json["hook"]["args"]
        from tiergate.engines import front  # the hook is the compiled front of a Python launcher, with cc

        self.python_launcher = front.launcher_of(self.hook_path) or self.hook_path
        self.results["meta"]["hook_launcher_shebang"] = Path(self.python_launcher).read_text().splitlines()[0]

        # The runtime shim (docker / runc sections); skipped with a reason if it is not there yet.
        try:
            self.tiergate("install", "--engine", "docker", "--daemon-json", self.d / "docker-install/daemon.json",
                          "--bin-dir", self.d / "bin-shim", "--log", self.log, "--cache-dir", self.cache,
                          "--policy", self.policy)
            shim = self.d / "bin-shim" / "tiergate-runtime"
            if not os.access(shim, os.X_OK):
                raise RuntimeError(f"{shim} was not installed")
            self.shim = str(shim)
            self.results["meta"]["shim_front"] = "compiled" if front.launcher_of(shim) else "/bin/sh"
        except Exception as exc:  # noqa: BLE001 - the shim may be unfinished: skip its parts
            self.skip("docker and tiergate-runtime", f"`tiergate install --engine docker` failed: {exc}")

        self.bare_image = self.images.get("baseline") or next(iter(self.images.values()))
        self.results["meta"]["podman_runtime"] = self.podman.runtime

    def skip(self, what: str, why: str) -> None:
        say(f"SKIPPED {what}: {why}")
        self.results["skipped"].append({"what": what, "why": why})

    def podman_argv(self, hooks: str, *args: str, network: str = "none", podman=None,
                    runtime: str | None = None) -> list[str]:
        p = podman or self.podman
        flags = list(p.global_flags)
        flags[flags.index("--hooks-dir") + 1] = str(self.hooks[hooks])
        if runtime:
            flags[flags.index("--runtime") + 1] = runtime
        args_l = [os.fspath(a) for a in args]
        if args_l and args_l[0] in ("run", "create"):
            args_l = [args_l[0], "--network", network, "--cgroup-parent", p.cgroup_parent, *args_l[1:]]
        return [p.binary, *flags, *args_l]

    def podman_start(self, hooks: str, image: str, *extra: str, network: str = "none", podman=None):
        p = podman or self.podman
        return start_cmd(self.podman_argv(hooks, "run", "--rm", *extra, image, "true", network=network, podman=p),
                         p.env, "podman run")

    def install_podman(self, name: str, policy: str | Path) -> None:
        """tiergate installed into hooks dir `name` with its own policy file and cache."""
        self.hooks[name] = self.d / f"hooks-{name}"
        self.hooks[name].mkdir()
        self.tiergate("install", "--engine", "podman", "--hooks-dir", self.hooks[name], "--bin-dir",
                      self.d / f"bin-{name}", "--log", self.log, "--cache-dir", self.d / f"cache-{name}",
                      "--policy", policy)

    def macvlan(self, subnet: str) -> tuple[str, str]:
        """A podman macvlan network (subnet "a.b.c") on a veth whose peer sits in a throwaway netns
        (host-facts' recipe: podman's default bridge would turn on ip_forward): (network, host ifname)."""
        sfx = uuid.uuid4().hex[:6]
        ns, host_if = f"tgb-md-{sfx}", f"tgbm{sfx}"
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
        self.netnses.append(ns)
        subprocess.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", f"tgbs{sfx}", "netns", ns],
                       check=True, timeout=30)
        subprocess.run(["ip", "link", "set", host_if, "up"], check=True, timeout=30)
        net = f"tgb-net-{sfx}"
        self.podman.podman("network", "create", "-d", "macvlan", "-o", f"parent={host_if}", "--subnet",
                           f"{subnet}.0/24", "--gateway", f"{subnet}.1", net, check=True)
        return net, host_if

    # -- saved precreate specs ------------------------------------------------------
    def capture_specs(self) -> None:
        """One real precreate spec per tier image, from a container kept in storage (no --rm),
        so the hook resolves its image from the scratch storage as it would at a start."""
        for tier, ref in self.images.items():
            self.specs[tier] = self.capture(ref, f"tgb-spec-{tier}")
        spec = self.specs.get("baseline") or next(iter(self.specs.values()))
        (self.d / "saved-spec.json").write_text(json.dumps(spec, indent=1))
        # podman's default profile as podman hands it to the runtime (OCI form, this host's arches).
        priv = self.specs.get("privileged") or {}
        self.podman_seccomp = (priv.get("linux") or {}).get("seccomp")
        self.results["meta"]["saved_spec_bytes"] = len(json.dumps(spec))

    def capture(self, ref: str, name: str, podman=None) -> dict:
        """The precreate spec podman hands its hooks for `run ref`, its container kept in storage."""
        p = podman or self.podman
        self.capture_file.unlink(missing_ok=True)
        proc = subprocess.run(self.podman_argv("capture", "run", "--name", name, ref, "true", podman=p),
                              env=p.env, capture_output=True, timeout=120)
        if proc.returncode != 0 or not self.capture_file.exists():
            raise RuntimeError(f"capturing the spec of {ref} failed: {last_line(proc.stderr)}")
        return json.loads(self.capture_file.read_bytes())

    def callgrind(self, argv: list[str], data: bytes) -> dict:
        """{"instructions": N} of one process fed data on stdin (empty environment), or {"error": ...}."""
        # valgrind's log in a file of its own per process: a warm helper the hook forks (engines/warm.py)
        # would otherwise keep stderr open, and it reports too; the process measured is proc.pid
        with tempfile.TemporaryDirectory(prefix="tgb-cg-") as logs:
            proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                                     "--trace-children=yes",  # a miss: the compiled front execs the Python launcher
                                     f"--log-file={logs}/%p", *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={}, cwd="/")
            out, err = proc.communicate(data, timeout=600)
            log = Path(logs, str(proc.pid))
            found = [int(n) for n in re.findall(r"Collected : (\d+)", log.read_text(errors="replace"))] if log.exists() else []
        if proc.returncode != 0 or not found:
            return {"error": f"exited {proc.returncode}: {last_line(err)}"}
        if b"io.tiergate.refused" in out:
            return {"error": "the hook refused the spec"}
        return {"instructions": found[0]}

    def hook_instructions(self, spec_bytes: bytes, *, policy: str | None = None, cache: Path | None = None,
                          hooks: str = "tiergate") -> dict:
        """callgrind's count for the hook installed in hooks dir `hooks` on a spec (optionally with another
        policy or cache dir), or {}. Each install pins its own copy of tiergate, whose compile.py is one of
        the cache's inputs: a cache is warm only for the launcher that compiled it."""
        if not shutil.which("valgrind"):
            return {}
        hook = json.loads(next(self.hooks[hooks].glob("*precreate*.json")).read_text())["hook"]
        argv = self._override(self._override(list(hook["args"]), "--policy", policy), "--cache-dir",
                              str(cache) if cache else None)
        return self.callgrind([hook["path"], *argv[1:]], spec_bytes)

    def run_hook(self, spec_bytes: bytes, *, policy: str | None = None, cache: Path | None = None,
                 noop: bool = False) -> tuple[float, float]:
        """One precreate hook process as podman runs it (empty environment), -> (wall s, cpu s)."""
        if noop:
            argv, exe = [self.noop.name], str(self.noop)
        else:
            argv = list(self.hook_argv)
            exe = self.hook_path
            if policy or cache:
                argv = self._override(argv, "--policy", policy)
                argv = self._override(argv, "--cache-dir", str(cache) if cache else None)
        wall, cpu, proc = timed(argv, executable=exe, env={}, input=spec_bytes, cwd="/")
        if proc.returncode != 0:
            raise Failed(f"hook exited {proc.returncode}: {last_line(proc.stderr)}")
        if not noop:
            out = json.loads(proc.stdout)
            refused = (out.get("annotations") or {}).get("io.tiergate.refused")
            if refused:
                raise Failed(f"hook refused: {refused}")
        return wall, cpu

    @staticmethod
    def _override(argv: list[str], flag: str, value: str | None) -> list[str]:
        if value is None:
            return argv
        argv = list(argv)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        return argv

    # -- 1. end to end ----------------------------------------------------------------
    def section_e2e(self) -> None:
        out: dict = {}
        say(f"e2e podman: {self.rounds} rounds, bare / no-op hook / tiergate x {len(self.tiers)} tiers")
        configs = {"podman bare": self.podman_start("bare", self.bare_image),
                   "podman no-op hook": self.podman_start("noop", self.bare_image)}
        for tier in self.tiers:
            configs[f"podman tiergate {tier}"] = self.podman_start("tiergate", self.images[tier])
        out["podman"] = with_deltas(alternate(configs, self.rounds, "podman"), "podman bare", "podman no-op hook")
        self.results["e2e"] = out
        self.e2e_runc(out)
        self.e2e_docker(out)

    def e2e_runc(self, out: dict) -> None:
        if not self.shim:
            self.skip("runc vs tiergate-runtime run", "the shim is not installed")
            return
        h = self.h
        base = h.runc_base_spec()
        base.setdefault("process", {})["args"] = ["true"]
        root = self.d / "runc-root"
        configs = {}
        bundles = {"runc run": (None, None), "no-op Python runtime run": (str(self.noop_runtime), None)}
        # privileged is left out: a bare bundle has no image reference, so no trust rule lifts its
        # ceiling and it would be clamped to baseline.
        for tier in (t for t in SHIPPED_TIERS if t in self.tiers and t != "privileged"):
            bundles[f"tiergate-runtime run {tier}"] = (self.shim, tier)
        runc = shutil.which("runc")
        for name, (runtime, tier) in bundles.items():
            cfg = json.loads(json.dumps(base))
            if tier:
                cfg.setdefault("annotations", {})[LABEL] = tier
            b = h.RuncBundle(self.d / "bundles" / name.replace(" ", "-"), self.rootfs.path, cfg, runc_root=root,
                             runc=runtime or runc, cgroup_parent=f"{self.runc_cgroup}/runc")
            configs[name] = self._runc_runner(b)
            if name == "runc run" and self.podman_seccomp:
                # `runc spec` has no seccomp filter; podman's default profile (converted to OCI form
                # by podman, from the saved privileged spec) is the fair reference for a tier's filter.
                cfg = json.loads(json.dumps(base))
                cfg.setdefault("linux", {})["seccomp"] = self.podman_seccomp
                ref = h.RuncBundle(self.d / "bundles" / "docker-default-seccomp", self.rootfs.path, cfg,
                                   runc_root=root, runc=runc, cgroup_parent=f"{self.runc_cgroup}/runc")
                configs["runc run + Docker default seccomp"] = self._runc_runner(ref)
            if tier:
                # The same bundle, hardened once by the shim and then run by plain runc: what the
                # tier's hardening costs the runtime, apart from tiergate's own process.
                try:
                    configs[name]()
                    hardened = json.loads(b.config_path.read_text())
                except Failed as exc:
                    say(f"  {name}: {exc}")
                    continue
                hardened.get("linux", {}).pop("cgroupsPath", None)
                pre = h.RuncBundle(self.d / "bundles" / f"prehardened-{tier}", self.rootfs.path, hardened,
                                   runc_root=root, runc=runc, cgroup_parent=f"{self.runc_cgroup}/runc")
                configs[f"runc run, spec pre-hardened as {tier}"] = self._runc_runner(pre)
        say(f"e2e runc: {self.rounds} rounds, runc run vs tiergate-runtime run (a bundle annotation asks the tier)")
        out["runc"] = with_deltas(alternate(configs, self.rounds, "runc"), "runc run", "no-op Python runtime run")

    def _runc_runner(self, b):
        def run() -> float:
            cid = f"tgb-{uuid.uuid4().hex[:12]}"
            b.config.setdefault("linux", {})["cgroupsPath"] = f"{b.cgroup_parent}/{cid}"
            b.write()
            try:
                wall, _, proc = timed([b.runc, "--root", str(b.runc_root), "run", "--bundle", str(b.dir), cid],
                                      timeout=60)
            finally:
                subprocess.run([b.runc, "--root", str(b.runc_root), "delete", "--force", cid],
                               capture_output=True, timeout=30)
            if proc.returncode != 0:
                raise Failed(f"{Path(b.runc).name} run exited {proc.returncode}: {last_line(proc.stderr)}")
            return wall
        return run

    def e2e_docker(self, out: dict) -> None:
        if not self.shim:
            self.skip("docker bare vs --runtime tiergate", "the shim is not installed")
            return
        h = self.h
        try:
            self.docker = h.Docker(self.d / "docker", image_tar=self.rootfs.tar,
                                   runtimes={"tiergate": self.shim, "noop": str(self.noop_runtime)})
            self.docker.start()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - pytest.skip from the harness included
            self.skip("docker", f"private dockerd did not start: {exc}")
            if self.docker is not None:
                self.docker.stop()
                self.docker = None
            return
        tiers = [t for t in SHIPPED_TIERS if t in self.tiers]
        for tier in tiers:
            image_id = self.docker.import_image(self.images[tier], {LABEL: tier})
            if tier == "privileged":
                self.trust_privileged(image_id)
        dk = self.docker

        def start(image: str, *extra: str):
            argv = [dk.cli, "-H", f"unix://{dk.sock}", "run", "--rm", "--network", "none", *extra, image, "true"]
            return start_cmd(argv, dk.env, "docker run")

        configs = {"docker bare": start(self.bare_image),
                   "docker no-op runtime": start(self.bare_image, "--runtime", "noop")}
        for tier in tiers:
            configs[f"docker tiergate {tier}"] = start(self.images[tier], "--runtime", "tiergate")
        say(f"e2e docker: {self.rounds} rounds, bare vs --runtime tiergate x {len(tiers)} tiers")
        try:
            out["docker"] = with_deltas(alternate(configs, self.rounds, "docker"), "docker bare", "docker no-op runtime")
        finally:
            self.docker.stop()
            self.docker = None

    # -- 2. the hook process alone ---------------------------------------------------------
    def section_hook(self) -> None:
        n = self.args.hook_runs or (10 if self.quick else 40)
        out: dict = {}
        say(f"hook process on saved specs: {n} runs each, alternating")
        payloads = {t: json.dumps(s).encode() for t, s in self.specs.items()}
        base = payloads.get("baseline") or next(iter(payloads.values()))
        cpu: dict[str, list[float]] = {}

        def runner(name: str, data: bytes, **kw):
            cpu[name] = []

            def run() -> float:
                wall, c = self.run_hook(data, **kw)
                cpu[name].append(c)
                return wall
            return run

        configs = {"python -IS -c pass": self._python_floor(),
                   "no-op hook": runner("no-op hook", base, noop=True)}
        for tier, data in payloads.items():
            configs[f"tiergate {tier}"] = runner(f"tiergate {tier}", data)
        res = alternate(configs, n, "hook")
        for name, r in res.items():
            if name in cpu:
                c = stats(cpu[name][-r["n"]:] if r["n"] else [])
                r["cpu_median_ms"] = c["median_ms"]
        out["runs"] = with_deltas(res, "python -IS -c pass", "no-op hook")
        out["instructions"] = self._instructions(payloads)
        out["importtime"] = self._importtime(base)
        if self.shim:
            out["passthrough"] = self._passthrough(n)
            out["own_part"] = self._own_part(n)
        self.results["hook"] = out

    def _instructions(self, payloads: dict[str, bytes]) -> dict:
        """User-space instructions of each hook process (callgrind; deterministic to ~0.1%, unlike wall
        time on a shared machine), fed the same saved spec on stdin with an empty environment."""
        if not shutil.which("valgrind"):
            self.skip("hook instruction counts", "valgrind is not installed")
            return {}
        base = payloads.get("baseline") or next(iter(payloads.values()))
        tiers = list(payloads) if not self.quick else [t for t in ("baseline", "restricted", "web") if t in payloads]
        runs = {"python -IS -c pass": ([SYSTEM_PYTHON, "-I", "-S", "-c", "pass"], b""),
                "no-op hook": ([str(self.noop)], base)}
        for tier in tiers:
            runs[f"tiergate {tier}"] = ([self.hook_path, *self.hook_argv[1:]], payloads[tier])
        say(f"hook instructions (callgrind): {len(runs)} processes")
        out = {name: self.callgrind(argv, data) for name, (argv, data) in runs.items()}
        floor = out.get("no-op hook", {}).get("instructions")
        for row in out.values():
            if floor and row.get("instructions"):
                row["ratio_to_noop"] = round(row["instructions"] / floor, 3)
        return out

    def _python_floor(self):
        def run() -> float:
            wall, _, proc = timed([SYSTEM_PYTHON, "-I", "-S", "-c", "pass"], env={})
            return wall
        return run

    def _importtime(self, data: bytes) -> dict:
        """`python -X importtime` of the hook launcher on the saved baseline spec: the slowest imports."""
        interp = Path(self.python_launcher).read_text().splitlines()[0][2:].split()[0]
        argv = [interp, "-X", "importtime", "-I", "-S", self.python_launcher, *self.hook_argv[1:]]
        proc = subprocess.run(argv, input=data, capture_output=True, env={}, timeout=60, cwd="/")
        rows = []
        for line in proc.stderr.decode(errors="replace").splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
            if m:
                rows.append({"self_us": int(m.group(1)), "cumulative_us": int(m.group(2)),
                             "depth": len(m.group(3)) // 2, "module": m.group(4)})
        total = sum(r["self_us"] for r in rows)
        top = sorted((r for r in rows if r["depth"] <= 1), key=lambda r: -r["cumulative_us"])[:10]
        return {"total_import_us": total, "modules": len(rows), "top_level_by_cumulative": top}

    def _passthrough(self, n: int) -> dict:
        """`runc --root R list` vs `tiergate-runtime --root R list`: the shim's pass-through path."""
        root = self.d / "runc-root-pt"
        root.mkdir(exist_ok=True)

        def mk(exe):
            def run() -> float:
                wall, _, proc = timed([exe, "--root", str(root), "list"], timeout=30)
                if proc.returncode != 0:
                    raise Failed(f"{exe} list exited {proc.returncode}: {last_line(proc.stderr)}")
                return wall
            return run
        say("tiergate-runtime pass-through (list) vs runc")
        return with_deltas(alternate({"runc list": mk(shutil.which("runc")), "tiergate-runtime list": mk(self.shim)},
                                     n, "pass-through"), "runc list")

    def _own_part(self, n: int) -> dict:
        """The shim's own part (issue 20: at most 5 ms on create and exec, +1 ms on a pass-through):
        a shim installed with a no-op program as its real runtime (/bin/true), against that program
        called directly with the same arguments, so neither side does the runtime's work. run: the
        create path on a bundle asking for baseline; exec: a --process file into a container runc
        created (its state is what the shim reads); state: a pass-through."""
        h, stub = self.h, "/bin/true"
        bin_dir = self.d / "bin-stub"
        try:
            self.tiergate("install", "--engine", "docker", "--daemon-json", self.d / "docker-stub/daemon.json",
                          "--bin-dir", bin_dir, "--runtime", stub, "--log", self.log, "--cache-dir", self.cache,
                          "--policy", self.policy)
        except RuntimeError as exc:
            self.skip("the shim's own part", str(exc))
            return {}
        shim = str(bin_dir / "tiergate-runtime")
        root = self.d / "runc-root-own"
        base = h.runc_base_spec()
        base.setdefault("annotations", {})[LABEL] = "baseline"
        target = h.RuncBundle(self.d / "bundles" / "own-exec", self.rootfs.path, base, args=["sleep", "60"],
                              runc_root=root, cgroup_parent=f"{self.runc_cgroup}/own")
        cid = f"tgo-{uuid.uuid4().hex[:12]}"
        target.config.setdefault("linux", {})["cgroupsPath"] = f"{target.cgroup_parent}/{cid}"
        target.write()
        # created, its init waiting in runc's exec fifo; its stdio not ours (runc create keeps it open)
        made = subprocess.run([target.runc, "--root", str(root), "create", "--bundle", str(target.dir), cid],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        if made.returncode != 0:
            target.runc_cmd("delete", "--force", cid, timeout=20)
            self.skip("the shim's own part", f"runc create exited {made.returncode}")
            return {}
        run_bundle = h.RuncBundle(self.d / "bundles" / "own-run", self.rootfs.path, base, args=["true"],
                                  runc_root=root, cgroup_parent=f"{self.runc_cgroup}/own")
        process = self.d / "own-process.json"
        proc_text = json.dumps(dict(target.config["process"], args=["true"]))

        def mk(exe: str, *args: str):
            def run() -> float:
                run_bundle.write()  # each side gets the bundle and process file as the engine wrote them
                process.write_text(proc_text)
                wall, _, proc = timed([exe, "--root", str(root), *args], timeout=30)
                if proc.returncode != 0:
                    raise Failed(f"{Path(exe).name} {args[0]} exited {proc.returncode}: {last_line(proc.stderr)}")
                return wall
            return run

        calls = {"run": ("run", "--bundle", str(run_bundle.dir), f"tgo-run-{cid[4:]}"),
                 "exec": ("exec", "--process", str(process), cid), "state": ("state", cid)}
        out = {}
        try:
            for what, args in calls.items():
                say(f"the shim's own part: {what}, {n} rounds (real runtime: {stub})")
                out[what] = with_deltas(alternate({f"{stub} {what}": mk(stub, *args),
                                                   f"tiergate-runtime {what}": mk(shim, *args)}, n, what),
                                        f"{stub} {what}")
        finally:
            target.runc_cmd("delete", "--force", cid, timeout=20)
        return out

    # -- 3. scale -------------------------------------------------------------------------
    def section_scale(self) -> None:
        out: dict = {}
        self.results["scale"] = out
        out["policy"] = self._scale_policy()
        out["spec_size"] = self._scale_spec()
        out["cidrs"] = self._scale_cidrs()
        out["parallel"] = self._scale_parallel()

    def gen_policy(self, n_trust: int, n_tiers: int, path: Path) -> Path:
        """The shipped policy with n_trust trust rules (the matching ones last) and tiers up to n_tiers."""
        text = SHIPPED_POLICY.read_text() if self.policy == str(SHIPPED_POLICY.resolve()) else Path(self.policy).read_text()
        text = re.sub(r"(?m)^\[\[trust\]\]\n(?:[a-z_]+ = .*\n)+\n?", "", text)
        base_tiers = list(self.policy_doc["tiers"])
        parents = [t for t in base_tiers if t != "privileged"]
        lines = [text, "\n# --- generated by bench/bench.py ---\n"]
        for i in range(max(0, n_tiers - len(base_tiers))):
            parent = parents[i % len(parents)]
            strict = int(self.policy_doc["tiers"].get(parent, {}).get("strictness", 20)) + 1 + i % 7
            lines.append(f'[tiers.gen-{i:03d}]\ndescription = "generated tier {i}"\nextends = "{parent}"\n'
                         f'strictness = {strict}\npids_limit = {512 + i}\n')
            if i % 3 == 0:
                lines.append(f'network = "gen-{i:03d}"\n')
                allow = ", ".join(f'{{ cidr = "10.{i}.{j}.0/24", ports = [443], proto = "tcp" }}' for j in range(20))
                lines.append(f'\n[networks.gen-{i:03d}]\negress = "allowlist"\ningress = "none"\n'
                             f'dns = "resolv.conf"\nallow = [{allow}]\n')
            lines.append("\n")
        rules = []
        tiers_cycle = [t for t in base_tiers if t != "privileged"] or base_tiers
        for i in range(max(0, n_trust - 2)):
            if i % 10 == 9:
                rules.append(f'[[trust]]\ndigest = "sha256:{i:064x}"\nmax_tier = "{tiers_cycle[i % len(tiers_cycle)]}"\n')
            else:
                rules.append(f'[[trust]]\nmatch = "registry{i}.example.com/team-{i % 37}/app-*"\n'
                             f'max_tier = "{tiers_cycle[i % len(tiers_cycle)]}"\n')
        rules.append('[[trust]]\nmatch = "localhost/tiergate-*"\nmax_tier = "privileged"\n')
        rules.append('[[trust]]\nmatch = "*"\nmax_tier = "baseline"\n')
        path.write_text("".join(lines) + "\n" + "\n".join(rules))
        return path

    def _scale_policy(self) -> dict:
        warm_n = 8 if self.quick else 25
        cold_n = 2 if self.quick else 5
        cases = [(1000, 200)] if self.quick else [(10, 50), (100, 50), (1000, 50), (1000, 200)]
        data = json.dumps(self.specs.get("baseline") or next(iter(self.specs.values()))).encode()
        out = []
        gen_dir = self.d / "gen-policies"
        gen_dir.mkdir()
        say(f"scale: generated policies {cases} (trust rules, tiers): warm hook x{warm_n}, cold compile x{cold_n}")
        policies = {}
        for n_trust, n_tiers in cases:
            p = self.gen_policy(n_trust, n_tiers, gen_dir / f"policy-{n_trust}-{n_tiers}.toml")
            cache = self.d / f"cache-gen-{n_trust}-{n_tiers}"
            self.run_hook(data, policy=str(p), cache=cache)  # compile once: the cache is warm from here
            policies[(n_trust, n_tiers)] = (p, cache, cache_bytes(cache))
        configs = {"no-op hook": lambda: self.run_hook(data, noop=True)[0],
                   "shipped policy": lambda: self.run_hook(data)[0]}
        for (n_trust, n_tiers), (p, cache, _) in policies.items():
            configs[f"{n_trust} rules x {n_tiers} tiers"] = (lambda p=p, c=cache: self.run_hook(data, policy=str(p), cache=c)[0])
        warm = with_deltas(alternate(configs, warm_n, "warm hook", warmup=False), "shipped policy", "no-op hook")
        floor = warm.pop("no-op hook")
        cold_cfgs = {}
        counter = iter(range(10 ** 6))
        for key, (p, _, _) in [(("shipped", ""), (Path(self.policy), None, None)), *policies.items()]:
            name = "shipped policy" if key[0] == "shipped" else f"{key[0]} rules x {key[1]} tiers"
            cold_cfgs[name] = (lambda p=p: self.run_hook(data, policy=str(p),
                                                         cache=self.d / f"cold-{next(counter)}")[0])
        cold = alternate(cold_cfgs, cold_n, "cold hook (compile)", warmup=False)
        for name in warm:
            key = next((k for k in policies if f"{k[0]} rules x {k[1]} tiers" == name), None)
            # instructions with a warm cache: the shipped policy and the largest one (deterministic)
            ins = (self.hook_instructions(data) if key is None else
                   self.hook_instructions(data, policy=str(policies[key][0]), cache=policies[key][1])
                   if key == cases[-1] else {})
            out.append({"policy": name, "trust_rules": key[0] if key else len(self.policy_doc.get("trust", [])),
                        "tiers": key[1] if key else len(self.policy_doc.get("tiers", {})),
                        "cache_bytes": policies[key][2] if key else cache_bytes(self.cache),
                        "warm": warm[name], "cold": cold.get(name), "warm_instructions": ins.get("instructions")})
        return {"noop_hook": floor, "rows": out}

    def _scale_spec(self) -> list:
        runs = 8 if self.quick else 25
        spec = self.specs.get("baseline") or next(iter(self.specs.values()))
        configs, sizes = {}, {}
        for n in (0, 1000, 10000):
            s = json.loads(json.dumps(spec))
            s["process"]["env"] = list(s["process"].get("env") or []) + [f"BENCH_PAD_{i}=" + "x" * 48 for i in range(n)]
            s.setdefault("annotations", {}).update({f"bench.pad/{i}": "y" * 32 for i in range(n // 10)})
            data = json.dumps(s).encode()
            name = f"spec {len(data) // 1024} KiB ({n} env vars)"
            sizes[name] = len(data)
            configs[name] = (lambda d=data: self.run_hook(d)[0])
        say(f"scale: spec size {list(sizes)} x{runs}")
        res = alternate(configs, runs, "spec size", warmup=False)
        first = next(iter(res))
        res = with_deltas(res, first)
        return [{"spec": k, "bytes": sizes[k], **v} for k, v in res.items()]

    def _scale_cidrs(self) -> list:
        from tiergate.network import apply, ruleset
        from tiergate.network.model import from_table, to_dict

        self.netns = f"tgbench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=30)
        path = f"/run/netns/{self.netns}"
        reps = 3 if self.quick else 7
        sizes = (10, 100, 1000, 10000)
        say(f"scale: network allowlists of {sizes} CIDRs, build + apply into netns {self.netns} x{reps}")
        out = []
        for n in sizes:
            allow = []
            for i in range(n):
                if i % 10 == 9:
                    allow.append({"cidr": f"2001:db8:{i >> 8:x}:{i & 0xff:x}::/64", "ports": [443], "proto": "tcp"})
                else:
                    allow.append({"cidr": f"10.{(2 * i) >> 8 & 0xff}.{(2 * i) & 0xff}.0/24", "ports": [443], "proto": "tcp"})
            t0 = time.perf_counter()
            pol = to_dict(from_table(f"bench{n}", {"egress": "allowlist", "ingress": "none", "dns": "resolv.conf",
                                                   "allow": allow}))
            compile_s = time.perf_counter() - t0
            facts = {"id": "benchcontainer", "nameservers": ["10.0.0.53"], "ports": []}
            builds, applies, nsent = [], [], []
            nsent_error = None
            doc = None
            for _ in range(reps):
                t0 = time.perf_counter()
                doc = ruleset.build(pol, facts)
                builds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                apply.apply(doc, path, timeout=120)
                applies.append(time.perf_counter() - t0)
                if nsent_error is None:
                    # the former loader, for comparison: an nsenter + nft process
                    try:
                        t0 = time.perf_counter()
                        nsenter_apply(doc, path)
                        nsent.append(time.perf_counter() - t0)
                    except Exception as exc:  # noqa: BLE001
                        nsent_error = str(exc)[:200]
            listed = subprocess.run(["ip", "netns", "exec", self.netns, "nft", "list", "table", "inet", "tiergate"],
                                    capture_output=True, text=True, timeout=60).stdout
            out.append({"cidrs": n, "model_compile_ms": round(compile_s * 1000, 2), "build": stats(builds),
                        "apply": stats(applies), "apply_nsenter": stats(nsent), "nsenter_error": nsent_error,
                        "doc_bytes": len(json.dumps(doc, separators=(",", ":"))),
                        "loaded_ok": "allow4_0" in listed})
        subprocess.run(["ip", "netns", "delete", self.netns], timeout=30)
        self.netns = None
        return out

    def _scale_parallel(self) -> list:
        """Batches of 20 and 50 starts at once, PARALLEL_ROUNDS of each per config, rotated (each config
        takes each place in the rotation equally often). The configs: bare; podman's own cost of a
        precreate hook (/bin/cat as the hook: it echoes the spec and costs nothing itself); the no-op
        Python hook; tiergate's hook (hooks.d alone); tiergate as podman's runtime (podman-runtime
        alone); and both, as `tiergate install --engine podman` registers them. Besides each batch's
        wall, the host's busy CPU during it per container: on 2 CPUs the batch is CPU-bound, and the
        CPU a start costs moves far less from run to run than the batch's wall. Then, with perf, one
        more batch of 50 per config says which processes that CPU went to (_cpu_split)."""
        tier = "baseline" if "baseline" in self.images else next(iter(self.images))
        self.tiergate("install", "--engine", "podman-runtime", "--config", self.d / "podman-runtime-conf",
                      "--bin-dir", self.d / "bin-podman-runtime", "--log", self.log, "--cache-dir", self.cache,
                      "--policy", self.policy)
        shim = str(self.d / "bin-podman-runtime" / "tiergate-runtime")
        configs = {"bare": ("bare", None), "/bin/cat hook": ("cat", None), "no-op hook": ("noop", None),
                   f"tiergate {tier}": ("tiergate", None), f"tiergate {tier} podman-runtime": ("bare", shim),
                   f"tiergate {tier} hook + podman-runtime": ("tiergate", shim)}
        argvs = {name: self.podman_argv(hooks, "run", "--rm", self.images[tier], "true", runtime=runtime)
                 for name, (hooks, runtime) in configs.items()}
        out = []
        for n in (20, 50):
            rounds = 1 if self.quick else PARALLEL_ROUNDS
            say(f"scale: {n} containers started at once, {' / '.join(configs)}, {rounds} round(s)")

            cpu: dict[str, list[float]] = {}

            def batch(name: str, n=n, cpu=cpu):
                def run() -> float:
                    c0 = host_cpu()
                    t0 = time.perf_counter()
                    errs = self._at_once(argvs[name], n)
                    wall = time.perf_counter() - t0
                    if errs:
                        raise Failed(f"{len(errs)}/{n} failed: {errs[0]}")
                    cpu.setdefault(name, []).append((host_cpu() - c0) / n)
                    return wall
                return run
            res = alternate({name: batch(name) for name in configs}, rounds, f"parallel {n}", warmup=False)
            bare = res["bare"].get("median_ms")
            bare_cpu = statistics.median(cpu["bare"]) if cpu.get("bare") else None
            for name, r in res.items():
                if r["median_ms"]:
                    r["containers_per_s"] = round(n / (r["median_ms"] / 1000), 2)
                    if bare:
                        r["throughput_ratio"] = round(bare / r["median_ms"], 3)
                if cpu.get(name):
                    r["cpu_per_start"] = stats(cpu[name])
                    if bare_cpu:
                        r["cpu_ratio"] = round(bare_cpu / r["cpu_per_start"]["median_ms"] * 1000, 3)
            entry = {"containers": n, "tier": tier, "results": res}
            if n == 50:
                entry["cpu_split"] = self._cpu_split(argvs, n)
            out.append(entry)
        return out

    def _at_once(self, argv: list[str], n: int) -> list[str]:
        """Start `n` of `argv` (a podman run) at once and wait for all; the last stderr line of each that failed."""
        procs = [subprocess.Popen(argv, env=self.podman.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for _ in range(n)]
        errs = []
        for p in procs:
            _, err = p.communicate(timeout=600)
            if p.returncode != 0:
                errs.append(last_line(err))
        return errs

    def _cpu_split(self, argvs: dict[str, list[str]], n: int) -> dict:
        """One batch of `n` per config under `perf record -a`: CPU ms per container by process, from
        perf's samples of every CPU (comm names grouped by CPU_GROUPS; this script's own samples apart).
        {} with a note when perf is absent or fails: it explains the batches, it is not one of them."""
        perf = shutil.which("perf")
        if not perf:
            self.skip("CPU by process during a batch", "perf is not installed (apt install linux-perf)")
            return {}
        out: dict[str, dict[str, float]] = {}
        for name, argv in argvs.items():
            data = self.d / ("perf-" + re.sub(r"\W+", "-", name) + ".data")
            rec = subprocess.Popen([perf, "record", "-a", "-q", "-F", str(PERF_HZ), "-o", str(data)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)  # perf has its events open
            errs = self._at_once(argv, n)
            rec.send_signal(signal.SIGINT)
            try:
                _, err = rec.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                rec.kill()
                rec.communicate()
                err = b"timed out"
            report_out = subprocess.run([perf, "report", "-i", str(data), "--sort", "pid,comm", "--stdio", "-q", "-n"],
                                        capture_output=True, text=True, timeout=300)
            data.unlink(missing_ok=True)
            if errs or report_out.returncode != 0:
                why = (f"{len(errs)}/{n} podman runs failed ({name}): {errs[0]}" if errs
                       else f"perf record/report failed: {last_line(err) or last_line(report_out.stderr)}")
                self.skip("CPU by process during a batch", why)
                return {}
            out[name] = cpu_groups(report_out.stdout, os.getpid(), n)
        return out

    # -- network policy, storage size, first start after a policy change -------------------------
    def section_network(self) -> None:
        """A tier with a network policy beside the same tier without one (a policy copy with its
        `network` line removed), on a macvlan network: podman makes a real namespace to program."""
        tiers = [t for t in NETWORK_TIERS if t in self.tiers and self.policy_doc["tiers"][t].get("network")]
        if not tiers:
            self.skip("network policy", "no tier of NETWORK_TIERS with a network in the policy")
            return
        nonet = self.d / "policy-no-network.toml"
        from tiergate_fixtures import without_network

        nonet.write_text(without_network(Path(self.policy).read_text(), tiers))
        self.install_podman("tiergate-no-network", nonet)
        net, _ = self.macvlan(f"10.216.{os.getpid() % 250}")
        configs = {"bare": self.podman_start("bare", self.bare_image, network=net),
                   "no-op hook": self.podman_start("noop", self.bare_image, network=net)}
        for t in tiers:
            configs[f"{t} without a network policy"] = self.podman_start("tiergate-no-network", self.images[t],
                                                                         network=net)
            configs[f"{t} with its network policy"] = self.podman_start("tiergate", self.images[t], network=net)
        say(f"network: {self.rounds} rounds, {', '.join(tiers)} with / without their network policy, macvlan network")
        res = with_deltas(alternate(configs, self.rounds, "network"), "bare", "no-op hook")
        for t in tiers:
            a, b = res[f"{t} with its network policy"], res[f"{t} without a network policy"]
            if a.get("median_ms") and b.get("median_ms"):
                a["added_vs_without_ms"] = round(a["median_ms"] - b["median_ms"], 2)
        self.results["network"] = {"tiers": tiers, "results": res, "hook": self._network_hook(tiers, nonet)}

    def _network_hook(self, tiers: list[str], nonet: Path) -> dict:
        """The hook process alone on each tier's saved spec, its network namespace a fresh one made
        for each run (loopback only, as the nft transaction does not depend on interfaces), with the
        tier's network policy and without it (the policy copy, its own cache): what programming the
        policy adds to a start, without podman's ±10 ms around it."""
        n = self.args.hook_runs or (10 if self.quick else 40)
        cache = self.d / "cache-no-network"
        quiet = {"stdin": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

        def mk(tier: str, policy: str | None):
            spec = json.loads(json.dumps(self.specs[tier]))
            spaces = spec.setdefault("linux", {}).setdefault("namespaces", [])
            net = next((ns for ns in spaces if ns.get("type") == "network"), None)
            if net is None:
                net = {"type": "network"}
                spaces.append(net)

            def run() -> float:
                # a holder process in a namespace of its own: it says so once it has unshared
                holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "echo; exec sleep 60"],
                                          stdout=subprocess.PIPE, **quiet)
                try:
                    assert holder.stdout is not None
                    if holder.stdout.readline() != b"\n":
                        raise Failed("unshare --net did not start")
                    net["path"] = f"/proc/{holder.pid}/ns/net"
                    wall, _ = self.run_hook(json.dumps(spec).encode(), policy=policy, cache=cache if policy else None)
                    return wall
                finally:
                    holder.kill()
                    holder.wait(timeout=10)
            return run

        configs = {}
        for t in tiers:
            configs[f"{t} without a network policy"] = mk(t, str(nonet))
            configs[f"{t} with its network policy"] = mk(t, None)
        say(f"network, the hook alone: {n} runs each, a fresh namespace each")
        res = alternate(configs, n, "network hook")
        for t in tiers:
            a, b = res[f"{t} with its network policy"], res[f"{t} without a network policy"]
            if a.get("median_ms") and b.get("median_ms"):
                a["added_vs_without_ms"] = round(a["median_ms"] - b["median_ms"], 2)
        return res

    def section_storage(self) -> None:
        """podman run against a storage of 10 images + 10 containers and one of N + N (synthetic
        entries copied from the real ones, as the engine writes them: every start's lookup reads
        these files), each with bare / no-op hook / tiergate, all alternating."""
        sizes = [10, 1000]
        tier = "baseline" if "baseline" in self.images else next(iter(self.images))
        configs: dict = {}
        specs: dict[int, bytes] = {}
        for n in sizes:
            p = self.h.Podman(self.d / f"st{n}", image_tar=self.rootfs.tar, hooks_dir=self.hooks["bare"])
            self.stores.append((p, {}))
            p.import_image(self.images[tier], {LABEL: tier})
            specs[n] = json.dumps(self.capture(self.images[tier], "tgb-store-real", podman=p)).encode()
            self.stores[-1] = (p, pad_storage(p.root, n, n))
            for hooks, label in (("bare", "bare"), ("noop", "no-op hook"), ("tiergate", f"tiergate {tier}")):
                configs[f"{n} images + {n} containers: {label}"] = self.podman_start(hooks, self.images[tier],
                                                                                    podman=p)
        say(f"storage: {self.rounds} rounds, {sizes} images + containers, bare / no-op hook / tiergate")
        res = alternate(configs, self.rounds, "storage")
        out = {}
        for n in sizes:
            rows = {k.split(": ", 1)[1]: v for k, v in res.items() if k.startswith(f"{n} images")}
            out[str(n)] = with_deltas(rows, "bare", "no-op hook")
        # the hook process alone on a spec of each storage: wall (alternating) and instructions
        hook = with_deltas(alternate({f"{n} + {n}": (lambda d=specs[n]: self.run_hook(d)[0]) for n in sizes},
                                     self.args.hook_runs or (10 if self.quick else 40), "storage hook"),
                           f"{sizes[0]} + {sizes[0]}")
        if shutil.which("valgrind"):
            for n in sizes:
                hook[f"{n} + {n}"].update(self.callgrind([self.hook_path, *self.hook_argv[1:]], specs[n]))
        self.results["storage"] = {"sizes": sizes, "tier": tier, "results": out, "hook": hook}

    def section_cold(self) -> None:
        """The first start after a policy change (the policy file rewritten before each timed start,
        so the hook finds its cache stale) beside a start with a warm cache."""
        cold = self.d / "policy-cold.toml"
        text = Path(self.policy).read_text()
        cold.write_text(text)
        self.install_podman("tiergate-cold", cold)
        tier = "baseline" if "baseline" in self.images else next(iter(self.images))
        first = self.podman_start("tiergate-cold", self.images[tier])
        changes = iter(range(10 ** 6))

        def after_change() -> float:
            cold.write_text(text + f"\n# bench: change {next(changes)}\n")
            return first()
        configs = {"bare": self.podman_start("bare", self.bare_image),
                   "no-op hook": self.podman_start("noop", self.bare_image),
                   f"tiergate {tier}, warm cache": self.podman_start("tiergate", self.images[tier]),
                   f"tiergate {tier}, first start after a policy change": after_change}
        say(f"cold: {self.rounds} rounds, warm cache vs first start after a policy change")
        res = with_deltas(alternate(configs, self.rounds, "cold"), "bare", "no-op hook")
        # the hook process alone, deterministic: warm cache vs a policy changed since the last compile
        data = json.dumps(self.specs.get(tier) or next(iter(self.specs.values()))).encode()
        warm_i = self.hook_instructions(data, hooks="tiergate-cold")
        cold.write_text(text + "\n# bench: changed once more\n")
        cold_i = self.hook_instructions(data, hooks="tiergate-cold")
        self.results["cold"] = {"tier": tier, "results": res, "instructions": {
            "warm": warm_i.get("instructions"), "after a policy change": cold_i.get("instructions")}}

    def section_cri(self) -> None:
        """Pod start and ExecSync under containerd's CRI plugin (bench/cri.py)."""
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_cri", REPO / "bench" / "cri.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        rounds = self.args.cri_rounds or (3 if self.quick else 25)
        execs = 3 * rounds  # ExecSync times are bimodal here (~33 and ~50 ms, runc alike): more samples
        say(f"cri: {rounds} rounds of pod start, {execs} ExecSync each")
        try:
            raw = mod.measure(rounds, execs, work=self.d / "cri", rootfs_tar=self.rootfs.tar, say=say)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - pytest.skip from the harness included
            self.skip("containerd CRI", f"{type(exc).__name__}: {exc}")
            return
        pods = {k: stats(v) for k, v in raw["pods"].items()}
        execs = {k: stats(v) for k, v in raw["exec"].items()}
        self.results["cri"] = {"rounds": rounds, "exec_rounds": execs,
                               "pods": with_deltas(pods, report.CRI_POD_BARE, "no-op Python shim"),
                               "exec": with_deltas(execs, "runc + RuntimeDefault seccomp", "no-op Python shim")}

    def section_filters(self) -> None:
        """What runc pays to build each seccomp filter (bench/filters.py)."""
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_filters", REPO / "bench" / "filters.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        rounds = self.rounds
        say(f"filters: libseccomp's build per profile (callgrind), then {rounds} rounds of runc exec")
        raw = mod.measure(rounds, work=self.d / "filters", say=say)
        out = {}
        for name, r in raw.items():
            out[name] = {"bpf": r["bpf"], "build_minstr": r["build_minstr"], "arches": r["arches"],
                         "exec_cpu": stats([v / 1000 for v in r["exec_cpu_ms"]]),
                         "exec_wall": stats([v / 1000 for v in r["exec_ms"]])}
        self.results["filters"] = {"rounds": rounds, "results": out, "reference": "containerd RuntimeDefault"}

    # -- 4. seccomp workload cost ------------------------------------------------------------
    def section_seccomp(self) -> None:
        rounds = self.args.seccomp_rounds or (2 if self.quick else 5)
        calls = ("1000000", "125000", "3")
        priv = self.images.get("privileged")
        configs: dict = {}
        raw: dict[str, list[dict]] = {}

        def runner(name: str, hooks: str, image: str, *extra: str):
            raw[name] = []
            # The binary itself, no shell: node-worker's filter denies fork.
            argv = self.podman_argv(hooks, "run", "--rm", *extra, image, "/bin/tg-syscalls", *calls)

            def run() -> float:
                wall, _, proc = timed(argv, env=self.podman.env)
                if proc.returncode != 0:
                    raise Failed(f"exited {proc.returncode}: {last_line(proc.stderr) or last_line(proc.stdout)}")
                raw[name].append(self._parse_syscalls(proc.stdout.decode()))
                return wall
            return run

        def host():
            raw["host (no container)"] = []

            def run() -> float:
                wall, _, proc = timed([self.syscalls_bin, *calls])
                raw["host (no container)"].append(self._parse_syscalls(proc.stdout.decode()))
                return wall
            return run

        configs["host (no container)"] = host()
        if priv:
            configs["no filter (unconfined)"] = runner("no filter (unconfined)", "tiergate", priv,
                                                       "--security-opt", "seccomp=unconfined")
            configs["Docker default (podman seccomp.json)"] = runner(
                "Docker default (podman seccomp.json)", "tiergate", priv,
                "--security-opt", f"seccomp={DOCKER_DEFAULT_SECCOMP}")
        else:
            self.skip("seccomp unconfined / default", "no privileged tier in the policy")
        for tier in SECCOMP_TIERS:
            if tier in self.images:
                configs[f"tiergate {tier}"] = runner(f"tiergate {tier}", "tiergate", self.images[tier])
        say(f"seccomp workload: {rounds} rounds x {len(configs)} configs ({calls[0]} getppid, "
            f"{calls[1]} open/close pairs, best of {calls[2]} batches each)")
        res = alternate(configs, rounds, "seccomp", warmup=False)
        out = {}
        for name, r in res.items():
            rows = raw.get(name) or []
            row = {"n": len(rows), "error": r.get("error")}
            for key in ("getppid_ns", "open_close_ns", "mixed_ns"):
                vals = [x[key] for x in rows if key in x]
                row[key] = round(statistics.median(vals), 1) if vals else None
                row[f"{key}_samples"] = vals
            row["seccomp_mode"] = rows[-1].get("seccomp") if rows else None
            row["seccomp_filters"] = rows[-1].get("seccomp_filters") if rows else None
            out[name] = row
        ref = out.get("Docker default (podman seccomp.json)", {})
        none = out.get("no filter (unconfined)", {})
        for row in out.values():
            for key in ("getppid_ns", "mixed_ns"):
                if row.get(key) is not None and ref.get(key):
                    row[f"{key}_vs_docker_default"] = round(row[key] / ref[key], 3)
                if row.get(key) is not None and none.get(key):
                    row[f"{key}_vs_unconfined"] = round(row[key] / none[key], 3)
        self.results["seccomp"] = {"calls": {"getppid": int(calls[0]), "open_close_pairs": int(calls[1]),
                                             "batches": int(calls[2])}, "rounds": rounds, "results": out,
                                   "docker_default_profile": DOCKER_DEFAULT_SECCOMP}

    @staticmethod
    def _parse_syscalls(text: str) -> dict:
        row: dict = {}
        for m in re.finditer(r"(\w+)=(-?[\d.]+)", text):
            row[m.group(1)] = float(m.group(2))
        for key in ("seccomp", "seccomp_filters"):
            if key in row:
                row[key] = int(row[key])
        if "getppid_ns" not in row:
            raise Failed(f"no timing in output: {text[-200:]!r}")
        return row

    # -- 5. the metadata block: the same tier with and without it, on a real network --------------
    def section_metadata(self) -> None:
        """baseline (metadata closed) beside baseline with allow_metadata = true, on a macvlan network
        whose parent is a veth into a throwaway netns (podman, and docker through the shim); plus the
        two mechanisms alone in a namespace: policy-routing rules vs an nft table (libnftables)."""
        open_policy = self.d / "policy-open.toml"
        text = Path(self.policy).read_text()
        open_policy.write_text(text.replace("[tiers.baseline]\n", "[tiers.baseline]\nallow_metadata = true\n", 1))
        net, host_if = self.macvlan("10.215.7")
        out: dict = {"mechanism": self._md_mechanisms()}
        self.install_podman("tiergate-open", open_policy)
        say(f"metadata podman: {self.rounds} rounds, baseline with / without the block, macvlan network")
        res = alternate({"podman baseline, allow_metadata": self.podman_start("tiergate-open", self.images["baseline"],
                                                                              network=net),
                         "podman baseline, metadata closed": self.podman_start("tiergate", self.images["baseline"],
                                                                               network=net)},
                        self.rounds, "metadata podman")
        out["podman"] = with_deltas(res, "podman baseline, allow_metadata")
        if self.shim:
            out["docker"] = self._md_docker(open_policy, host_if)
        self.results["metadata"] = out

    def _md_docker(self, open_policy: Path, host_if: str) -> dict:
        h = self.h
        self.tiergate("install", "--engine", "docker", "--daemon-json", self.d / "docker-open/daemon.json",
                      "--bin-dir", self.d / "bin-shim-open", "--log", self.log, "--cache-dir", self.d / "cache-tiergate-open",
                      "--policy", open_policy)
        self.docker = h.Docker(self.d / "docker-md", image_tar=self.rootfs.tar,
                               runtimes={"tiergate": self.shim,
                                         "tiergate-open": str(self.d / "bin-shim-open" / "tiergate-runtime")})
        self.docker.start()
        dk = self.docker
        try:
            dk.docker("network", "create", "-d", "macvlan", "-o", f"parent={host_if}", "--subnet",
                      "10.215.8.0/24", "--gateway", "10.215.8.1", "tgb-md", check=True)
            image = "localhost/tiergate-bench-md:1"
            dk.import_image(image, {LABEL: "baseline"})

            def start(runtime: str):
                argv = [dk.cli, "-H", f"unix://{dk.sock}", "run", "--rm", "--network", "tgb-md", "--runtime",
                        runtime, image, "true"]
                return start_cmd(argv, dk.env, "docker run")
            say(f"metadata docker: {self.rounds} rounds, baseline with / without the block (shim create path)")
            res = alternate({"docker baseline, allow_metadata": start("tiergate-open"),
                             "docker baseline, metadata closed": start("tiergate")}, self.rounds, "metadata docker")
            return with_deltas(res, "docker baseline, allow_metadata")
        finally:
            dk.remove_containers()
            dk.docker("network", "rm", "tgb-md", timeout=60)
            dk.stop()
            self.docker = None

    def _md_mechanisms(self) -> dict:
        """The block alone, timed inside a fresh process (its imports included, the interpreter's
        start excluded) in a fresh netns each time: policy-routing rules vs an nft table."""
        rules = "from tiergate.network import metadata as m; m.close(P, [])"
        # as for a workload holding CAP_NET_RAW (docker's baseline): the egress chains too
        raw = "from tiergate.network import metadata as m; m.close(P, [], True)"
        table = ("from tiergate.network import apply as a, metadata as m\n"
                 "e=[{'match':{'op':'==','left':{'payload':{'protocol':'ip' if f==4 else 'ip6','field':'daddr'}},"
                 "'right':{'prefix':{'addr':ad,'len':n}}}} for f,ad,n,_ in m.BLOCKED]\n"
                 "c=[{'add':{'table':{'family':'inet','name':'tgmd'}}},{'add':{'chain':{'family':'inet','table':'tgmd',"
                 "'name':'o','type':'filter','hook':'output','prio':-1,'policy':'accept'}}}]\n"
                 "c+=[{'add':{'rule':{'family':'inet','table':'tgmd','chain':'o','expr':[x,{'drop':None}]}}} for x in e]\n"
                 "a.apply({'nftables':c}, P)")
        bodies = {"ip rules (netlink)": rules, "nft table (libnftables)": table,
                  "ip rules + egress chains (CAP_NET_RAW, shim)": raw}
        samples: dict[str, list[float]] = {name: [] for name in bodies}
        for _round in range(self.rounds * 2):
            for name, body in bodies.items():
                ns = f"tgb-mm-{uuid.uuid4().hex[:8]}"
                subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
                subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "p0"],
                               check=True, timeout=30)
                try:
                    code = ("import time, tiergate.hook.stages\nT=time.perf_counter()\n"
                            f"P='/run/netns/{ns}'\n" + body + "\nprint(time.perf_counter()-T)")
                    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                                          timeout=60, cwd="/")
                    if proc.returncode != 0:
                        raise Failed(last_line(proc.stderr))
                    samples[name].append(float(proc.stdout.strip().splitlines()[-1]))
                finally:
                    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        say("metadata mechanisms (ms, median): " + ", ".join(
            f"{n} {statistics.median(v) * 1000:.2f}" for n, v in samples.items()))
        out = {n: stats(v) for n, v in samples.items()}
        if shutil.which("valgrind"):  # deterministic: user-space instructions of the whole process
            counts = {}
            for name, body in {"imports only": "pass", **bodies}.items():
                ns = f"tgb-mm-{uuid.uuid4().hex[:8]}"
                subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
                subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "p0"],
                               check=True, timeout=30)
                try:
                    code = f"import tiergate.hook.stages\nP='/run/netns/{ns}'\n" + body
                    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                                           sys.executable, "-I", "-c", code], capture_output=True, text=True,
                                          timeout=600, cwd="/")
                    found = [int(n) for n in re.findall(r"Collected : (\d+)", proc.stderr)]
                    if found:
                        counts[name] = max(found)
                finally:
                    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
            base = counts.get("imports only")
            for name, n in counts.items():
                if name in out and base:
                    out[name]["added_instructions_M"] = round((n - base) / 1e6, 2)
        return out

    # -- teardown ------------------------------------------------------------------------------
    def cleanup(self) -> None:
        say("cleaning up")
        if self.docker is not None:
            try:
                self.docker.stop()
            except Exception as exc:  # noqa: BLE001
                say(f"docker stop: {exc}")
        for ns in (self.netns, *self.netnses):
            if ns:  # deleting the namespace removes the veth pair with it
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        for p, originals in self.stores:
            for path, raw in originals.items():  # the engine removes only what it knows
                path.write_bytes(raw)
            try:
                p.cleanup()
            except Exception as exc:  # noqa: BLE001
                say(f"podman (storage) cleanup: {exc}")
        if self.podman is not None:
            try:
                self.podman.cleanup()
            except Exception as exc:  # noqa: BLE001
                say(f"podman cleanup: {exc}")
        runc_root = self.d / "runc-root"
        if runc_root.is_dir() and shutil.which("runc"):
            ids = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True,
                                 text=True, timeout=30).stdout.split()
            for cid in ids:
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", cid],
                               capture_output=True, timeout=30)
        left = self.h.remove_cgroup(self.runc_cgroup)
        if left:
            say(f"cgroups left: {left}")
        self.h.remove_tree(self.d)
        left = self.footprint.restore()
        if left:
            say(f"host paths left (not empty): {left}")


def ensure_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        pass
    say(f"matplotlib is missing: {sys.executable} -m pip install matplotlib")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "matplotlib"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        say(f"pip install matplotlib failed ({last_line(proc.stderr)}): no plot")
        return False
    import importlib
    importlib.invalidate_caches()
    try:
        import matplotlib  # noqa: F401,F811
        return True
    except ImportError:
        return False


def plot(res: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = []
    e2e = res.get("e2e") or {}
    rows = [(n, r) for eng in ("podman", "docker", "runc") for n, r in (e2e.get(eng) or {}).items() if r.get("median_ms")]
    if rows:
        panels.append(("Container start: median wall (ms), bars p25-p75", rows, "median_ms"))
    hook = (res.get("hook") or {}).get("runs") or {}
    hrows = [(n, r) for n, r in hook.items() if r.get("median_ms")]
    if hrows:
        panels.append(("Hook process alone: wall and CPU (ms)", hrows, "hook"))
    sec = (res.get("seccomp") or {}).get("results") or {}
    srows = [(n, r) for n, r in sec.items() if r.get("getppid_ns")]
    if srows:
        panels.append(("Seccomp: ns per syscall inside the container", srows, "seccomp"))
    if not panels:
        return False
    heights = [max(2.5, 0.32 * len(p[1]) + 1.2) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)), gridspec_kw={"height_ratios": heights})
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, rows, kind) in zip(axes, panels):
        names = [n for n, _ in rows][::-1]
        rs = [r for _, r in rows][::-1]
        y = range(len(names))
        if kind == "median_ms":
            med = [r["median_ms"] for r in rs]
            lo = [r["median_ms"] - (r.get("p25_ms") or r["median_ms"]) for r in rs]
            hi = [(r.get("p75_ms") or r["median_ms"]) - r["median_ms"] for r in rs]
            colors = ["#666666" if ("bare" in n or n == "runc run") else
                      "#bbbbbb" if ("no-op" in n or "Docker default" in n or "pre-hardened" in n) else
                      "#3b75af" for n in names]
            ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=2)
            for i, v in enumerate(med):
                ax.text(v, i, f" {v:.0f}", va="center", fontsize=7)
            ax.set_xlabel("ms")
        elif kind == "hook":
            ax.barh([i + 0.2 for i in y], [r["median_ms"] for r in rs], height=0.4, label="wall", color="#3b75af")
            ax.barh([i - 0.2 for i in y], [r.get("cpu_median_ms") or 0 for r in rs], height=0.4, label="CPU",
                    color="#e08a2c")
            ax.legend(fontsize=7, loc="lower right")
            ax.set_xlabel("ms")
        else:
            ax.barh([i + 0.2 for i in y], [r["getppid_ns"] for r in rs], height=0.4, label="getppid", color="#3b75af")
            ax.barh([i - 0.2 for i in y], [r["open_close_ns"] for r in rs], height=0.4, label="open/close",
                    color="#e08a2c")
            ax.legend(fontsize=7, loc="lower right")
            ax.set_xlabel("ns per syscall")
        ax.set_yticks(list(y))
        ax.set_yticklabels(names, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    m = res.get("meta", {})
    fig.suptitle(f"tiergate benchmark {m.get('date', '')}{' (quick: preliminary)' if m.get('quick') else ''}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        return "?"


def versions() -> str:
    out = []
    for argv in (["podman", "--version"], ["/usr/bin/docker", "--version"], ["runc", "--version"]):
        try:
            out.append(last_line(subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]))
        except Exception:  # noqa: BLE001
            pass
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="rounds of the start comparisons (default 15, --quick 3)")
    ap.add_argument("--quick", action="store_true", help="a short trial run: fewer rounds everywhere (preliminary)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where results go")
    ap.add_argument("--sections", default=SECTIONS, help=f"comma-separated subset to run (default {SECTIONS}; "
                    "metadata is extra)")
    ap.add_argument("--cri-rounds", type=int, default=None, help="CRI pod starts (default 25, quick 3); ExecSyncs: three times as many")
    ap.add_argument("--publish", action="store_true",
                    help="then regenerate README.md's table and docs/benchmark/ from this run (bench/report.py)")
    ap.add_argument("--tiers", default=None, help="comma-separated tiers (default: every tier of the policy)")
    ap.add_argument("--policy", default=None, help="policy file (default: the shipped tiergate/configs/policy.toml)")
    ap.add_argument("--hook-runs", type=int, default=None, help="runs per hook process config (default 40, quick 10)")
    ap.add_argument("--seccomp-rounds", type=int, default=None, help="rounds of the seccomp workload (default 5, quick 2)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG (and installing matplotlib)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.py needs root: sudo .venv/bin/python bench/bench.py", file=sys.stderr)
        return 2
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    can_plot = False if args.no_plot else ensure_matplotlib()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    bench = Bench(args)
    bench.results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": f"{platform.node()} {platform.release()}",
        "cpus": os.cpu_count(), "cpu_model": cpu_model(), "loadavg_start": round(os.getloadavg()[0], 2),
        "load_by_section": {}, "quick": args.quick,
        "rounds": bench.rounds, "engines": versions(), "policy": bench.policy, "python": sys.version.split()[0],
        "sections": sections, "argv": sys.argv[1:],
    }
    status = 0
    try:
        bench.setup()
        bench.capture_specs()
        for name in sections:
            load0 = round(os.getloadavg()[0], 2)
            try:
                getattr(bench, f"section_{name}")()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - one section's failure must not lose the others
                bench.skip(f"section {name}", f"{type(exc).__name__}: {str(exc)[-500:]}")
                status = 1
            bench.results["meta"]["load_by_section"][name] = [load0, round(os.getloadavg()[0], 2)]
    except KeyboardInterrupt as exc:
        say(f"interrupted ({exc}): writing what was measured")
        status = 130
    finally:
        try:
            bench.cleanup()
        finally:
            res = bench.results
            res["meta"]["loadavg_end"] = round(os.getloadavg()[0], 2)
            res["meta"]["duration_s"] = round(time.monotonic() - started, 1)
            args.out.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            (args.out / "latest.json").write_text(json.dumps(res, indent=1) + "\n")
            md = report.markdown(res)
            png = args.out / "latest.png"
            if can_plot and plot(res, png):
                md += f"\n![tiergate benchmark]({png.name})\n"
                shutil.copy2(png, args.out / f"bench-{stamp}.png")
            (args.out / "latest.md").write_text(md)
            shutil.copy2(args.out / "latest.json", args.out / f"bench-{stamp}.json")
            shutil.copy2(args.out / "latest.md", args.out / f"bench-{stamp}.md")
            print("\n" + md)
            say(f"results: {args.out / 'latest.json'}, {args.out / 'latest.md'}"
                + (f", {png}" if png.exists() else ""))
    if args.publish and status == 0:
        report.publish(args.out / "latest.json")
        say("README.md's table, docs/benchmark/results.{json,md,png} regenerated (bench/report.py)")
    return status


if __name__ == "__main__":
    sys.exit(main())
