"""What this host offers tiergate, probed for real (used by `tiergate doctor`).

Each probe returns Check(name, status, detail) with status "ok", "warn" or
"fail"; "fail" means tiergate cannot enforce its policy here. Probes never
change the host: the seccomp filter is loaded in a forked child that exits,
the nftables ruleset is only checked (`nft --check`), engines are asked only
for `--version`, all with timeouts. Paths are parameters so tests can point
them at fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass

from tiergate.host import access

OK, WARN, FAIL = "ok", "warn", "fail"
ENGINES = ("podman", "runc", "crun", "docker", "containerd")
PODMAN_DEFAULT_HOOKS_DIRS = ("/usr/share/containers/oci/hooks.d",)  # podman 4's built-in list: not /etc/...
CONTAINERS_CONFS = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf")
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
TIMEOUT = 5.0
SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}
PROBE_ERRNO = 131  # ENOTRECOVERABLE: nothing else returns it from getpgid


@dataclass
class Check:
    name: str
    status: str
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def read_text(path: str) -> str | None:
    """A small kernel file's text, or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def status_field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and k == key:
            return v.strip()
    return None


# -- seccomp -------------------------------------------------------------------

def _load_probe_filter() -> int:
    """In a forked child: load a filter making getpgid fail with PROBE_ERRNO; 0 when it took effect."""
    import errno

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(r)
            import pyseccomp

            flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
            flt.add_rule(pyseccomp.ERRNO(PROBE_ERRNO), "getpgid")
            flt.load()
            try:
                os.getpgid(0)
                code = 4  # the filter loaded but did not act
            except OSError as exc:
                code = 0 if exc.errno == PROBE_ERRNO else 5
        except ImportError:
            code = 6
        except OSError as exc:
            code = 7 if exc.errno in (errno.EINVAL, errno.EACCES, errno.EPERM) else 8
        except BaseException:  # noqa: BLE001 - the child must only exit
            code = 9
        finally:
            os._exit(code)
    os.close(w)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


_FILTER_CODES = {4: "a filter loaded but did not act", 5: "the probe syscall failed with another errno",
                 6: "pyseccomp is not importable", 7: "the kernel refused to load a filter",
                 8: "loading a filter failed", 9: "the probe crashed"}


def check_seccomp(proc_status: str = "/proc/self/status",
                  actions_avail: str = "/proc/sys/kernel/seccomp/actions_avail",
                  load=_load_probe_filter) -> Check:
    text = read_text(proc_status) or ""
    mode = status_field(text, "Seccomp")
    if mode is None:
        return Check("seccomp", FAIL, "no Seccomp field in /proc/self/status: kernel built without CONFIG_SECCOMP")
    actions = (read_text(actions_avail) or "").split()
    code = load()
    if code != 0:
        return Check("seccomp", FAIL, f"filters unusable: {_FILTER_CODES.get(code, f'probe exit {code}')}")
    detail = "a filter loaded in a child and made getpgid fail as told"
    if mode != "0":
        detail += f" (this process already runs under seccomp mode {SECCOMP_MODES.get(mode, mode)})"
    if actions:
        detail += f"; actions: {' '.join(actions)}"
        if "log" not in actions:
            return Check("seccomp", WARN, detail + "; no 'log' action (audit mode cannot log)")
    return Check("seccomp", OK, detail)


# -- nftables ------------------------------------------------------------------

PROBE_RULESET = ("table inet tiergate_doctor {\n chain probe {\n  type filter hook output priority 0; policy accept;\n"
                 "  meta l4proto tcp counter accept;\n }\n}\n")


