"""tiergate-runtime: an OCI runtime shim that engines call as if it were runc.

    ENGINE -> tiergate-runtime [global flags] SUBCOMMAND ... -> exec real runtime, same argv

- create, run (and restore): find the bundle (--bundle/-b, else the working
  directory), resolve the image (docker's config.v2.json, CRI annotations,
  containers-storage, a spec annotation; else the policy's on_unknown_image),
  harden config.json in place (atomic, same owner and mode), record the
  decision, then exec the real runtime with the ORIGINAL argv.
- exec: engines build the exec'd process from their own defaults, so the
  --process file is hardened to the container's tier (read from the
  container's state), --cap flags beyond the tier are stripped, and what the
  tier forbids (exec --privileged) is clamped or refused.
- update (docker update, podman update): the container's tier holds its pids
  limit (a --resources document, file or stdin, and --pids-limit): refused or
  clamped as the tier says.
- every other subcommand execs the real runtime at once: this module imports
  only os, sys and tiergate.oci.args before that.

A refusal exits 1 after writing the reason to stderr and, as an error-level
line, to the runtime's --log file (JSON with --log-format json): that line is
all docker and containerd show their user ("OCI runtime create failed: ...").

The installed `tiergate-runtime` is a front (compiled, engines/front.c; or /bin/sh without a C
compiler) that does the pass-through itself and starts Python only for the subcommands in
core.names.SHIM_ENFORCED (tiergate/engines/shim.py); this module is what it starts, and it accepts
any subcommand on its own too.
"""

from __future__ import annotations

import os
import sys

from tiergate.core import names
from tiergate.oci import args as runc_args

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

MARKER = "# written by tiergate install"  # as tiergate/engines/launcher.py (not imported: hot path)
LOOP_ENV = "TIERGATE_SHIM_ACTIVE"
RUNTIME_ENV = "TIERGATE_RUNTIME"  # the real runtime, over the installed one (the fronts read it too)
FRONT_OF = b": compiled front of "  # engines/front.c's marker: MARKER, this, its Python launcher, NUL
FRONT_MAX = 256 << 10  # front.c builds to ~20 KiB (tests/hook/test_runtime_shim.py holds it under this)
CONF_ENV = "TIERGATE_RUNTIME_CONF"
_CONF_KEYS = ("runtime", "shim", "hook", "policy", "cache_dir", "log", "containerd_root")
# The engine's own records; cri and annotation read spec annotations, which a caller can set
# (podman --annotation), so they are consulted only when no engine record recognises the bundle.
ENGINE_RECORDS = ("docker", "storage")


class LoopError(Exception):
    pass


# ---------------------------------------------------------------------------
# configuration and the real runtime (pass-through path: no policy imports)
# ---------------------------------------------------------------------------

def read_conf(path: str | None) -> dict:
    """`key=value` lines written at install (no JSON: the pass-through path stays import-free)."""
    conf: dict = {}
    path = path or os.environ.get(CONF_ENV)
    if not path:
        return conf
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                key, eq, value = line.strip().partition("=")
                if eq and key in _CONF_KEYS and value:
                    conf[key] = value
    except OSError:
        pass
    return conf


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def embedded_launcher(data: bytes) -> str | None:
    """The Python launcher named by a compiled front's marker (MARKER, FRONT_OF, an absolute path,
    NUL) in an ELF's bytes, or None: how install, doctor and the start all read a front."""
    at = data.find(MARKER.encode() + FRONT_OF) if data.startswith(b"\x7fELF") else -1
    start = at + len(MARKER) + len(FRONT_OF)
    end = data.find(b"\0", start) if at >= 0 else -1
    return os.fsdecode(data[start:end]) if end > start and data[start:start + 1] == b"/" else None


