"""OCI hook entry points: `tiergate-hook precreate | createRuntime | prestart`.

Stdout carries JSON only (precreate's rewritten spec); everything else goes
to the decision log. This module is the container-start hot path: it imports
the standard library, the compiled-policy cache and the pure engine, nothing
else unless a tier needs it (network, AppArmor).
"""

from __future__ import annotations

import os
import sys
import time

from tiergate.oci import stdio
from tiergate.oci.errors import OciError, SpecError

from tiergate.telemetry import record
from tiergate.core.decide import Image, show
from tiergate.core.errors import Refusal, TiergateError
from tiergate.core.names import ANN_LOG_ERROR, ANN_PORTS, ANN_REFUSED, ANN_TIER, PRIVATE_NAMESPACES
from tiergate.core import pipeline
from tiergate.policy import cache

USAGE = ("usage: tiergate-hook {precreate|createRuntime|prestart} "
         "[--policy FILE] [--cache-dir DIR] [--log FILE]")


class Options:
    __slots__ = ("stage", "policy", "cache_dir", "log", "engine")
    stage: str | None
    policy: str | None
    cache_dir: str | None
    log: str | None

    def __init__(self) -> None:
        self.stage = self.policy = self.cache_dir = self.log = None
        self.engine = "podman"


def parse_args(argv: list[str]) -> Options:
    opts = Options()
    it = iter(argv)
    for arg in it:
        key, eq, value = arg.partition("=")
        if key in ("--policy", "--cache-dir", "--log", "--engine"):
            given = value if eq else next(it, None)
            if given is None:
                raise TiergateError(f"{key} needs a value")
            setattr(opts, key[2:].replace("-", "_"), given)
        elif not arg.startswith("-") and opts.stage is None:
            opts.stage = arg
        else:
            raise TiergateError(f"unknown argument {show(arg)}; {USAGE}")
    if opts.stage not in STAGES:
        raise TiergateError(USAGE)
    return opts


def _hook_self(opts: Options, stage: str) -> dict:
    """How to call this same hook again at another stage (for the network createRuntime hook)."""
    path = os.path.abspath(sys.argv[0])
    lib, name = os.path.split(path)
    front = os.path.join(os.path.dirname(lib), name[:-3])  # BIN/lib/tiergate-hook.py's compiled front: BIN/tiergate-hook
    if name.endswith(".py") and os.path.basename(lib) == "lib" and os.access(front, os.X_OK):
        path = front
    args = [os.path.basename(path) or "tiergate-hook", stage]
    for key in ("policy", "cache_dir", "log", "engine"):
        if getattr(opts, key):
            args += ["--" + key.replace("_", "-"), getattr(opts, key)]
    if not os.access(path, os.X_OK) or path.endswith(".py"):
        return {"path": sys.executable, "args": [sys.executable, "-I", "-m", "tiergate.hook.stages", *args[1:]]}
    return {"path": path, "args": args}


def _root_path(spec: dict) -> str | None:
    root = spec.get("root")
    path = root.get("path") if isinstance(root, dict) else None
    return path if isinstance(path, str) else None


def _storage_entry(spec: dict) -> dict | None:
    """The containers-storage entry of this spec's rootfs (sources.storage), or None."""
    from tiergate.sources.storage import container_for_rootfs

    path = _root_path(spec)
    return container_for_rootfs(path) if path else None


def _container(spec: dict, rec: dict) -> None:
    """The container's id and name from the engine's own records (containers-storage, by the
    rootfs layer): precreate's spec has no id, and its hostname and HOSTNAME are the workload's."""
    entry = _storage_entry(spec)
    rec["container"] = entry["id"] if entry else ""
    if entry and entry["names"]:
        rec["name"] = entry["names"][0]


def _image_id(spec: dict) -> str:
    """For a later stage's record: the image id from the engine's records (containers-storage, docker)."""
    entry = _storage_entry(spec)
    if entry:
        return entry["image"][:12]
    from tiergate.sources.docker import image_for_spec

    image = image_for_spec(spec)
    return image.id[:12] if image is not None else ""


def _image(spec: dict) -> Image:
    path = _root_path(spec)
    if path is None:
        return Image.unknown("the spec names no root filesystem")
    from tiergate.sources.storage import image_for_rootfs

    return image_for_rootfs(path)