def check_nftables(nft: str | None = None, nsenter: str | None = None, needed: bool = True) -> Check:
    from tiergate.network import apply

    nft = nft or apply.NFT
    nsenter = nsenter or apply.NSENTER
    bad = WARN if not needed else FAIL
    why = "" if needed else " (no tier in the policy has a network policy)"
    if not os.access(nft, os.X_OK):
        return Check("nftables", bad, f"{nft} not found (apt-get install nftables){why}")
    if not os.access(nsenter, os.X_OK):
        return Check("nftables", bad, f"{nsenter} not found (util-linux){why}")
    try:
        proc = subprocess.run([nft, "--check", "-f", "-"], input=PROBE_RULESET, capture_output=True, text=True,
                              timeout=TIMEOUT, env={}, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("nftables", bad, f"{nft} --check failed: {exc}{why}")
    version = _version([nft, "--version"])
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no output"])[0]
        if os.geteuid() != 0 and "ermission" in err:
            return Check("nftables", WARN, f"{version}: cannot check the kernel side without root: {err}")
        return Check("nftables", bad, f"{version}: kernel refused a test ruleset (inet, counter): {err}{why}")
    return Check("nftables", OK, f"{version}: the kernel accepts an inet table with counters (checked, not loaded)")


# -- LSMs, namespaces, cgroups ------------------------------------------------------

def check_apparmor(sys_root: str = "/sys", required: bool = False, preferred: bool = True) -> Check:
    from tiergate.host.apparmor import host_enabled

    if host_enabled(sys_root):
        return Check("apparmor", OK, "enabled: tiers load their tiergate-<tier> profiles")
    if required:
        return Check("apparmor", FAIL, "not enabled in this kernel, and a tier requires it (apparmor = \"require\")")
    if preferred:
        return Check("apparmor", WARN, "not enabled in this kernel: tiers that prefer AppArmor run without a profile")
    return Check("apparmor", OK, "not enabled in this kernel (no tier uses it)")


def check_userns(proc_root: str = "/proc") -> Check:
    text = read_text(os.path.join(proc_root, "sys/user/max_user_namespaces"))
    if text is None:
        return Check("user namespaces", WARN, "no /proc/sys/user/max_user_namespaces: kernel without CONFIG_USER_NS")
    limit = int(text.strip() or 0)
    unpriv = read_text(os.path.join(proc_root, "sys/kernel/unprivileged_userns_clone"))
    extra = ""
    if unpriv is not None:
        extra = "; unprivileged creation " + ("allowed" if unpriv.strip() == "1" else "disabled (sysctl)")
    if limit == 0:
        return Check("user namespaces", WARN, "disabled (user.max_user_namespaces = 0)" + extra)
    return Check("user namespaces", OK, f"available (user.max_user_namespaces = {limit}){extra}")


def active_lsms(sys_root: str = "/sys") -> list[str]:
    return [x for x in (read_text(os.path.join(sys_root, "kernel/security/lsm")) or "").strip().split(",") if x]


LANDLOCK_CREATE_RULESET = 444  # same number in the generic table (x86_64, aarch64, ...)
LANDLOCK_CREATE_RULESET_VERSION = 1


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (>= 1), or -errno (ENOSYS: not built, EOPNOTSUPP: disabled at boot)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                      ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(rc) if rc >= 0 else -ctypes.get_errno()


def check_landlock(sys_root: str = "/sys", abi=landlock_abi) -> Check:
    import errno

    lsms = active_lsms(sys_root)
    where = f"; LSMs: {','.join(lsms)}" if lsms else ""
    version = abi()
    if version > 0:
        return Check("landlock", OK, f"enabled, ABI version {version} (landlock_create_ruleset){where}")
    if version == -errno.EOPNOTSUPP:
        return Check("landlock", WARN, f"built in but disabled at boot (not in lsm=){where}")
    if version == -errno.ENOSYS:
        return Check("landlock", WARN, f"not in this kernel (landlock_create_ruleset: ENOSYS){where}")
    return Check("landlock", WARN, f"probe failed: {os.strerror(-version)}{where}")


def cgroup_mode(mounts_text: str) -> str:
    types = {parts[2] for parts in (line.split() for line in mounts_text.splitlines())
             if len(parts) > 2 and parts[2] in ("cgroup", "cgroup2")}
    if types == {"cgroup2"}:
        return "unified"
    if types == {"cgroup"}:
        return "legacy"
    return "hybrid" if types else "none"


ROOTLESS_NO_CGROUPS = ("rootless containers get no cgroup limits (no cgroup v2 delegation): a tier's pids_limit "
                      "becomes RLIMIT_NPROC, and a tier keeping CAP_SETUID is refused")


def check_cgroups(mounts: str = "/proc/self/mounts", delegated=None) -> Check:
    from tiergate.host.facts import cgroup_delegated

    mode = cgroup_mode(read_text(mounts) or "")
    rootless = ("; rootless: pids limits work (cgroup v2 delegated to this user)"
                if (delegated or cgroup_delegated)() else f"; {ROOTLESS_NO_CGROUPS}")
    if mode == "unified":
        return Check("cgroups", OK, "v2 (unified)" + rootless)
    if mode == "hybrid":
        return Check("cgroups", WARN, "hybrid (v1 controllers plus a v2 mount): crun refuses it, use runc "
                     "(podman --runtime runc --cgroup-manager cgroupfs)" + rootless)
    if mode == "legacy":
        return Check("cgroups", WARN, "v1 only (legacy): pids limits work, crun may not" + rootless)
    return Check("cgroups", FAIL, "no cgroup filesystem mounted: pids limits cannot be enforced")


# -- engines --------------------------------------------------------------------------

def _version(argv: list[str], timeout: float = TIMEOUT) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "no answer to --version"
    except OSError as exc:
        return f"cannot run: {exc.strerror}"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else f"--version exit {proc.returncode}"


def find_engines(names=ENGINES, which=shutil.which) -> dict[str, str]:
    return {n: p for n in names if (p := which(n))}


def check_engines(found: dict[str, str] | None = None, version=_version) -> list[Check]:
    found = find_engines() if found is None else found
    if not found:
        return [Check("engines", WARN, f"none of {', '.join(ENGINES)} found on PATH")]
    return [Check(f"engine {name}", OK, f"{version([path, '--version'])} ({path})") for name, path in found.items()]


# -- registration -----------------------------------------------------------------------

def podman_hooks_dirs(confs: tuple[str, ...] = CONTAINERS_CONFS, env=None) -> tuple[list[str], str]:
    """The hooks dirs podman reads, and where that list came from (containers.conf hooks_dir or the defaults)."""
    import tomllib

    env = os.environ if env is None else env
    files = list(confs)
    if env.get("CONTAINERS_CONF"):
        files = [env["CONTAINERS_CONF"]]  # podman reads only this one when it is set
    dirs, source = None, "podman's defaults"
    for f in files:
        try:
            with open(f, "rb") as fh:
                conf = tomllib.load(fh)
        except (OSError, ValueError):
            continue
        hd = conf.get("engine", {}).get("hooks_dir")
        if isinstance(hd, list) and hd:
            dirs, source = [str(x) for x in hd], f"hooks_dir in {f}"
    return (dirs or list(PODMAN_DEFAULT_HOOKS_DIRS)), source


def launcher_interpreter(path: str) -> tuple[str, str, str]:
    """(status, interpreter, detail) for an executable: a script's shebang interpreter must be a real binary."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError as exc:
        return FAIL, "", f"{path}: {exc.strerror}"
    if not os.access(path, os.X_OK):
        return FAIL, "", f"{path} is not executable"
    if head.startswith(b"\x7fELF"):
        from tiergate.engines.front import launcher_of

        python = launcher_of(path)  # tiergate's compiled front: the Python launcher runs every miss
        if python is None:
            return OK, path, f"{path} is a native binary"
        status, interp, detail = launcher_interpreter(python)
        return status, interp, f"{path} is the compiled front of {python}; {detail}"
    if not head.startswith(b"#!"):
        return FAIL, "", f"{path} has no #! line and is not a binary"
    line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
    interp = line.split()[0] if line else ""
    if not interp.startswith("/"):
        return FAIL, interp, f"{path}: interpreter {interp!r} is not an absolute path (hooks run with no PATH)"
    real = os.path.realpath(interp)
    try:
        with open(real, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return FAIL, interp, f"interpreter {interp}: {exc.strerror}"
    if not os.access(real, os.X_OK):
        return FAIL, interp, f"interpreter {interp} is not executable"
    if interp.rsplit("/", 1)[-1] == "env":
        return WARN, interp, f"interpreter is {interp}: it searches PATH, and precreate hooks run with none"
    if magic != b"\x7fELF":
        return WARN, interp, (f"interpreter {interp} is a script (a version manager's shim?): "
                              "slow on every start and needs an environment hooks lack")
    return OK, interp, f"interpreter {line} ({real}, a real binary)"


def _launcher_lib_ok(path: str) -> str | None:
    """For a launcher written by `tiergate install`: the package release it puts on sys.path resolves."""
    from tiergate.engines.launcher import read_script

    from tiergate.engines.front import launcher_of

    lib = read_script(read_text(launcher_of(path) or path) or "").get("path")
    if not lib:
        return None
    for name in ("hook", "shim", "configs"):
        if not os.path.isdir(os.path.join(lib, "tiergate", name)):
            return f"{lib}/tiergate/{name} is missing or dangling (run tiergate install again)"
    return None


def check_podman_registration(dirs: list[str], source: str) -> Check:
    found, has_precreate = [], False
    for d in dirs:
        try:
            entries = sorted(os.listdir(d))
        except OSError:
            continue
        for name in entries:
            if not name.endswith(".json"):
                continue
            p = os.path.join(d, name)
            try:
                doc = json.loads(open(p, encoding="utf-8").read())
            except (OSError, ValueError):
                continue
            hook = doc.get("hook") if isinstance(doc, dict) else None
            if not isinstance(hook, dict):
                continue
            args = hook.get("args") or []
            exe = str(hook.get("path", ""))
            if "tiergate" not in exe and not any("tiergate" in str(a) for a in args):
                continue
            stages = doc.get("stages") or []
            status, _, detail = launcher_interpreter(exe)
            if not os.path.lexists(exe):
                detail = f"{exe} is MISSING: podman runs every container with no tiergate hook at all"
            lib = _launcher_lib_ok(exe) if status != FAIL else None
            if lib:
                status, detail = FAIL, lib
            for uid, who in (access.hook_users(d).items() if status != FAIL else ()):
                cannot = access.launcher_problem(exe, uid)
                if cannot:
                    status, detail = FAIL, f"{who} cannot run it: {cannot}"
                    break
            found.append((status, f"{p} ({','.join(map(str, stages))}) -> {exe}; {detail}"))
            has_precreate = has_precreate or "precreate" in stages
    if not found:
        return Check("podman hook", WARN, f"not registered in {', '.join(dirs)} ({source}); run: tiergate install --engine podman")
    worst = FAIL if any(s == FAIL for s, _ in found) else WARN if any(s == WARN for s, _ in found) else OK
    if not has_precreate and worst == OK:
        worst = WARN  # a prestart verifier alone refuses weak containers but hardens none
    return Check("podman hook", worst, " | ".join(d for _, d in found))


def podman_engine_account(podman: str = "podman", timeout: float = 30.0) -> tuple[dict | None, list[str], str]:
    """Podman's own account: `podman info` (its default runtime) and the containers.conf files it merged."""
    try:
        proc = subprocess.run([podman, "--log-level=debug", "info", "--format", "json"], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, [], "podman info did not answer"
    except OSError as exc:
        return None, [], f"cannot run {podman}: {exc.strerror}"
    import re

    confs = re.findall(r'msg="Merged system config \\"([^"\\]+)\\""', proc.stderr)
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        last = [line for line in proc.stderr.splitlines() if "level=debug" not in line]
        return None, confs, f"podman info failed: {(last or ['exit ' + str(proc.returncode)])[-1].strip()}"
    return info if isinstance(info, dict) else None, confs, ""


def check_podman_engine(account=None, stray_dirs: tuple[str, ...] | None = None) -> Check:
    """From podman's side: is tiergate its default runtime, and is our hook in a dir it reads?

    fail when a tiergate hook sits only where podman does not read (the install does nothing),
    or when what podman would run is broken; warn when only part is there (exec open).
    """
    from tiergate.engines import podman as engine
    from tiergate.shim.runtime import is_shim_file

    info, confs, problem = account or podman_engine_account()
    if info is None:
        return Check("podman engine", WARN, problem or "podman info gave nothing")
    runtime = (info.get("host") or {}).get("ociRuntime") or {}
    rt_path = str(runtime.get("path") or "")
    ours_rt = bool(rt_path) and is_shim_file(rt_path)
    dirs, source = engine.hooks_dirs_read(confs)
    read = []
    for d in dirs:
        for name in engine.HOOK_FILES.values():
            if os.path.exists(os.path.join(d, name)):
                read.append(os.path.join(d, name))
    if stray_dirs is None:
        stray_dirs = (*engine.PODMAN_BUILTIN_HOOKS_DIRS, *engine.OTHER_HOOKS_DIRS)
    stray = [os.path.join(d, n) for d in stray_dirs if d not in dirs for n in engine.HOOK_FILES.values() if os.path.exists(os.path.join(d, n))]
    where = f"podman reads hooks from {', '.join(dirs)} ({source}); default runtime {runtime.get('name')} ({rt_path})"
    broken = []
    for p in read:
        reg = check_podman_registration([os.path.dirname(p)], source)
        if reg.status == FAIL:
            broken.append(reg.detail)
    if ours_rt:
        st, _, detail = launcher_interpreter(rt_path)
        if st == FAIL:
            broken.append(f"runtime: {detail}")
    if broken:
        return Check("podman engine", FAIL, f"{where}: {'; '.join(broken)}")
    if not read and not ours_rt:
        if stray:
            return Check("podman engine", FAIL, f"{where}: {', '.join(stray)} is NOT read by podman: containers "
                         "start unhardened (run tiergate install --engine podman again)")
        return Check("podman engine", WARN, f"{where}: tiergate is not registered")
    if not ours_rt:
        return Check("podman engine", WARN, f"{where}: hook {', '.join(read)} hardens starts, but podman exec is "
                     "not hardened and a missing hook program is skipped (fails open)")
    if not read:
        return Check("podman engine", WARN, f"{where}: no tiergate hook: `podman --runtime runc` bypasses tiergate")
    return Check("podman engine", OK, f"{where}: hook {', '.join(read)} and runtime tiergate (exec hardened)")


def check_docker_registration(daemon_json: str = DOCKER_DAEMON_JSON) -> Check:
    text = read_text(daemon_json)
    if text is None:
        return Check("docker runtime", WARN, f"no {daemon_json}: tiergate-runtime is not registered with dockerd")
    try:
        conf = json.loads(text)
    except ValueError as exc:
        return Check("docker runtime", FAIL, f"{daemon_json} does not parse: {exc}")
    runtimes = conf.get("runtimes") or {}
    ours = {n: r.get("path", "") for n, r in runtimes.items() if isinstance(r, dict) and "tiergate" in (n + str(r.get("path", "")))}
    if not ours:
        return Check("docker runtime", WARN, f"no tiergate runtime in {daemon_json} \"runtimes\"")
    default = conf.get("default-runtime", "runc")
    parts = []
    status = OK
    for n, path in ours.items():
        st, _, detail = launcher_interpreter(str(path))
        if not os.path.lexists(str(path)):
            detail = f"{path} is MISSING: dockerd cannot start containers with runtime {n}"
        if st == FAIL:
            status = FAIL
        elif st == WARN and status == OK:
            status = WARN
        parts.append(f"{n} -> {path}: {detail}")
    from tiergate.engines.docker import BYPASS

    note = f"; {BYPASS}" if default in ours else f"; default-runtime is {default}: only --runtime {next(iter(ours))} is hardened"
    if status == OK and default not in ours:
        status = WARN
    return Check("docker runtime", status, ", ".join(parts) + note)


# -- policy ---------------------------------------------------------------------------------

def check_policy(explicit: str | None = None) -> tuple[Check, dict | None]:
    from tiergate.core.errors import TiergateError
    from tiergate.policy.cache import policy_path
    from tiergate.policy.compile import compile_file

    path = policy_path(explicit)
    try:
        compiled = compile_file(path)
    except (TiergateError, OSError, ValueError) as exc:
        return Check("policy", FAIL, f"{path}: {exc}"), None
    return Check("policy", OK, f"{path}: {len(compiled['tiers'])} tiers ({', '.join(compiled['tiers'])}), "
                 f"digest {compiled['digest'][:16]}"), compiled


def check_audit_network_log(tiers: list[str], path: str = "/proc/sys/net/netfilter/nf_log_all_netns") -> Check:
    """Audit tiers with a network policy: can the drops they would make be logged from container namespaces?"""
    value = (read_text(path) or "").strip()
    if value == "1":
        return Check("audit network log", OK, f"{path} = 1: would-be drops of {', '.join(tiers)} reach the kernel log")
    return Check("audit network log", WARN, f"{path} = {value or 'absent'}: the kernel logs nothing from container "
                 f"namespaces, so audit tiers {', '.join(tiers)} count would-be drops per rule (tiergate status) "
                 "without logging them; tiergate never changes this host-wide setting")


# -- what the registered hooks and shims actually use ---------------------------------------

_SETTINGS = {"--policy": "policy", "--cache-dir": "cache_dir", "--log": "log"}


def hook_settings(args: list) -> dict:
    """{policy, cache_dir, log} from a registered hook's argv (--key value or --key=value)."""
    out, it = {}, iter(str(a) for a in args)
    for arg in it:
        key, eq, value = arg.partition("=")
        if key in _SETTINGS:
            out[_SETTINGS[key]] = value if eq else next(it, "")
    return out


CONTAINERD_CONFIGS = ("/etc/containerd/config.toml",)
CONTAINERS_CONF_DIRS = ("/usr/share/containers/containers.conf.d", "/etc/containers/containers.conf.d")


def containers_confs() -> list[str]:
    """containers.conf files podman merges: $CONTAINERS_CONF alone, else the main files and their drop-ins."""
    if os.environ.get("CONTAINERS_CONF"):
        return [os.environ["CONTAINERS_CONF"]]
    out = list(CONTAINERS_CONFS)
    for d in CONTAINERS_CONF_DIRS:
        try:
            out += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".conf")]
        except OSError:
            continue
    return out