def is_shim_file(path: str) -> bool:
    """Is `path` a tiergate-runtime front: the /bin/sh one (#!, the marker and its name in its first
    512 bytes) or a compiled one (an ELF of at most FRONT_MAX bytes whose marker names a
    tiergate-runtime.py)? A real runtime is not read past its head: crun is ~480 KiB, runc ~8 MiB."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
            if head.startswith(b"\x7fELF") and os.fstat(fh.fileno()).st_size <= FRONT_MAX:
                return (embedded_launcher(head + fh.read()) or "").endswith("/tiergate-runtime.py")
    except OSError:
        return False
    return head.startswith(b"#!") and MARKER.encode() in head and b"tiergate-runtime" in head


def _is_shim(path: str, own: set) -> bool:
    """Is `path` this shim (the same file as one in `own`, links followed) or another
    tiergate-runtime front? Exec'ing it would loop."""
    return _identity(path) in own or is_shim_file(path)


_FOUND: dict = {}  # find_runtime's answers in this process (an exec asks twice: its state, its exec)


def find_runtime(conf: dict) -> str:
    """The real runtime: $TIERGATE_RUNTIME, else the installed choice, else runc, on PATH skipping the shim."""
    name = os.environ.get(RUNTIME_ENV) or conf.get("runtime") or "runc"
    key = (name, os.environ.get("PATH"), sys.argv[0], conf.get("shim"))
    if key not in _FOUND:
        found = search_runtime(name, (sys.argv[0], conf.get("shim")))
        if found is None:
            raise LoopError(f"no real runtime {name!r} on PATH (other than tiergate-runtime itself)")
        _FOUND[key] = found
    return _FOUND[key]


def search_runtime(name: str, not_these: tuple = ()) -> str | None:
    """The one search for a real runtime, at install (engines/shim.real_runtime) and at every start:
    `name` itself when it holds a "/", else the first executable `name` on PATH that is neither a
    tiergate-runtime front nor one of `not_these` (the same file, links followed); None when PATH
    has none. LoopError when the path named is a front or one of `not_these`: it would loop."""
    own = {_identity(p) for p in not_these if p} - {None}
    if "/" in name:
        if _is_shim(name, own):
            raise LoopError(f"the real runtime {name} is tiergate-runtime itself")
        return name
    for d in os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK) and not _is_shim(cand, own):
            return cand
    return None


def _warm():
    """engines/warm.py when this runs in its helper's child: the launcher (the process the engine
    started) then runs the real runtime, which must be its child (containerd-shim and conmon are
    subreapers that wait for it); None in the launcher's own process."""
    warm = sys.modules.get("tiergate.engines.warm")
    return warm if warm is not None and warm.handing() else None


def exec_runtime(argv: list[str], conf: dict) -> int:
    """Replace this process with the real runtime, argv unchanged. Returns only on failure."""
    try:
        if os.environ.get(LOOP_ENV):
            raise LoopError("tiergate-runtime was started by itself through the real runtime")
        path = find_runtime(conf)
        os.environ[LOOP_ENV] = "1"
        warm = _warm()
        if warm is not None:
            if not os.access(path, os.X_OK):  # as execv would say: the launcher's exec must not fail
                import errno

                code = errno.ENOENT if not os.path.exists(path) else errno.EACCES
                raise OSError(code, os.strerror(code))
            warm.hand_over(path, [path, *argv], dict(os.environb))
        os.execv(path, [path, *argv])
    except LoopError as exc:
        _fail(argv, f"tiergate: error: {exc} (a loop); set TIERGATE_RUNTIME or reinstall")
    except OSError as exc:
        _fail(argv, f"tiergate: error: cannot run the real runtime: {exc.strerror}")
    return 1


# ---------------------------------------------------------------------------
# reporting a refusal where the engine's user sees it
# ---------------------------------------------------------------------------

def _now() -> str:
    import time

    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1e6) % 1000000:06d}Z"