def _edge(opts: Options, netns_ready: bool = False) -> pipeline.Edge:
    from tiergate.host.edge import host_edge

    return host_edge(opts.engine, opts.cache_dir, opts.log, _hook_self(opts, "createRuntime"), netns_ready)


def precreate(opts: Options, rec: dict) -> int:
    spec = policy = hardened = None
    try:
        spec = stdio.read_stdin("config")
        _container(spec, rec)
        policy = cache.load_noted(opts.policy, opts.cache_dir, rec)
        image = _image(spec)
        rec.update(image=image.refs[0] if image.refs else "", image_id=image.id[:12],
                   label=image.labels.get(policy["label_key"]))
        from tiergate.host.facts import empty_netns, netns_path

        netns = netns_path(spec)
        # podman made the namespace already (program it here), or runc will make an empty one.
        done = pipeline.run(spec, policy, image, _edge(opts, netns_ready=bool(netns) or empty_netns(spec)), rec.update)
        hardened, tier = done.spec, done.tier
        if netns and pipeline.needs_netns(tier):
            from tiergate.network.program import program_netns

            program_netns(hardened, tier, netns, rec, done.facts.get("ports") or [])
        elif tier["network"] is not None:
            rec["network"] = f"{tier['network']['name']}: fresh namespace, loopback only, nothing to filter"
    except Refusal as exc:
        return _refuse_precreate(spec, str(exc), rec, "refused")
    except SpecError as exc:  # malformed input is never let through, whatever on_error says
        return _refuse_precreate(spec, str(exc), rec, "error")
    except Exception as exc:  # errors, ours included: fail closed with one line, unless the operator chose "allow"
        reason = str(exc) if isinstance(exc, (TiergateError, OciError)) else f"internal error: {type(exc).__name__}: {exc}"
        if isinstance(spec, dict) and pipeline.on_error(policy, opts.engine) == "allow":
            # As hardened as we got: the hardened spec when only applying (network) failed.
            rec.update(outcome="allowed-on-error", reason=reason)
            print(f"tiergate: error, container ALLOWED by on_error=allow: {reason}", file=sys.stderr)
            return _emit(hardened if hardened is not None else spec, rec)
        return _refuse_precreate(spec, reason, rec, "error")
    rec["outcome"] = "allowed"
    return _emit(hardened, rec)


def _refuse_precreate(spec, reason: str, rec: dict, outcome: str) -> int:
    """Podman discards a failing precreate hook's output; a spec whose createRuntime hook
    fails with the reason gets that one line to the user (runc quotes hook stderr)."""
    line = f"tiergate: {outcome}: {reason}"
    rec.update(outcome=outcome, reason=reason)
    return _emit(refusal_spec(spec, line), rec)


def _emit(spec: dict, rec: dict) -> int:
    """precreate's stdout is the spec; main() prints it once the record is written (or not)."""
    rec["_stdout"] = spec
    return 0


CRUN_HOOK_STDERR = "run.oci.hooks.stderr"