def shim_settings(front: str) -> dict | None:
    """What a registered tiergate-runtime really runs: its Python launcher (the compiled front's, or
    the one the /bin/sh front execs) and the settings file that launcher passes to main(); None for a
    program that is not a tiergate shim."""
    import re
    import shlex

    from tiergate.engines.front import launcher_of
    from tiergate.engines.launcher import read_script
    from tiergate.shim.runtime import is_shim_file, read_conf

    if not is_shim_file(str(front)):
        return None
    if launcher_of(front):  # the shim is the compiled front (engines/front.c with TG_REAL)
        start = [front]
    else:  # the /bin/sh front: `python -IS launcher`, or an earlier install's lib/tiergate-runtime
        m = re.search(r"^case \$real in /\*\) ;; \*\) exec (.+?) \"\$@\"", read_text(front) or "", re.M)
        start = shlex.split(m.group(1)) if m else []
    compiled = start[0] if len(start) == 1 else ""
    launcher = launcher_of(compiled) or "" if compiled else start[2] if len(start) == 3 and start[1] == "-IS" else ""
    conf = read_script(read_text(launcher) or "").get("args", {}).get("conf", "") if launcher else ""
    conf = conf if isinstance(conf, str) else ""
    settings = {k: v for k, v in read_conf(conf).items() if k in ("policy", "cache_dir", "log")} if conf else {}
    return {**settings, "launcher": front, "launchers": list(dict.fromkeys([front, *([compiled] if compiled else []),
                                                                            launcher])),
            "conf": conf, "warm": compiled or launcher}