def _fail(argv: list[str], line: str) -> None:
    """One error line in the runtime's --log file (what containerd and docker show), then on stderr
    if it can be written (containerd gives a pod's sandbox a read-only one)."""
    try:
        parsed = runc_args.parse(argv)
    except runc_args.ArgsError:
        parsed = None
    if parsed is not None and parsed.log:
        write_log(parsed.log, parsed.log_format, line)
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def write_log(path: str, fmt: str, msg: str) -> None:
    """Append an error-level record in runc's format (logrus json or text); never follows a symlink."""
    from tiergate.oci.jsonio import dumps

    if fmt == "json":
        line = dumps({"level": "error", "msg": msg, "time": _now()}, ascii=True).decode() + "\n"
    else:
        line = f'time="{_now()}" level=error msg={dumps(msg, ascii=True).decode()}\n'
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# enforcement (create, run, restore, exec)
# ---------------------------------------------------------------------------

def hook_for(conf: dict, extra: list[str]) -> dict:
    """The createRuntime hook that applies a tier's network policy: the tiergate-hook launcher beside the shim."""
    candidates = [conf.get("hook")]
    for base in (conf.get("shim"), sys.argv[0]):
        if base:
            candidates.append(os.path.join(os.path.dirname(os.path.abspath(base)), "tiergate-hook"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return {"path": path, "args": ["tiergate-hook", "createRuntime", *extra]}
    exe = sys.executable
    return {"path": exe, "args": [exe, "-I", "-m", "tiergate.hook.stages", "createRuntime", *extra]}


def _hook_args(conf: dict) -> list[str]:
    out = []
    for key in ("policy", "cache_dir", "log"):
        if conf.get(key):
            out += ["--" + key.replace("_", "-"), conf[key]]
    return out


def resolve_image(spec: dict, container_id: str | None, policy: dict, bundle_dir: str | None = None,
                  conf: dict | None = None):
    """(Image, engine) from the first label source, in the order the policy's `label_sources` sets,
    that recognises this bundle; none: an unknown image (the policy's on_unknown_image decides).
    A source is imported only when sources.claims says the bundle may be its (each costs ~0.4 M
    instructions to import; its own lookup starts with the same test)."""
    from tiergate.core.decide import Image
    from tiergate.sources import claims

    def docker():
        if claims.docker_dir(spec) is None:
            return None
        from tiergate.sources import docker as src

        return src.image_for_spec(spec, container_id)

    def cri():
        if claims.cri_kind(spec, bundle_dir) is None:
            return None
        from tiergate.sources import cri as src

        return src.image_for_spec(spec, bundle_dir, (conf or {}).get("containerd_root"))

    def storage():
        if claims.spec_storage_root(spec) is None:
            return None
        from tiergate.sources import storage as src

        return src.image_for_rootfs(spec["root"]["path"])

    def annotation():
        # A bare bundle (runc, ctr --rootfs): no image, no reference; the annotation
        # asks for a tier within the default ceiling.
        annotations = spec["annotations"] if isinstance(spec.get("annotations"), dict) else {}
        return Image(refs=[], id="", labels={}) if isinstance(annotations.get(policy["label_key"]), str) else None

    sources = {"docker": (docker, "docker"), "cri": (cri, "containerd"),
               "storage": (storage, "podman-runtime"), "annotation": (annotation, "runc")}
    order = policy.get("label_sources") or names.LABEL_SOURCES
    order = [s for s in order if s in ENGINE_RECORDS] + [s for s in order if s not in ENGINE_RECORDS]
    for name in order:
        find, engine = sources[name]
        image = find()
        if image is not None:
            return image, engine
    return Image.unknown(f"no image source recognised this bundle (tried {', '.join(order)})"), "runc"


def _engine(bundle_dir: str, found: str) -> str:
    """The engine behind a bundle: its image source, or where containerd and podman keep bundles."""
    if found == "runc" and "/overlay-containers/" in bundle_dir:
        return "podman-runtime"
    if found == "runc" and "/io.containerd.runtime.v2.task/" in bundle_dir:
        return "docker" if "/io.containerd.runtime.v2.task/moby/" in bundle_dir else "containerd"
    return found


def enforce_create(parsed: runc_args.RuncArgs, conf: dict, rec: dict) -> tuple[dict, Mapping[str, Any]] | None:
    """Harden the bundle; (spec, tier) when the caller must program the namespace after `create`."""
    from tiergate.oci import bundle

    from tiergate.core import pipeline
    from tiergate.host.edge import host_edge
    from tiergate.policy import cache

    bundle_dir = os.path.abspath(parsed.bundle or os.getcwd())
    rec.update(container=parsed.container_id or "", bundle=bundle_dir)
    spec = bundle.read_config(bundle_dir)
    policy = cache.load_noted(conf.get("policy"), conf.get("cache_dir"), rec)
    image, found = resolve_image(spec, parsed.container_id, policy, bundle_dir, conf)
    engine = rec["engine"] = _engine(bundle_dir, found)
    if engine == "docker":
        from tiergate.sources.docker import container_name

        rec["name"] = container_name(spec)
    rec.update(image=image.refs[0] if image.refs else "", image_id=image.id[:12],
               label=image.labels.get(policy["label_key"]))
    empty = _empty_netns(spec, engine)
    # create: this shim programs the namespace itself once the runtime has made it (create_and_program);
    # run and restore start the workload at once, so a createRuntime hook does it there.
    edge = host_edge(engine, conf.get("cache_dir"), conf.get("log"),
                     hook_for(conf, [*_hook_args(conf), "--engine", engine]), empty or parsed.command == "create")
    done = pipeline.run(spec, policy, image, edge, rec.update)
    hardened, tier = done.spec, done.tier
    if hardened != spec:
        bundle.write_config(bundle_dir, hardened)
    if empty and tier["network"] is not None:
        rec["network"] = f"{tier['network']['name']}: fresh namespace, loopback only, nothing to filter"
    if parsed.command == "create" and not empty and pipeline.needs_netns(tier):
        return hardened, tier
    return None


def _start(path: str, argv: list[str]) -> Callable[[], int]:
    """Start the real runtime as a child (same fds, environment marked against loops); a function
    that waits for it and returns its exit code."""
    env = dict(os.environ)
    env[LOOP_ENV] = "1"
    warm = _warm()
    if warm is not None:
        return warm.run_over(path, [path, *argv], env)
    pid = os.posix_spawn(path, [path, *argv], env)

    def wait() -> int:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    return wait


def _init_pid(parsed: runc_args.RuncArgs, runtime: str) -> int:
    """The container's init pid: the --pid-file the engine asked for, else runc's state.json."""
    from tiergate.oci import bundle

    path = parsed.value("pid-file")
    if path:
        with open(path, "rb") as fh:
            text = fh.read(64).strip()
        if not text.isdigit():
            raise ValueError(f"pid file {path} holds no pid")
        return int(text)
    root = parsed.root or _default_root(runtime)
    state = bundle.read_json_file(os.path.join(root, parsed.container_id or "", "state.json"), "runc state")
    pid = state.get("init_process_pid")
    if not isinstance(pid, int) or pid <= 1:
        raise ValueError("the runtime's state names no init pid")
    return pid


def create_and_program(argv: list[str], parsed: runc_args.RuncArgs, conf: dict, plan: tuple[dict, Mapping[str, Any]],
                       rec: dict) -> int:
    """`runtime create`, then program the new container's namespace before anything runs in it.

    Between create and start the container's init waits in runc's exec fifo: no
    workload code has run, so rules loaded now hold from its first instruction.
    A namespace the spec names is programmed while the runtime creates, and only
    again if the init's turns out to be another (network/program.py: holds).
    If programming fails the container is deleted and create fails (closed).
    """
    from tiergate.core import pipeline
    from tiergate.core.errors import TiergateError
    from tiergate.network.program import holds, program_ahead, program_netns

    if os.environ.get(LOOP_ENV):
        raise LoopError("tiergate-runtime was started by itself through the real runtime")
    path = find_runtime(conf)
    spec, tier = plan
    ports = pipeline.port_list(rec.get("ports") or [])
    wait = _start(path, argv)
    ahead = program_ahead(spec, tier, rec, ports)  # a namespace the spec names: while the runtime creates
    code = wait()
    if code != 0:
        return code  # the runtime reported its own error in its log
    try:
        netns = f"/proc/{_init_pid(parsed, path)}/ns/net"
        if holds(ahead, netns):
            rec["netns_programmed"] = "ahead"
        else:
            program_netns(spec, tier, netns, rec, ports)
    except Exception as exc:
        _start(path, [*argv[:parsed.command_index], "delete", "--force", parsed.container_id or ""])()
        if isinstance(exc, TiergateError):
            raise
        raise TiergateError(f"cannot program the container's network namespace: {exc}") from None
    return 0


def _empty_netns(spec: dict, engine: str) -> bool:
    """The container's network namespace will hold only loopback, so no rules are needed.

    runc makes a fresh namespace when the spec names none; docker then moves its
    network's interface in (a prestart hook), unless the container runs --network none;
    other engines' hooks (CNI as an OCI hook) might do the same, so any hook counts.
    """
    from tiergate.host.facts import empty_netns, fresh_netns

    if engine == "docker":  # its setkey prestart hook is there even with --network none
        from tiergate.sources.docker import network_mode

        return fresh_netns(spec) and network_mode(spec) == "none"
    return empty_netns(spec)


# -- exec -------------------------------------------------------------------

def _default_root(runtime: str) -> str:
    name = os.path.basename(runtime)
    base = "/run" if os.geteuid() == 0 else os.environ.get("XDG_RUNTIME_DIR", "/run")
    return os.path.join(base, "crun" if "crun" in name else "runc")


def container_tier(parsed: runc_args.RuncArgs, conf: dict, policy: dict, seen: dict | None = None) -> tuple[str, str]:
    """(tier name, where it came from) for an existing container, from the runtime's state.

    `seen` collects what else was learnt on the way: the container's bounding set
    ("bounding", which an exec must never exceed) and its bundle ("bundle").
    """
    seen = {} if seen is None else seen
    from tiergate.oci import bundle, jsonio
    from tiergate.oci.errors import OciError

    cid = parsed.container_id or ""
    if not _valid_id(cid):
        raise _refusal(f"invalid container id {cid[:80]!r}")
    runtime = find_runtime(conf)
    root = parsed.root or _default_root(runtime)
    bundle_dir = None
    state_file = os.path.join(root, cid, "state.json")
    try:  # runc: the labels runc applied: spec annotations as k=v, and bundle=<dir>
        config = runc_config_fields(bundle.read_file(state_file).decode("utf-8"))
        labels = config.get("labels") or []
        found = dict(str(x).partition("=")[::2] for x in labels if isinstance(x, str))
        caps = (config.get("capabilities") or {}).get("Bounding")
        if isinstance(caps, list):
            seen["bounding"] = [c for c in caps if isinstance(c, str)]
        seen["bundle"] = found.get("bundle")
        if found.get(names.ANN_TIER):
            return found[names.ANN_TIER], f"{state_file} label"
        bundle_dir = found.get("bundle")
    except Exception:
        pass
    if bundle_dir is None:  # any runtime: `RUNTIME --root R state ID`
        import subprocess

        argv = [runtime, *(["--root", root] if parsed.root else []), "state", cid]
        try:
            out = subprocess.run(argv, capture_output=True, timeout=10, env={**os.environ, LOOP_ENV: "1"})
            doc = jsonio.parse(out.stdout.decode("utf-8"), "runtime state") if out.returncode == 0 else {}
        except (OSError, UnicodeDecodeError, OciError, subprocess.TimeoutExpired):
            doc = {}
        state = doc if isinstance(doc, dict) else {}
        annotations = state["annotations"] if isinstance(state.get("annotations"), dict) else {}
        if isinstance(annotations.get(names.ANN_TIER), str):
            return annotations[names.ANN_TIER], "runtime state annotation"
        bundle_dir = state["bundle"] if isinstance(state.get("bundle"), str) else None
    if not bundle_dir:
        raise _refusal(f"cannot find container {cid[:64]}'s bundle to learn its tier")
    seen["bundle"] = bundle_dir
    spec = bundle.read_config(bundle_dir)
    proc = spec["process"] if isinstance(spec.get("process"), dict) else {}
    caps = (proc.get("capabilities") or {}).get("bounding") if isinstance(proc.get("capabilities"), dict) else None
    if isinstance(caps, list) and "bounding" not in seen:
        seen["bounding"] = [c for c in caps if isinstance(c, str)]
    annotations = spec["annotations"] if isinstance(spec.get("annotations"), dict) else {}
    if isinstance(annotations.get(names.ANN_TIER), str):
        return annotations[names.ANN_TIER], f"{bundle_dir}/config.json annotation"
    # Created before tiergate was installed: decide now, from the same sources as create.
    from tiergate.core.decide import decide

    image, _ = resolve_image(spec, cid, policy, bundle_dir, conf)
    return decide(policy, image, annotations).tier, "decided at exec (the container was created without tiergate)"


RUNC_CONFIG_KEYS = ("labels", "capabilities")  # of libcontainer's Config, in runc's state.json


def runc_config_fields(text: str) -> dict:
    """config.labels and config.capabilities of runc's state.json, without parsing the rest.

    The state holds the container's whole config (~30 KB, mostly its seccomp filter: ~9 M
    instructions through jsonio); each key is found as the one `"KEY":` after a `{` or `,`
    (a quote inside a string is escaped, so that is a key) and only its value is parsed.
    A key absent or found twice: the whole state is parsed, as before.
    """
    from tiergate.oci import jsonio

    space = " \t\n\r"
    out = {}
    for key in RUNC_CONFIG_KEYS:
        mark = f'"{key}":'
        at = text.find(mark)
        before = text[:at].rstrip(space)[-1:] if at > 0 else ""
        if before not in ("{", ",") or not before or text.find(mark, at + 1) != -1:
            config = jsonio.loads(text, "runc state").get("config")
            return config if isinstance(config, dict) else {}
        start = at + len(mark)
        start += len(text) - start - len(text[start:].lstrip(space))
        out[key] = jsonio.value_at(text, start, "runc state")[0]
    return out


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")


def _valid_id(cid: str) -> bool:
    """runc's own rule for container ids (^[\\w+-\\.]+$, ASCII): it is a path component below --root."""
    return 0 < len(cid) <= 1024 and set(cid) <= _ID_CHARS and cid not in (".", "..")


def _refusal(reason: str):
    from tiergate.core.errors import Refusal

    return Refusal(reason)


def _existing_container(parsed: runc_args.RuncArgs, conf: dict, rec: dict, seen: dict | None = None):
    """(policy, tier, where the tier came from) for the container an exec or update names."""
    rec["container"] = parsed.container_id or ""
    from tiergate.policy import cache

    policy = cache.load_noted(conf.get("policy"), conf.get("cache_dir"), rec)
    name, source = container_tier(parsed, conf, policy, seen)
    tier = policy["tiers"].get(name)
    if tier is None:
        raise _refusal(f"container {parsed.container_id} carries unknown tier {name[:64]!r} ({source})")
    rec.update(tier=name, why=source)
    return policy, tier, source


# runc 1.1 without --process: each --cap adds to these sets of the container's process.
CAP_FLAG_SETS = ("bounding", "effective", "permitted")


def exec_process(parsed: runc_args.RuncArgs) -> dict:
    """The exec's own input: the --process file (engines always give one), else what runc's flags add
    to the container's process (hardened at create): --cap, --no-new-privs. runc ignores both beside
    a --process file."""
    from tiergate.oci import bundle

    from tiergate.core.capabilities import normalize

    path = parsed.value("process", "p")
    if path:
        return bundle.read_json_file(path, "exec process file")
    caps = [normalize(c) for c in parsed.values("cap", "c")]
    proc: dict = {"capabilities": {name: list(caps) for name in CAP_FLAG_SETS}} if caps else {}
    if parsed.flag("no-new-privs"):
        proc["noNewPrivileges"] = True
    return proc


def enforce_exec(parsed: runc_args.RuncArgs, conf: dict, rec: dict) -> list[str]:
    """Harden an exec to the container's tier through the create's modifiers (pipeline.enforce_process);
    returns the argv to run: the original, the --process file rewritten, or, for a process given by
    flags, minus the --cap/--apparmor the tier strips and plus the --no-new-privs/--apparmor it adds."""
    from tiergate.oci import bundle

    from tiergate.core.capabilities import normalize
    from tiergate.core import pipeline
    from tiergate.host import facts

    seen: dict = {}
    policy, tier, source = _existing_container(parsed, conf, rec, seen)
    if seen.get("bundle"):
        rec["engine"] = _engine(seen["bundle"], "runc")
    if tier["passthrough"]:
        return parsed.argv
    if seen.get("bounding") is not None:
        # An exec gets the tier's capabilities, and never one its container was created without.
        tier = dict(tier, capabilities=[c for c in tier["capabilities"] if c in seen["bounding"]])
    proc = exec_process(parsed)
    done = pipeline.enforce_process(proc, policy, tier, facts.gather({"process": proc}, tier), source)
    hardened = done.spec
    rec.update(done.record)
    path = parsed.value("process", "p")
    if tier.get("audit"):
        return parsed.argv  # audit: the exec runs as asked; the record says what enforcement would do
    if path:
        if hardened != proc:
            bundle.write_json_file(path, hardened)
        return parsed.without(lambda opt: opt.name in ("cap", "c"))  # no effect beside --process: never read
    kept = set((hardened.get("capabilities") or {}).get("bounding") or ())
    profile = hardened.get("apparmorProfile")
    argv = parsed.without(lambda opt: (opt.name in ("cap", "c") and normalize(opt.value or "") not in kept)
                          or (opt.name in ("apparmor", "a") and tier["apparmor"] != "off" and opt.value != profile))
    extra = []
    if hardened.get("noNewPrivileges") and not parsed.flag("no-new-privs"):
        extra.append("--no-new-privs")
    if profile and parsed.value("apparmor", "a") != profile:
        extra += ["--apparmor", profile]
    return parsed.with_options(extra, argv) if extra else argv


MAX_RESOURCES = 60 * 1024  # fits a pipe's buffer (64 KiB): handed on without a writer process


def enforce_update(parsed: runc_args.RuncArgs, conf: dict, rec: dict) -> list[str]:
    """`update` (docker update, podman update) goes straight to the runtime: hold the container's
    tier there too (its pids limit), in the --resources JSON (a file, or stdin as `-`) and in the
    flags. Returns the argv to run; a rewritten stdin is put back on fd 0 for the runtime."""
    from tiergate.oci import bundle, jsonio

    from tiergate.core.harden import Context
    from tiergate.core.modifiers import linux

    policy, tier, source = _existing_container(parsed, conf, rec)
    if tier["passthrough"]:
        return parsed.argv
    ctx = Context(tier, policy, {}, source, "an update")
    where = parsed.value("resources", "r")
    stdin = None
    resources: dict = {}
    if where == "-":
        stdin = b""
        while len(stdin) <= MAX_RESOURCES:
            more = os.read(0, MAX_RESOURCES + 1 - len(stdin))
            if not more:
                break
            stdin += more
        if len(stdin) > MAX_RESOURCES:
            raise _refusal(f"update resources on stdin are larger than {MAX_RESOURCES} bytes")
        resources = jsonio.loads(stdin, "update resources")
    elif where:
        resources = bundle.read_json_file(where, "update resources")
    original = jsonio.dumps(resources)
    linux.pids_update(resources, ctx)
    flag = parsed.value("pids-limit")
    flag_res: dict = {}
    if flag is not None:
        try:
            flag_res = {"pids": {"limit": int(flag)}}
        except ValueError:
            raise _refusal(f"invalid --pids-limit {flag[:32]!r}") from None
        linux.pids_update(flag_res, ctx)
    if ctx.refusals:
        raise _refusal(ctx.refusals[0])
    rec["changes"] = [f"{c['field']}: {c['what']}" for c in ctx.changes]
    argv = parsed.argv
    if flag is not None and flag_res and flag_res["pids"]["limit"] != int(flag):
        argv = parsed.without(lambda opt: opt.name == "pids-limit")
        argv = parsed.with_options(["--pids-limit", str(flag_res["pids"]["limit"])], argv)
    if where and where != "-" and jsonio.dumps(resources) != original:
        bundle.write_json_file(where, resources)
    if stdin is not None:  # consumed: hand the (clamped) document on through a pipe
        data = jsonio.dumps(resources) if jsonio.dumps(resources) != original else stdin
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        os.dup2(r, 0)
        os.close(r)
    return argv


def enforce(argv: list[str], conf: dict) -> int:
    import time

    from tiergate.oci.errors import OciError

    from tiergate.telemetry import record
    from tiergate.core.errors import Refusal, TiergateError

    started = time.monotonic()
    rec: dict = {"stage": None, "engine": "runc", "shim": True}
    run_argv = argv
    code = 0
    ran = None  # the runtime's exit code once this process ran it (create, then programming)
    try:
        parsed = runc_args.parse(argv)
        rec["stage"] = parsed.command
        if parsed.command == "exec":
            run_argv = enforce_exec(parsed, conf, rec)
        elif parsed.command == "update":
            run_argv = enforce_update(parsed, conf, rec)
        else:
            plan = enforce_create(parsed, conf, rec)
            if plan is not None:
                ran = create_and_program(argv, parsed, conf, plan, rec)
        rec["outcome"] = "allowed"
    except (Refusal, OciError, runc_args.ArgsError, LoopError) as exc:  # never let through, whatever on_error says
        rec.update(outcome="refused" if isinstance(exc, Refusal) else "error", reason=str(exc))
        code = 1
    except Exception as exc:  # errors, ours included: fail closed with one line, unless the operator chose "allow"
        reason = str(exc) if isinstance(exc, TiergateError) else f"internal error: {type(exc).__name__}: {exc}"
        if _allowed_on_error(conf, rec["engine"]):
            # As hardened as we got: the bundle is written whole or not at all, and a container whose
            # namespace could not be programmed was deleted: the runtime creates it again below.
            rec.update(outcome="allowed-on-error", reason=reason)
            ran = None
            print(f"tiergate: error, container ALLOWED by on_error=allow: {reason}", file=sys.stderr)
        else:
            rec.update(outcome="error", reason=reason)
            code = 1
    rec["duration_ms"] = round((time.monotonic() - started) * 1000, 2)
    problem = record.write(rec, conf.get("log"))
    if code:
        _fail(argv, f"tiergate: {rec['outcome']}: {rec['reason']}")
        return code
    if problem:
        print(f"tiergate: warning: {problem}", file=sys.stderr)
    return ran if ran is not None else exec_runtime(run_argv, conf)


def _allowed_on_error(conf: dict, engine: str) -> bool:
    """The policy's on_error for this engine (pipeline.on_error: one rule for every engine path);
    a policy that cannot be read at all: refuse."""
    from tiergate.core import pipeline
    from tiergate.policy import cache

    try:
        policy = cache.load_compiled(conf.get("policy"), conf.get("cache_dir"))
    except Exception:
        return False
    return pipeline.on_error(policy, engine) == "allow"


def main(argv: list[str] | None = None, conf: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = read_conf(conf)
    if runc_args.subcommand(argv) not in names.SHIM_ENFORCED:
        return exec_runtime(argv, settings)
    return enforce(argv, settings)


if __name__ == "__main__":
    sys.exit(main())