def refusal_spec(spec, line: str) -> dict:
    """A spec that cannot start: no capabilities, no binds, and a createRuntime hook that fails with `line`."""
    base = spec if isinstance(spec, dict) else {}
    root = base["root"] if isinstance(base.get("root"), dict) else {}
    linux = base["linux"] if isinstance(base.get("linux"), dict) else {}
    out: dict = {
        "ociVersion": base.get("ociVersion") if isinstance(base.get("ociVersion"), str) else "1.0.2",
        "root": {"path": root.get("path") if isinstance(root.get("path"), str) else "/", "readonly": True},
        "process": {"args": ["/tiergate-refused"], "cwd": "/", "user": {"uid": 65534, "gid": 65534},
                    "noNewPrivileges": True, "capabilities": {}},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "hooks": {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", 'printf "%s\\n" "$0" >&2; exit 1', line]}]},
        # crun quotes no hook output, but names a hook output file it cannot open, before any hook
        # runs: `open `/proc/<line>`: No such file or directory` (no such entry can exist in /proc).
        # runc ignores the annotation and quotes the hook's stderr.
        "annotations": {ANN_REFUSED: line, CRUN_HOOK_STDERR: "/proc/" + line},
        "linux": {"namespaces": [{"type": t} for t in PRIVATE_NAMESPACES]},
    }
    if isinstance(linux.get("cgroupsPath"), str):
        out["linux"]["cgroupsPath"] = linux["cgroupsPath"]
    return out


def _state_and_config(rec: dict) -> tuple[dict, dict]:
    from tiergate.oci import bundle  # not precreate's: its spec comes on stdin

    state = stdio.read_stdin("state")
    rec["container"] = str(state.get("id", ""))[:64]
    bundle_dir = state.get("bundle")
    if not isinstance(bundle_dir, str) or not bundle_dir:
        raise OciError("the hook state names no bundle")
    return state, bundle.read_config(bundle_dir)


def create_runtime(opts: Options, rec: dict) -> int:
    """Apply the tier's network policy inside the container's (now existing) network namespace."""
    state, spec = _state_and_config(rec)
    annotations = spec["annotations"] if isinstance(spec.get("annotations"), dict) else {}
    tier_name = annotations.get(ANN_TIER)
    rec["image_id"] = _image_id(spec)
    policy = cache.load_noted(opts.policy, opts.cache_dir, rec)
    tier = policy["tiers"].get(tier_name) if isinstance(tier_name, str) else None
    if tier is None:
        raise Refusal(f"the bundle carries no valid tiergate tier ({show(tier_name)}); it was not hardened")
    rec.update(tier=tier_name)
    if not pipeline.needs_netns(tier):
        return 0
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        raise OciError("the hook state has no pid")
    from tiergate.network.program import program_netns

    # the ports precreate (or the shim) read from the engine's records and wrote down
    program_netns(spec, tier, f"/proc/{pid}/ns/net", rec,
                  pipeline.port_list((annotations.get(ANN_PORTS) or "").split(",")))
    return 0


def prestart(opts: Options, rec: dict) -> int:
    """Verify: refuse a container whose bundle is weaker than the tier its image gets."""
    _, spec = _state_and_config(rec)
    policy = cache.load_noted(opts.policy, opts.cache_dir, rec)
    image = _image(spec)
    rec.update(image=image.refs[0] if image.refs else "", image_id=image.id[:12])
    done = pipeline.run(spec, policy, image, _edge(opts), rec.update)
    tier = done.tier
    weaker = [c for c in done.changes if not c["field"].startswith(("$.annotations", "$.hooks"))]
    if weaker:
        raise Refusal(f"container is weaker than tier {tier['name']}: "
                      + "; ".join(f"{c['field']}: {c['what']}" for c in weaker))
    return 0


STAGES = {"precreate": precreate, "createRuntime": create_runtime, "prestart": prestart}


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    rec: dict = {"stage": None, "engine": None}
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except TiergateError as exc:
        print(f"tiergate-hook: {exc}", file=sys.stderr)
        return 2
    rec.update(stage=opts.stage, engine=opts.engine)
    inflight = record.begin(rec, opts.log)
    from tiergate.host.confine import confine

    problem = confine()  # before any untrusted byte is read
    if problem:
        rec["confine"] = problem
    try:
        code = STAGES[opts.stage](opts, rec)  # type: ignore[index]  # parse_args admits only a stage in STAGES
        rec.setdefault("outcome", "allowed")
    except (Refusal, TiergateError, OciError) as exc:
        rec.update(outcome="refused" if isinstance(exc, Refusal) else "error", reason=str(exc))
        print(f"tiergate: {rec['outcome']}: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:
        rec.update(outcome="error", reason=f"internal error: {type(exc).__name__}: {exc}")
        print(f"tiergate: error: {rec['reason']}", file=sys.stderr)
        code = 1
    rec["duration_ms"] = round((time.monotonic() - started) * 1000, 2)
    out = rec.pop("_stdout", None)
    problem = record.write(rec, opts.log, inflight)
    if problem:
        print(f"tiergate: warning: {problem}", file=sys.stderr)
    if out is not None:  # precreate: podman shows no hook stderr, so a lost record is said in the spec too
        if problem and isinstance(out.get("annotations"), dict):
            out["annotations"][ANN_LOG_ERROR] = problem
        stdio.write_stdout(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