def _toml_file(path: str) -> dict:
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, ValueError):
        return {}


def registrations(hooks_dirs: list[str], daemon_json: str = DOCKER_DAEMON_JSON,
                  containerd_configs=CONTAINERD_CONFIGS, podman_confs=None) -> list[tuple[str, dict]]:
    """(where, settings) for every tiergate hook in hooks_dirs and every tiergate-runtime registered with
    docker (daemon.json runtimes), containerd (CRI runtimes' BinaryName) and podman ([engine.runtimes])."""
    from tiergate.engines.containerd import CRI_PLUGIN

    found = []
    for d in hooks_dirs:
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
        except OSError:
            continue
        for name in names:
            try:
                doc = json.loads(open(os.path.join(d, name), encoding="utf-8").read())
            except (OSError, ValueError):
                continue
            hook = doc.get("hook") if isinstance(doc, dict) else None
            if isinstance(hook, dict) and "tiergate" in json.dumps(hook):
                found.append((os.path.join(d, name), {**hook_settings(hook.get("args") or []),
                                                      "launcher": str(hook.get("path", ""))}))
    shims: list[tuple[str, str]] = []
    try:
        runtimes = json.loads(open(daemon_json, encoding="utf-8").read()).get("runtimes") or {}
    except (OSError, ValueError, AttributeError):
        runtimes = {}
    for name, rt in runtimes.items() if isinstance(runtimes, dict) else ():
        shims.append((f"{daemon_json} runtime {name}", str(rt.get("path", "")) if isinstance(rt, dict) else ""))
    for config in containerd_configs:
        doc = _toml_file(config)
        version = doc.get("version")
        cri = (doc.get("plugins") or {}).get(CRI_PLUGIN.get(version, "") if isinstance(version, int) else "", {})
        for name, rt in ((cri.get("containerd") or {}).get("runtimes") or {}).items():
            binary = (rt.get("options") or {}).get("BinaryName", "") if isinstance(rt, dict) else ""
            shims.append((f"{config} runtime {name}", str(binary)))
    for conf in containers_confs() if podman_confs is None else podman_confs:
        for name, paths in ((_toml_file(conf).get("engine") or {}).get("runtimes") or {}).items():
            for path in paths if isinstance(paths, list) else ():
                shims.append((f"{conf} runtime {name}", str(path)))
    for where, path in shims:
        settings = shim_settings(path) if path else None
        if settings is not None:
            found.append((where, settings))
        elif "tiergate" in where.rsplit(" ", 1)[-1] + path:  # named ours, but not a shim tiergate wrote
            found.append((where, {"launcher": path, "launchers": [path]}))
    return found


