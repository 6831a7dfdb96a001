"""Helpers for tiergate's integration tests: scratch engines that touch nothing shared.

Everything here runs real container engines as root, each confined to a
temporary directory:

- ``busybox_rootfs(dir)`` builds a busybox-static root filesystem (dir + tar).
- ``Podman`` drives podman with its own storage, containers.conf, hooks dir,
  tmp dir, network config dir and cgroup parent; ``--network none`` by default.
- ``RuncBundle`` writes an OCI bundle (base spec from ``runc spec``) and runs it
  with a private ``runc --root``.
- ``Docker`` starts a private containerd + dockerd (sockets, data and exec
  roots, pidfiles, key file all under its directory) and stops them by pid.
- ``probe_status`` / ``caps_from_hex`` read ``cat /proc/self/status`` output.

Every subprocess call is bounded by a timeout; nothing here changes the host's
firewall or sysctls, and teardown removes what the engines left on the host
(``HostFootprint``), cgroups under our own parent included.

This module has no dependency on tiergate itself: the control runs in
test_harness.py use it to prove the engines work before tiergate is involved.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence

import pytest

# --------------------------------------------------------------------------
# /proc/self/status
# --------------------------------------------------------------------------

#: Capability names by bit number (linux/capability.h, up to CAP_CHECKPOINT_RESTORE).
CAP_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
    "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
    "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


def caps_from_hex(value: str) -> set[str]:
    """Capability names set in a /proc/<pid>/status mask such as ``00000000a80425fb``."""
    mask = int(value, 16)
    names = {name for bit, name in enumerate(CAP_NAMES) if mask >> bit & 1}
    unknown = mask >> len(CAP_NAMES)
    bit = len(CAP_NAMES)
    while unknown:
        if unknown & 1:
            names.add(f"CAP_{bit}")
        unknown >>= 1
        bit += 1
    return names


def probe_status(output: str) -> dict[str, str]:
    """Fields of ``cat /proc/self/status`` output, values as printed (stripped).

    ``probe_status(out)["CapEff"] == "00000000800405fb"``,
    ``["NoNewPrivs"] == "0"``, ``["Seccomp"] == "2"``. Lines that are not
    ``Key:<tab>value`` (engine noise on a shared stream) are ignored. Raises
    ValueError when none of CapEff, NoNewPrivs, Seccomp is present, so a
    probe whose command failed cannot pass as an empty dict.
    """
    fields: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and " " not in key and key[0].isalpha():
            fields[key] = value.strip()
    if not {"CapEff", "NoNewPrivs", "Seccomp"} & fields.keys():
        raise ValueError(f"no /proc/self/status fields in output: {output[:300]!r}")
    return fields


# --------------------------------------------------------------------------
# processes, skips
# --------------------------------------------------------------------------

DEFAULT_TIMEOUT = 60.0
STRICT_ENV = "TIERGATE_IT_STRICT"


def run_cmd(argv: Sequence[str | os.PathLike], *, timeout: float = DEFAULT_TIMEOUT,
            check: bool = False, env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike | None = None, input: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run argv with captured text output, no stdin (unless input), bounded by timeout.

    On timeout the child is killed and TimeoutExpired propagates; with check a
    non-zero exit raises CalledProcessError whose str() carries stderr.
    """
    argv = [os.fspath(a) for a in argv]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
        input=input, stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(proc)
    return proc


class CommandFailed(subprocess.CalledProcessError):
    """A checked command failed; the message shows argv, rc, stdout and stderr."""

    def __init__(self, proc: subprocess.CompletedProcess[str]):
        super().__init__(proc.returncode, proc.args, proc.stdout, proc.stderr)

    def __str__(self) -> str:
        return (f"command {' '.join(self.cmd)!r} exited {self.returncode}\n"
                f"stdout: {(self.stdout or '')[-2000:]}\nstderr: {(self.stderr or '')[-2000:]}")


def _unavailable(reason: str) -> None:
    """Skip with reason; fail instead when TIERGATE_IT_STRICT=1 (run-tests.sh sets it)."""
    if os.environ.get(STRICT_ENV) == "1":
        pytest.fail(f"{reason} (and {STRICT_ENV}=1: setup.sh should have provided it)",
                    pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        _unavailable("integration tests need root (run as root: bash integration/run-tests.sh)")


def require_binary(name: str, path: str | None = None) -> str:
    """Absolute path of an engine binary, or skip (fail in strict mode) naming it."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if not found:
        _unavailable(f"{path or name} is not installed (integration/setup.sh installs it)")
    return found  # type: ignore[return-value]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists()


def stop_pid(pid: int, *, timeout: float = 15.0) -> None:
    """SIGTERM one pid we started, wait (bounded), then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)


