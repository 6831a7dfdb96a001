"""`tiergate`: the operator's command line. Exit 0 ok, 1 refused, 2 bad input or setup."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tiergate.oci.errors import OciError

from .decide import Image, decide
from .errors import PolicyError, Refusal, TiergateError

EXAMPLES = """examples:
  tiergate render --image-ref docker.io/library/nginx:1.27 --label io.tiergate.tier=restricted < config.json
  tiergate explain --tier isolated < config.json
  tiergate policy check /etc/tiergate/policy.toml
  tiergate install --engine podman
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiergate", description="Harden every container by a tier chosen from its image's labels.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", help="policy file (default: $TIERGATE_POLICY, /etc/tiergate/policy.toml, then the shipped one)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, text in (("render", "print the hardened config.json"), ("explain", "say which tier and what changes, in words")):
        c = sub.add_parser(name, help=text, description=text)
        who = c.add_mutually_exclusive_group(required=True)
        who.add_argument("--tier", help="force this tier (no label, no trust rule)")
        who.add_argument("--image-ref", help="image reference the trust rules match, e.g. docker.io/library/nginx:1.27")
        c.add_argument("--image-id", default="", help="image id or digest (for digest trust rules)")
        c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="an image label (repeatable)")
        c.add_argument("--config", default="-", help="config.json to harden (default: stdin)")

    pc = sub.add_parser("policy", help="work with policy files").add_subparsers(dest="policy_command", required=True)
    chk = pc.add_parser("check", help="validate a policy file; exit 0 or print file:line: reason")
    chk.add_argument("file", nargs="?", help="policy file (default: the active policy)")

    for name in ("install", "uninstall"):
        c = sub.add_parser(name, help=f"{name} tiergate's hooks for an engine (idempotent)")
        c.add_argument("--engine", required=True, choices=["podman"], help="engine to register with")
        c.add_argument("--hooks-dir", type=Path, default=None, help="podman hooks.d directory")
        c.add_argument("--bin-dir", type=Path, default=None, help="where the hook launcher lives")
        if name == "install":
            c.add_argument("--prestart", action="store_true", help="also register the prestart verify hook")
            c.add_argument("--log", help="decision log file for the hook")
            c.add_argument("--cache-dir", help="compiled-policy cache directory for the hook")
    return p


def _read_spec(path: str) -> dict:
    from tiergate.oci import jsonio
    from tiergate.oci.convert import parse_spec

    data = sys.stdin.buffer.read(jsonio.MAX_BYTES + 1) if path == "-" else Path(path).read_bytes()
    spec = jsonio.loads(data, "config")
    parse_spec(spec)  # full validation: wrong types and bad values fail here, naming the field
    return spec


def _decide_and_harden(args) -> tuple[dict, object, dict, list, list]:
    from . import facts as host
    from .harden import harden
    from .policy.cache import load_compiled

    policy = load_compiled(args.policy)
    spec = _read_spec(args.config)
    if args.tier:
        if args.tier not in policy["tiers"]:
            raise Refusal(f"unknown tier {args.tier!r}; valid tiers: {', '.join(sorted(policy['tiers']))}")
        why = f"--tier {args.tier} given on the command line"
        tier_name = args.tier
        decision = None
    else:
        labels = {}
        for item in args.label:
            key, eq, value = item.partition("=")
            if not eq:
                raise TiergateError(f"--label {item!r}: expected KEY=VALUE")
            labels[key] = value
        image = Image(refs=[args.image_ref], id=args.image_id, labels=labels)
        annotations = spec.get("annotations") if isinstance(spec.get("annotations"), dict) else {}
        decision = decide(policy, image, annotations)
        tier_name, why = decision.tier, decision.why
    tier = policy["tiers"][tier_name]
    hardened, changes, notes = harden(spec, tier, policy, host.gather(spec, tier), why)
    return hardened, decision, tier, changes, notes


def cmd_render(args) -> int:
    hardened, *_ = _decide_and_harden(args)
    json.dump(hardened, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def cmd_explain(args) -> int:
    _, decision, tier, changes, notes = _decide_and_harden(args)
    out = [f"tier: {tier['name']} - {tier['description']}"]
    if decision is not None:
        out.append(f"why:  {decision.why}")
    else:
        out.append("why:  forced with --tier")
    if tier["seccomp"]:
        sc = tier["seccomp"]
        denied = sorted({n for r in sc.get("syscalls", []) if r["action"] != "SCMP_ACT_ALLOW" and not r.get("args")
                         for n in r["names"]})
        out.append(f"seccomp: profile {tier['seccomp_profile']}, {len(sc.get('syscalls', []))} rules; "
                   f"unlisted syscalls fail with errno {sc.get('defaultErrnoRet', 1)}")
        if denied:
            out.append(f"  explicitly denied: {', '.join(denied)}")
    if tier["network"]:
        n = tier["network"]
        out.append(f"network: policy {n['name']}: egress {n['egress']}, ingress {n['ingress']}, dns {n['dns']}")
    out.append(f"changes ({len(changes)}):" if changes else "changes: none (the spec already meets the tier)")
    for c in changes:
        out.append(f"  - {c['field']}: {c['what']}\n      because {c['why']}")
    for key, value in notes:
        out.append(f"note: {key}: {value}")
    print("\n".join(out))
    return 0


def cmd_policy(args) -> int:
    from .policy.cache import policy_path
    from .policy.compile import compile_file

    path = args.file or policy_path(args.policy)
    compiled = compile_file(path)
    print(f"ok: {path}: {len(compiled['tiers'])} tiers ({', '.join(compiled['tiers'])}), "
          f"{len(compiled['trust'])} trust rules, digest {compiled['digest'][:16]}")
    return 0


def cmd_install(args, remove: bool = False) -> int:
    from .engines import podman

    hooks_dir = args.hooks_dir or podman.DEFAULT_HOOKS_DIR
    bin_dir = args.bin_dir or podman.DEFAULT_BIN_DIR
    if remove:
        podman.uninstall(hooks_dir, bin_dir)
        return 0
    extra = []
    if args.policy:
        from .policy.compile import compile_file

        compile_file(args.policy)  # refuse to install a broken policy
        extra += ["--policy", str(Path(args.policy).resolve())]
    for flag in ("log", "cache_dir"):
        if getattr(args, flag):
            extra += ["--" + flag.replace("_", "-"), str(Path(getattr(args, flag)).resolve())]
    podman.install(hooks_dir, bin_dir, extra, args.prestart)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"render": cmd_render, "explain": cmd_explain, "policy": cmd_policy,
                "install": cmd_install, "uninstall": lambda a: cmd_install(a, remove=True)}
    try:
        return handlers[args.command](args)
    except Refusal as exc:
        print(f"tiergate: refused: {exc}", file=sys.stderr)
        return 1
    except (PolicyError, TiergateError, OciError) as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tiergate: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