def check_launchers(where: str, launchers: list[str]) -> Check:
    """Each program a registered shim runs on the way to tiergate exists and starts without PATH or venv."""
    problems: list[str] = []
    notes: list[str] = []
    for path in launchers:
        if not path or not os.path.lexists(path):
            problems.append(f"{path or 'its Python launcher'} is MISSING")
            continue
        status, _, detail = launcher_interpreter(path)
        lib = _launcher_lib_ok(path) if status != FAIL else None
        (problems if status == FAIL or lib else notes).append(lib or detail)
    if problems:
        return Check("launcher", FAIL, f"{where}: {'; '.join(problems)}: the engine cannot start containers with it")
    return Check("launcher", OK, f"{where}: {'; '.join(notes)}")


def check_release(launcher: str) -> Check | None:
    """The release a launcher `tiergate install` wrote runs, against the installed package (an upgrade
    waits for the next install, which switches atomically)."""
    from tiergate.engines.launcher import CURRENT, release_digest, package_dirs

    current = os.path.join(os.path.dirname(launcher), "lib", CURRENT)
    if not os.path.islink(current):
        return None
    running, installed = os.path.basename(os.path.realpath(current)), release_digest(package_dirs())
    if running == installed:
        return Check("hook release", OK, f"{launcher} runs release {running}, the installed package")
    return Check("hook release", WARN, f"{launcher} runs release {running}; the installed package is {installed}: "
                 "run tiergate install again to switch (atomically)")