def kill_procs(procs: Iterable[subprocess.Popen]) -> None:
    """SIGKILL test servers we started (Popen objects) and reap them, bounded."""
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def instructions_until_exec(argv: Sequence[str], out_file: Path, *, env: Mapping[str, str] | None = None,
                            cwd: str = "/", timeout: float = 300,
                            prefix: Sequence[str] = ()) -> tuple[int, subprocess.CompletedProcess[bytes]]:
    """(user-space instructions, the run) of a process under callgrind, up to its exit or to its
    execv into another program (the runtime shim hands over to the real runtime that way; that
    program runs outside valgrind); `prefix` runs valgrind (e.g. `unshare -m`). Instruction counts
    repeat to ~0.1%, unlike wall time (issue 20)."""
    require_binary("valgrind")
    # os.execv calls execv, the warm launcher's client posix.execve: each dump counts what ran since the last
    proc = subprocess.run([*prefix, "valgrind", "--tool=callgrind", "--dump-before=execv", "--dump-before=execve",
                           f"--callgrind-out-file={out_file}", *argv],
                          capture_output=True, env=dict(env or {}), cwd=cwd, timeout=timeout)
    parts = [Path(f"{out_file}{suffix}") for suffix in ("", ".1", ".2")]
    totals = [int(line.split()[1]) for part in parts if part.exists()
              for line in part.read_text().splitlines() if line.startswith("summary:")]
    assert totals, f"{argv[0]} under callgrind: no profile: {proc.stderr[-2000:]!r}"
    return sum(totals), proc


def callgrind_total(out_file: Path) -> int:
    """The instruction total of one callgrind profile."""
    for line in out_file.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise AssertionError(f"no instruction total in {out_file}")


def warm_helper_pid(key: str, timeout: float = 300) -> int:
    """The pid of the warm helper (engines/warm.py) of the launcher keyed `key`, once it listens
    (under callgrind it starts slowly)."""
    from tiergate.engines import warm

    def listening():
        return next((pid for path, pid, _ in warm.helpers(key + "-") if pid and os.path.exists(path[:-4])), None)

    try:
        return wait_until(listening, timeout=timeout, interval=0.1, what=f"the warm helper of key {key}")
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def wait_until(predicate, *, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns a truthy value; TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# host state: mounts, cgroups, leftovers
# --------------------------------------------------------------------------

@contextlib.contextmanager
def netns_with_eth0(prefix: str, address: str):
    """A named netns holding lo and a veth `eth0` (its peer beside it) with `address` (CIDR): what an
    engine's network hands a container (podman's precreate spec names it, a runc bundle may). Yields
    the name; deleted afterwards. Nothing on the host changes."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        for args in (["link", "add", "eth0", "type", "veth", "peer", "name", "tgpeer"], ["link", "set", "lo", "up"],
                     ["link", "set", "eth0", "up"], ["addr", "add", address, "dev", "eth0"]):
            subprocess.run(["ip", "-n", name, *args], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], timeout=30)


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount at or below root, deepest first."""
    root = Path(root).resolve()
    targets = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].encode().decode("unicode_escape")
        if target == str(root) or target.startswith(f"{root}/"):
            targets.append(target)
    for target in sorted(targets, key=len, reverse=True):
        run_cmd(["umount", "-l", target], timeout=20)


def remove_tree(root: Path) -> None:
    """Unmount what is mounted below root, then delete it."""
    root = Path(root)
    if not root.exists():
        return
    unmount_under(root)
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():  # files made immutable/read-only by a test: one more try
        run_cmd(["rm", "-rf", "--one-file-system", str(root)], timeout=60)


def cgroup_mounts() -> list[Path]:
    """Mount points of every cgroup v1 hierarchy and the v2 tree (hybrid: both)."""
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[2] in ("cgroup", "cgroup2"):
            mounts.append(Path(parts[1]))
    return mounts


def cgroup_mode() -> str:
    """'unified' (pure v2), 'hybrid' (v1 controllers plus a v2 mount) or 'legacy'."""
    types = {line.split()[2] for line in Path("/proc/self/mounts").read_text().splitlines()
             if line.split()[2] in ("cgroup", "cgroup2")}
    if types == {"cgroup2"}:
        return "unified"
    return "hybrid" if "cgroup2" in types else "legacy"


