"""`tiergate policy check | apply | compile`: validate a policy file; roll one out without bricking the
host; compile it ahead for the registered hooks."""

from __future__ import annotations

import os
import sys


def register(sub) -> None:
    pc = sub.add_parser("policy", help="work with policy files").add_subparsers(dest="policy_command", required=True)
    chk = pc.add_parser("check", help="validate a policy file; exit 0 or print file:line: reason")
    chk.add_argument("file", nargs="?", help="policy file (default: the active policy)")
    chk.set_defaults(func=cmd_policy)
    app = pc.add_parser("apply", help="check and compile FILE, then switch the live policy to it atomically",
                        description="Check and compile FILE as the live policy (seccomp profiles resolve beside the "
                        "live file), then replace the live file by one rename and store its compiled form, under the "
                        "compile lock: a start sees the old policy or the new one, never half. A broken FILE is "
                        "refused (file:line: reason, exit 2) and nothing live is touched.")
    cmp = pc.add_parser("compile", help="compile the policy into the cache of every registered hook and docker shim",
                        description="Run by install, upgrades and `policy apply`: each registered hook's release "
                        "compiles the policy it uses into its cache, so no container start pays for a compile.")
    cmp.set_defaults(func=cmd_compile)
    app.add_argument("file", help="the new policy")
    app.add_argument("--to", metavar="LIVE", help="the live policy file (default: --policy, $TIERGATE_POLICY, "
                     "/etc/tiergate/policy.toml)")
    app.add_argument("--cache-dir", metavar="DIR", help="the hook's compiled-policy cache (default: as the hook)")
    app.set_defaults(func=cmd_apply)


def cmd_policy(args) -> int:
    from tiergate.policy.cache import policy_path
    from tiergate.policy.compile import compile_file

    path = args.file or policy_path(args.policy)
    compiled = compile_file(path)
    _warn(compiled)
    print(f"ok: {path}: {len(compiled['tiers'])} tiers ({', '.join(compiled['tiers'])}), "
          f"{len(compiled['trust'])} trust rules, digest {compiled['digest'][:16]}")
    return 0


def _warn(compiled: dict) -> None:
    from tiergate.policy.compile import warnings

    for line in warnings(compiled):  # informative: stdout keeps the one verdict line
        print(f"tiergate: warn: {line}", file=sys.stderr)


def cmd_apply(args) -> int:
    from tiergate.policy.cache import SYSTEM_POLICY, apply

    live = args.to or args.policy or os.environ.get("TIERGATE_POLICY") or SYSTEM_POLICY
    compiled = apply(args.file, live, args.cache_dir)
    _warn(compiled)
    print(f"applied: {args.file} -> {live}: {len(compiled['tiers'])} tiers, digest {compiled['digest'][:16]}")
    return 0


def cmd_compile(args) -> int:
    from pathlib import Path

    from tiergate.cli.probes import podman_hooks_dirs, registrations
    from tiergate.engines import launcher

    seen, ok = set(), True
    for _, settings in registrations(podman_hooks_dirs()[0]):
        bin_dir = os.path.dirname(settings.pop("launcher", ""))
        key = (bin_dir, settings.get("policy"), settings.get("cache_dir"))
        if bin_dir and key not in seen:
            seen.add(key)
            ok = launcher.precompile(Path(bin_dir), settings) and ok
    if not seen:
        print("no registered tiergate hook or docker shim: nothing to compile")
    return 0 if ok else 1