def check_used_state(where: str, settings: dict) -> list[Check]:
    """The policy, compiled cache and log one registration uses, as its hook would find them."""
    from tiergate.telemetry import record
    from tiergate.core.errors import PolicyError
    from tiergate.policy import cache
    from tiergate.policy.compile import compile_file

    cache_dir = cache.cache_dir_for(settings.get("cache_dir"))
    path = cache.policy_path(settings.get("policy"), cache_dir)
    checks = []
    try:
        cache.check_cache_dir(cache_dir)
        entry = cache.entry_path(cache_dir, path)
        last_good = cache.read_entry(entry)
        checks.append(Check("policy cache", OK, f"{where}: {cache_dir}" + (
            f" (compiled {last_good['digest'][:16]})" if last_good else " (nothing compiled yet)")))
    except PolicyError as exc:
        last_good = None
        checks.append(Check("policy cache", FAIL, f"{where}: {exc}: every start is refused"))
    try:
        cache.policy_inputs(path)  # exists, and it and what it reads are safely owned
    except PolicyError as exc:
        return [*checks, Check("policy in use", FAIL, f"{where}: {exc}; every start is refused")]
    try:
        compiled = compile_file(path)
        checks.append(Check("policy in use", OK, f"{where}: {path}: digest {compiled['digest'][:16]}"))
    except PolicyError as exc:
        if last_good and last_good.get("file") == os.path.realpath(path):
            fallback = f"starts run on the last good policy {last_good['digest'][:16]} and log an error each time"
        else:
            fallback = "every start is refused (no last good policy compiled from it)"
        checks.append(Check("policy in use", FAIL, f"{where}: {exc}; {fallback}"))
    log = record.log_path(settings.get("log"))
    if log == record.JOURNAL:
        ok = os.path.exists(os.environ.get("TIERGATE_JOURNAL_SOCKET", record.JOURNAL_SOCKET))
        checks.append(Check("decision log", OK if ok else FAIL, f"{where}: journal" + (
            "" if ok else f": no journald socket; records fall back to {record.file_log()}")))
    else:
        d = os.path.dirname(log)
        ok = os.access(d, os.W_OK) if os.path.isdir(d) else os.access(os.path.dirname(d) or "/", os.W_OK)
        checks.append(Check("decision log", OK if ok else FAIL, f"{where}: {log}" + ("" if ok else ": not writable")))
    return checks