def remove_cgroup(relpath: str, *, timeout: float = 10.0) -> list[str]:
    """rmdir /<relpath> and everything below it in every hierarchy; returns what stayed."""
    rel = relpath.strip("/")
    if not rel or ".." in rel.split("/"):
        raise ValueError(f"refusing cgroup path {relpath!r}")
    left: list[str] = []
    deadline = time.monotonic() + timeout
    for mount in cgroup_mounts():
        top = mount / rel
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                      reverse=True) + [top]
        for d in dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last task exits
                    if time.monotonic() >= deadline:
                        left.append(str(d))
                        break
                    time.sleep(0.05)
    return left


def containerd_shims(sock: Path) -> list[int]:
    """containerd-shim pids whose command line names this containerd's socket (ours to stop)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"containerd-shim" in cmdline[0] and str(sock).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


@dataclass
class HostFootprint:
    """Shared host paths an engine creates even when pointed at private dirs.

    Seen here: podman's blob-info cache (/var/lib/containers/cache) and
    netavark's run dir (/run/containers/networks); containerd's shim socket
    dir (/run/containerd/s) and dockerd's plugin dir (/run/docker/plugins). ``snapshot()`` notes which
    of them exist; ``restore()`` removes, of the ones that did not, the known
    files and then the directories if they are empty. It never removes a
    non-empty directory or anything that existed at the snapshot.

    tiergate's own default cache dir (/var/cache/tiergate) fills when a hook an
    engine runs, or a CLI call, compiles a test's policy without a private cache
    dir: the entries made during the session go, and the dir if it was not there. Only the
    session's own: entries name the policy's path (policy/cache.py), and one naming a policy that
    still exists in another tree (a test session beside this one) stays; see ``_ours``.

    Warm helpers (tiergate/engines/warm.py) the session's launchers started, those whose
    launcher lies under one of ``warm_roots`` (the session's temp dirs), are stopped by the
    pid in their pid files, and their sockets and pid files removed; /run/tiergate/warm and
    /run/tiergate go too when the session made them and they are empty.
    """

    files: tuple[str, ...] = ("/var/lib/containers/cache/blob-info-cache-v1.boltdb",)
    dirs: tuple[str, ...] = (
        "/var/lib/containers/cache", "/var/lib/containers",
        "/run/containers/networks", "/run/containers",
        "/run/containerd/s", "/run/containerd",
        "/run/docker/plugins", "/run/docker",
        "/run/tiergate/warm", "/run/tiergate",
    )
    cache_dir: str = "/var/cache/tiergate"
    existed: set[str] = field(default_factory=set)
    cache_entries: set[str] | None = None
    warm_roots: list[str] = field(default_factory=list)
    own_roots: list[str] = field(default_factory=list)  # beside warm_roots: trees whose policies are the session's

    def snapshot(self) -> None:
        self.existed = {p for p in self.files + self.dirs if os.path.lexists(p)}
        self.cache_entries = set(os.listdir(self.cache_dir)) if os.path.isdir(self.cache_dir) else None

    def restore(self) -> list[str]:
        from tiergate.engines import warm

        for root in self.warm_roots:
            warm.stop("", under=root, say=lambda _line: None)
        left = self._restore_cache()
        for f in self.files:
            if f not in self.existed and os.path.lexists(f):
                try:
                    os.unlink(f)
                except OSError:
                    left.append(f)
        for d in self.dirs:  # listed deepest first
            if d not in self.existed and os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError:
                    left.append(d)
        return left

    def _ours(self, name: str) -> bool:
        """Whether a new cache entry is this session's: not named for a policy (.lock), or for one
        under warm_roots, own_roots (the repository), /etc or /usr, or one that is gone (a test's
        temporary policy); another session's entries name policies that still exist."""
        policy = name.removeprefix("policy").replace("%2F", "/").replace("%25", "%").removesuffix(".failed")
        if not policy.startswith("/"):
            return True  # .lock, or anything not named for a policy
        policy = policy.removesuffix(".json") if policy.endswith(".json") else policy.rsplit(".", 2)[0]
        return policy.startswith(("/etc/", "/usr/")) or not os.path.exists(policy) or any(
            policy.startswith(root.rstrip("/") + "/") for root in (*self.warm_roots, *self.own_roots))

    def _restore_cache(self) -> list[str]:
        if not os.path.isdir(self.cache_dir):
            return []
        for name in set(os.listdir(self.cache_dir)) - (self.cache_entries or set()):
            if not self._ours(name):
                continue
            path = Path(self.cache_dir) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if self.cache_entries is None:
            try:
                os.rmdir(self.cache_dir)
            except OSError:
                return [self.cache_dir]
        return []


def file_tree(root: Path) -> dict[str, tuple]:
    """Every entry under root (root itself included): type, mode, owner, content or link target."""
    out: dict[str, tuple] = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in ["", *dirnames, *filenames]:
            p = Path(dirpath) / name if name else Path(dirpath)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, st.st_uid, st.st_gid, p.read_bytes())
    return out


# --------------------------------------------------------------------------
# busybox rootfs
# --------------------------------------------------------------------------

BUSYBOX = "/bin/busybox"


@dataclass(frozen=True)
class BusyboxRootfs:
    path: Path  # the tree: bin/busybox plus applet symlinks, etc/, tmp/, proc/, sys/, dev/
    tar: Path   # the same tree packed (for podman/docker import)

    def copy_to(self, dest: Path) -> Path:
        """A private writable copy of the tree (for a bundle whose root is not read-only)."""
        shutil.copytree(self.path, dest, symlinks=True)
        return Path(dest)


def busybox_rootfs(dir: Path, busybox: str = BUSYBOX) -> BusyboxRootfs:
    """Build a busybox-static rootfs in dir/rootfs and pack it as dir/rootfs.tar."""
    if not os.access(busybox, os.X_OK):
        _unavailable(f"{busybox} is missing (apt-get install busybox-static)")
    kind = run_cmd(["file", "-L", busybox], timeout=10).stdout if shutil.which("file") else ""
    if kind and "statically linked" not in kind and "static-pie" not in kind:
        raise RuntimeError(f"{busybox} is not static ({kind.strip()}): install busybox-static")
    dir = Path(dir)
    root = dir / "rootfs"
    for sub in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "run", "var/tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin/busybox")
    applets = run_cmd([busybox, "--list"], timeout=10, check=True).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if applet != "busybox" and not os.path.lexists(link):
            link.symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    tar = dir / "rootfs.tar"
    run_cmd(["tar", "--numeric-owner", "-C", root, "-cf", tar, "."], timeout=60, check=True)
    return BusyboxRootfs(path=root, tar=tar)


def _change_flags(labels: Mapping[str, str] | None, expose: Iterable[int | str],
                  cmd: Sequence[str] | None) -> list[str]:
    """--change flags for podman/docker import (LABEL, EXPOSE, CMD)."""
    flags: list[str] = []
    for key, value in (labels or {}).items():
        for text in (key, value):
            if any(c in str(text) for c in '"\\\n'):
                raise ValueError(f"label {key!r}: quotes, backslashes and newlines are not "
                                 "supported by import --change")
        flags += ["--change", f'LABEL "{key}"="{value}"']
    for port in expose:
        flags += ["--change", f"EXPOSE {port}"]
    if cmd:
        flags += ["--change", f"CMD {json.dumps(list(cmd))}"]
    return flags


# --------------------------------------------------------------------------
# podman
# --------------------------------------------------------------------------

def has_cap(name: str) -> bool:
    status = probe_status(Path("/proc/self/status").read_text())
    return name in caps_from_hex(status["CapEff"])


def needs_low_ulimits() -> bool:
    """Would podman's default rlimits fail here? (no CAP_SYS_RESOURCE and low hard limits)

    podman raises nofile to 1048576 and nproc to 4194304 for root; above the
    current hard limit that needs CAP_SYS_RESOURCE.
    """
    import resource
    if has_cap("CAP_SYS_RESOURCE"):
        return False
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    def below(limit: int, wanted: int) -> bool:
        return limit != resource.RLIM_INFINITY and limit < wanted
    return below(nofile, 1048576) or below(nproc, 4194304)