def check_warm(launcher: str) -> Check:
    """Which program the hook is (a compiled front, engines/front.c, or the Python launcher) and
    whether its warm helper (engines/warm.py) runs: information, never a failure."""
    from tiergate.engines import front, warm

    python = front.launcher_of(launcher)
    try:
        key = warm.key_in(open(python or launcher, encoding="utf-8", errors="replace").read())
    except OSError:
        key = None
    if python is None or key is None:
        return Check("warm helper", OK, f"{launcher}: the Python launcher, no warm helper (installed with --no-warm, "
                     "without a C compiler, rootless, or older): every start runs in its own process")
    what = f"{launcher}: compiled front of {python}"
    running = [(path[:-4], pid) for path, pid, _ in warm.helpers(key + "-") if pid]
    if running:
        return Check("warm helper", OK, f"{what}; " + "; ".join(f"helper running, pid {pid}, socket {sock}"
                                                             for sock, pid in running)
                     + f" (exits after {warm.IDLE_EXIT:.0f} s without a start)")
    return Check("warm helper", OK, f"{what}; helper not running (the next start runs in the Python launcher's "
                 f"process and starts it under {warm.SOCKET_DIR}; it exits after {warm.IDLE_EXIT:.0f} s without a start)")


def gather(policy: str | None = None, hooks_dirs: list[str] | None = None,
           containerd_configs=CONTAINERD_CONFIGS, podman_confs=None) -> list[Check]:
    """Every check, in table order."""
    pol, compiled = check_policy(policy)
    tiers = (compiled or {}).get("tiers", {}).values()
    needs_net = any(t.get("network") for t in tiers) if compiled else True
    apparmor_modes = {t.get("apparmor") for t in tiers}
    checks = [check_seccomp(), check_nftables(needed=needs_net),
              check_apparmor(required="require" in apparmor_modes, preferred="prefer" in apparmor_modes or not compiled),
              check_userns(), check_landlock(), check_cgroups()]
    engines = find_engines()
    checks += check_engines(engines)
    if hooks_dirs:
        checks.append(check_podman_registration(hooks_dirs, "--hooks-dir"))
    elif "podman" in engines:
        checks.append(check_podman_engine(podman_engine_account(engines["podman"])))
    if "docker" in engines or os.path.exists("/usr/bin/dockerd"):
        checks.append(check_docker_registration())
    checks.append(pol)
    audited = [n for n, t in ((compiled or {}).get("tiers") or {}).items() if t.get("audit") and t.get("network")]
    if audited:
        checks.append(check_audit_network_log(audited))
    seen = set()
    for where, settings in registrations(hooks_dirs or podman_hooks_dirs()[0], containerd_configs=containerd_configs,
                                         podman_confs=podman_confs):
        launcher = settings.pop("launcher", "")
        launchers = settings.pop("launchers", None)
        program = settings.pop("warm", launcher)  # a shim's: its compiled front or Python launcher (not a sh front)
        settings.pop("conf", None)
        if launchers and tuple(launchers) not in seen:  # a shim: hooks.d launchers have their own check
            seen.add(tuple(launchers))
            checks.append(check_launchers(where, launchers))
        if launcher and launcher not in seen:
            seen.add(launcher)
            release = check_release(launcher)
            checks += [release] if release else []
        if program and ("warm", program) not in seen:
            seen.add(("warm", program))
            checks.append(check_warm(program))
        key = tuple(sorted(settings.items()))
        if key not in seen:
            seen.add(key)
            checks += check_used_state(where, settings)
    return checks