def pick_runtime() -> str:
    """runc unless told otherwise (TIERGATE_IT_RUNTIME); crun only on pure cgroup v2.

    crun 1.8 refuses hybrid cgroups ("cgroups in hybrid mode not supported").
    """
    wanted = os.environ.get("TIERGATE_IT_RUNTIME")
    if wanted:
        return wanted
    if shutil.which("runc"):
        return "runc"
    if cgroup_mode() == "unified" and shutil.which("crun"):
        return "crun"
    _unavailable("no usable OCI runtime: runc is missing"
                 + ("" if cgroup_mode() == "unified" else " and crun does not support hybrid cgroups"))
    return "runc"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_dumps(data: Mapping, _prefix: str = "") -> str:
    """A small TOML writer for containers.conf (tables of scalars and arrays)."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{json.dumps(key) if not key.replace('_', '').isalnum() else key}"
                         f" = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{_prefix}.{key}" if _prefix else key
        if not key.replace("_", "").replace("-", "").isalnum():
            name = f"{_prefix}.{json.dumps(key)}" if _prefix else json.dumps(key)
        out += f"\n[{name}]\n" + toml_dumps(value, name)
    return out


def _merge(base: dict, over: Mapping) -> dict:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


SYSTEM_CONTAINERS_CONF = ("/usr/share/containers/containers.conf",
                          "/etc/containers/containers.conf")


class Podman:
    """podman confined to ``dir``: storage, runroot, tmp dir, events log, network
    config, hooks dir, containers.conf (via CONTAINERS_CONF) and cgroup parent.

    The system containers.conf files are read and merged first, so defaults
    such as Debian's ``default_capabilities`` (CapEff 0x800405fb) stay what a
    user gets; then ours are laid over them: runtime, cgroupfs, hooks_dir,
    file events and, when needed here, low ``default_ulimits``.
    ``run``/``create`` get ``--network none`` and ``--cgroup-parent`` unless the
    caller names their own.
    """

    def __init__(self, dir: Path, *, image_tar: Path | None = None, runtime: str | None = None,
                 hooks_dir: Path | None = None, ulimits: Sequence[str] | None = None,
                 containers_conf: Mapping | None = None, timeout: float = DEFAULT_TIMEOUT):
        require_root()
        self.binary = require_binary("podman")
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.runtime = runtime or pick_runtime()
        require_binary(self.runtime, self.runtime if "/" in self.runtime else None)
        self.image_tar = Path(image_tar) if image_tar else None
        self.timeout = timeout
        self.hooks_dir = Path(hooks_dir) if hooks_dir else self.dir / "hooks"
        self.hooks_dir.mkdir(parents=True, exist_ok=True)
        self.cgroup_parent = f"/tiergate-it-{os.getpid()}-{uuid.uuid4().hex[:6]}/podman"
        if ulimits is None:
            ulimits = ("nofile=1024:1024", "nproc=4096:4096") if needs_low_ulimits() else ()
        self.ulimits = tuple(ulimits)
        d = self.dir
        self.root, self.runroot, self.tmpdir = d / "root", d / "runroot", d / "tmp"
        self.network_dir = d / "networks"
        self.runtime_root = d / "runtime-root"
        for p in (self.root, self.runroot, self.tmpdir, self.network_dir, self.runtime_root):
            p.mkdir(exist_ok=True)
        self.storage_conf = d / "storage.conf"
        self.storage_conf.write_text(toml_dumps({"storage": {
            "driver": "overlay", "graphroot": str(self.root), "runroot": str(self.runroot)}}))
        conf: dict = {}
        for path in SYSTEM_CONTAINERS_CONF:
            if os.path.exists(path):
                with open(path, "rb") as fh:
                    _merge(conf, tomllib.load(fh))
        ours: dict = {
            "containers": {},
            "engine": {
                "cgroup_manager": "cgroupfs",
                "events_logger": "file",
                "events_logfile_path": str(d / "events.log"),
                "hooks_dir": [str(self.hooks_dir)],
                "runtime": self.runtime,
                "tmp_dir": str(self.tmpdir),
                "volume_path": str(d / "volumes"),
                "static_dir": str(self.root / "libpod"),
            },
            "network": {"network_config_dir": str(self.network_dir)},
        }
        if self.ulimits:
            ours["containers"]["default_ulimits"] = list(self.ulimits)
        _merge(conf, ours)
        _merge(conf, containers_conf or {})
        self.conf_path = d / "containers.conf"
        self.conf_path.write_text(toml_dumps(conf))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(d),
            "CONTAINERS_CONF": str(self.conf_path),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "TMPDIR": str(self.tmpdir),
        }
        self.global_flags = [
            "--root", str(self.root), "--runroot", str(self.runroot),
            "--storage-driver", "overlay", "--tmpdir", str(self.tmpdir),
            "--runtime", self.runtime, "--cgroup-manager", "cgroupfs",
            "--hooks-dir", str(self.hooks_dir), "--events-backend", "file",
            "--network-config-dir", str(self.network_dir),
            # runc/crun keep container state in /run/<runtime> unless told: keep it here.
            "--runtime-flag", f"root={self.runtime_root}",
        ]

    # raw access ---------------------------------------------------------------
    def podman(self, *args: str, check: bool = False, timeout: float | None = None,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``podman <scratch flags> ARGS``; run/create get our defaults (see class doc)."""
        args_l = [os.fspath(a) for a in args]
        if args_l and args_l[0] in ("run", "create"):
            extra = []
            if not any(a == "--network" or a.startswith("--network=") or a == "--net"
                       or a.startswith("--net=") for a in args_l):
                extra += ["--network", "none"]
            if not any(a.startswith("--cgroup-parent") for a in args_l):
                extra += ["--cgroup-parent", self.cgroup_parent]
            args_l = [args_l[0], *extra, *args_l[1:]]
        return run_cmd([self.binary, *self.global_flags, *args_l], env=self.env, check=check,
                       timeout=timeout or self.timeout, input=input)

    # images -------------------------------------------------------------------
    def import_image(self, name: str, labels: Mapping[str, str] | None = None,
                     expose: Iterable[int | str] = (), cmd: Sequence[str] | None = ("/bin/sh",),
                     *, tar: Path | None = None) -> str:
        """``podman import --change 'LABEL k=v' ...`` of image_tar (or tar); returns the image id."""
        tar = tar or self.image_tar
        if tar is None:
            raise ValueError("no image tar: pass tar= or construct with image_tar=")
        proc = self.podman("import", "--quiet", *_change_flags(labels, expose, cmd), str(tar),
                           name, check=True, timeout=120)
        return proc.stdout.strip().splitlines()[-1].removeprefix("sha256:")

    def image_inspect(self, name: str) -> dict:
        out = self.podman("image", "inspect", name, check=True).stdout
        return json.loads(out)[0]

    def image_labels(self, name: str) -> dict[str, str]:
        return self.image_inspect(name).get("Labels") or {}

    def rmi(self, *names: str, force: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman("rmi", *(["--force"] if force else []), *names)

    # containers ---------------------------------------------------------------
    def run(self, image: str, *cmd: str, args: Sequence[str] = (), check: bool = False,
            rm: bool = True, timeout: float | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``podman run [--rm] --network none ARGS IMAGE CMD...`` -> CompletedProcess."""
        argv = ["run", *(["--rm"] if rm else []), *(["-i"] if input is not None else []),
                *args, image, *cmd]
        return self.podman(*argv, check=check, timeout=timeout, input=input)

    def remove_containers(self) -> None:
        self.podman("rm", "--all", "--force", "--time", "0", timeout=120)

    def clear_hooks(self) -> None:
        for entry in self.hooks_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def cleanup(self) -> None:
        """Remove containers and images, unmount storage, delete dir and our cgroups."""
        try:
            self.remove_containers()
            self.podman("rmi", "--all", "--force", timeout=120)
        finally:
            remove_tree(self.dir)
            remove_cgroup(self.cgroup_parent.rsplit("/", 1)[0])


# --------------------------------------------------------------------------
# runc bundles
# --------------------------------------------------------------------------

def runc_base_spec(runc: str = "runc") -> dict:
    """The spec ``runc spec`` writes (run in a throw-away dir)."""
    with tempfile.TemporaryDirectory(prefix="tg-spec-") as tmp:
        run_cmd([runc, "spec"], cwd=tmp, timeout=20, check=True)
        return json.loads((Path(tmp) / "config.json").read_text())


class RuncBundle:
    """An OCI bundle in ``dir`` run by ``runc --root <runc_root> run``.

    ``config`` defaults to ``runc spec``'s; ``root.path`` is set to rootfs,
    ``process.terminal`` to false (runc is not on a terminal) and
    ``process.args`` to args when given. Each run gets a fresh
    ``linux.cgroupsPath`` under ``cgroup_parent`` and is deleted afterwards.
    """

    def __init__(self, dir: Path, rootfs: Path, config: dict | None = None, *,
                 args: Sequence[str] | None = None, runc_root: Path | None = None,
                 runc: str | None = None, cgroup_parent: str | None = None,
                 timeout: float = 30.0):
        require_root()
        self.runc = runc or require_binary("runc")
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rootfs = Path(rootfs).resolve()
        self.runc_root = Path(runc_root) if runc_root else self.dir.parent / "runc-root"
        self.runc_root.mkdir(parents=True, exist_ok=True)
        self.cgroup_parent = cgroup_parent or f"/tiergate-it-{os.getpid()}/runc"
        self.timeout = timeout
        self.config = json.loads(json.dumps(config)) if config else runc_base_spec(self.runc)
        self.config.setdefault("root", {})["path"] = str(self.rootfs)
        self.config.setdefault("process", {})["terminal"] = False
        if args is not None:
            self.config["process"]["args"] = list(args)

    @property
    def config_path(self) -> Path:
        return self.dir / "config.json"

    def write(self) -> Path:
        self.config_path.write_text(json.dumps(self.config, indent=2))
        return self.config_path

    def runc_cmd(self, *args: str, timeout: float | None = None,
                 check: bool = False) -> subprocess.CompletedProcess[str]:
        return run_cmd([self.runc, "--root", str(self.runc_root), *args],
                       timeout=timeout or self.timeout, check=check)

    def run(self, id: str | None = None, *, args: Sequence[str] | None = None,
            check: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Write config.json and ``runc run --bundle DIR ID`` in the foreground; always deletes ID."""
        id = id or f"tg-{uuid.uuid4().hex[:12]}"
        if args is not None:
            self.config["process"]["args"] = list(args)
        self.config.setdefault("linux", {})["cgroupsPath"] = f"{self.cgroup_parent}/{id}"
        self.write()
        try:
            return self.runc_cmd("run", "--bundle", str(self.dir), id, timeout=timeout,
                                 check=check)
        finally:
            self.runc_cmd("delete", "--force", id, timeout=20)


# --------------------------------------------------------------------------
# docker (private containerd + dockerd)
# --------------------------------------------------------------------------

DOCKER_CLI = "/usr/bin/docker"  # /usr/local/bin/docker may be a newer CLI first on PATH


class Docker:
    """A private containerd + dockerd under ``dir`` and a /usr/bin/docker client for it.

    ``start()`` writes containerd's config (root, state, grpc address, no CRI,
    opt path) and daemon.json (deprecated-key-path), starts both with
    pidfiles, and waits (bounded) until each socket answers. ``stop()`` removes
    containers, stops dockerd then containerd by the pids we started, any shim
    left for our containerd, then deletes ``dir``. ``runtimes`` become
    ``--add-runtime NAME=PATH``. The daemon never touches iptables, bridges
    or ip_forward; containers get ``--network none`` unless told otherwise.
    """

    def __init__(self, dir: Path, *, image_tar: Path | None = None,
                 runtimes: Mapping[str, str] | None = None,
                 default_runtime: str | None = None, ulimits: Sequence[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, start_timeout: float = 30.0, config_file: bool = True):
        """config_file=False: no --config-file, so dockerd reads /etc/docker/daemon.json (the default
        install's test); that file must then name deprecated-key-path, or dockerd writes /etc/docker/key.json."""
        require_root()
        self.config_file = config_file
        self.cli = require_binary("docker", DOCKER_CLI)
        self.dockerd = require_binary("dockerd")
        self.containerd = require_binary("containerd")
        self.ctr = require_binary("ctr")
        require_binary("containerd-shim-runc-v2")
        self.dir = Path(dir)
        self.image_tar = Path(image_tar) if image_tar else None
        self.runtimes = dict(runtimes or {})
        self.default_runtime = default_runtime
        if ulimits is None:
            ulimits = ("nofile=1024:1024", "nproc=4096:4096") if needs_low_ulimits() else ()
        self.ulimits = tuple(ulimits)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.cgroup_parent = f"/tiergate-it-{os.getpid()}-{uuid.uuid4().hex[:6]}/docker"
        d = self.dir
        self.sock = d / "docker.sock"
        self.containerd_sock = d / "containerd.sock"
        self.data_root, self.exec_root = d / "data", d / "exec"
        self.containerd_root, self.containerd_state = d / "containerd/root", d / "containerd/state"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(d),
            "DOCKER_CONFIG": str(d / "cli"),
            "DOCKER_HOST": f"unix://{self.sock}",
            "TMPDIR": str(d / "tmp"),
        }
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}

    # daemons ------------------------------------------------------------------
    def start(self) -> Docker:
        d = self.dir
        for p in (d, d / "cli", d / "tmp", d / "containerd", self.data_root, self.exec_root):
            p.mkdir(parents=True, exist_ok=True)
        cfg = d / "containerd.toml"
        cfg.write_text(toml_dumps({
            "version": 2,
            "root": str(self.containerd_root),
            "state": str(self.containerd_state),
            "disabled_plugins": ["io.containerd.grpc.v1.cri"],
            "grpc": {"address": str(self.containerd_sock)},
            "ttrpc": {"address": str(d / "containerd.ttrpc.sock")},
            "plugins": {"io.containerd.internal.v1.opt": {"path": str(d / "containerd/opt")}},
        }))
        self._spawn("containerd", [self.containerd, "--config", str(cfg)])
        self._wait_ready("containerd", [self.ctr, "--address", str(self.containerd_sock),
                                        "version"])
        daemon_json = d / "daemon.json"
        daemon_json.write_text(json.dumps({"deprecated-key-path": str(d / "key.json")}))
        argv = [self.dockerd, "-H", f"unix://{self.sock}",
                "--containerd", str(self.containerd_sock),
                "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                "--pidfile", str(d / "dockerd.pid"), *(["--config-file", str(daemon_json)] if self.config_file else []),
                "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                "--ip-masq=false", "--bridge=none", "--userland-proxy=false",
                "--exec-opt", "native.cgroupdriver=cgroupfs",
                "--cgroup-parent", self.cgroup_parent]
        for limit in self.ulimits:
            argv += ["--default-ulimit", limit]
        for name, path in self.runtimes.items():
            argv += ["--add-runtime", f"{name}={path}"]
        if self.default_runtime:
            argv += ["--default-runtime", self.default_runtime]
        self._spawn("dockerd", argv)
        self._wait_ready("dockerd", [self.cli, "-H", f"unix://{self.sock}", "version",
                                     "--format", "{{.Server.Version}}"])
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=self.env, start_new_session=True)
        finally:
            log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def _wait_ready(self, name: str, probe: list[str]) -> None:
        proc = self._procs[name]

        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode} while starting:\n"
                                   + self.log_tail(name))
            try:
                return run_cmd(probe, env=self.env, timeout=5).returncode == 0
            except subprocess.TimeoutExpired:
                return False

        try:
            wait_until(ready, timeout=self.start_timeout, interval=0.1, what=f"{name} socket")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail(name)}") from None

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _our_shims(self) -> list[int]:
        return containerd_shims(self.containerd_sock)

    def stop(self) -> None:
        """Remove containers, stop dockerd and containerd by pid, delete dir and cgroups."""
        try:
            if "dockerd" in self._procs and self._procs["dockerd"].poll() is None:
                try:
                    ids = self.docker("ps", "-aq", timeout=30).stdout.split()
                    if ids:
                        self.docker("rm", "-f", *ids, timeout=120)
                except subprocess.TimeoutExpired:
                    pass
            for name in ("dockerd", "containerd"):
                proc = self._procs.get(name)
                if proc is not None and proc.poll() is None:
                    stop_pid(proc.pid, timeout=20)
                    proc.wait(timeout=5)
            for pid in self._our_shims():
                stop_pid(pid, timeout=5)
        finally:
            remove_tree(self.dir)
            remove_cgroup(self.cgroup_parent.rsplit("/", 1)[0])

    # client -------------------------------------------------------------------
    def docker(self, *args: str, check: bool = False, timeout: float | None = None,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``/usr/bin/docker -H unix://DIR/docker.sock ARGS``."""
        return run_cmd([self.cli, "-H", f"unix://{self.sock}", *map(os.fspath, args)],
                       env=self.env, check=check, timeout=timeout or self.timeout, input=input)

    def import_image(self, name: str, labels: Mapping[str, str] | None = None,
                     expose: Iterable[int | str] = (), cmd: Sequence[str] | None = ("/bin/sh",),
                     *, tar: Path | None = None) -> str:
        """``docker import --change 'LABEL k=v' ...`` of image_tar (or tar); returns the image id."""
        tar = tar or self.image_tar
        if tar is None:
            raise ValueError("no image tar: pass tar= or construct with image_tar=")
        proc = self.docker("import", *_change_flags(labels, expose, cmd), str(tar), name,
                           check=True, timeout=120)
        return proc.stdout.strip().splitlines()[-1].removeprefix("sha256:")

    def image_inspect(self, name: str) -> dict:
        return json.loads(self.docker("image", "inspect", name, check=True).stdout)[0]

    def image_labels(self, name: str) -> dict[str, str]:
        return (self.image_inspect(name).get("Config") or {}).get("Labels") or {}

    def rmi(self, *names: str, force: bool = True) -> subprocess.CompletedProcess[str]:
        return self.docker("rmi", *(["--force"] if force else []), *names)

    def run(self, image: str, *cmd: str, args: Sequence[str] = (), check: bool = False,
            rm: bool = True, timeout: float | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``docker run [--rm] --network none ARGS IMAGE CMD...`` -> CompletedProcess."""
        net = [] if any(a == "--network" or a.startswith("--network=") or a == "--net"
                        or a.startswith("--net=") for a in args) else ["--network", "none"]
        argv = ["run", *(["--rm"] if rm else []), *(["-i"] if input is not None else []),
                *net, *args, image, *cmd]
        return self.docker(*argv, check=check, timeout=timeout, input=input)

    def remove_containers(self) -> None:
        ids = self.docker("ps", "-aq", timeout=30).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, timeout=120)

    def cleanup(self) -> None:
        self.stop()
