"""`tiergate render` and `tiergate explain`: the decision and the hardened spec, for a config.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tiergate.core.decide import Decision, Image
from tiergate.core.errors import Refusal, TiergateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tiergate.core.contracts import Tier


def register(sub) -> None:
    for name, text in (("render", "print the hardened config.json"), ("explain", "say which tier and what changes, in words")):
        c = sub.add_parser(name, help=text, description=text)
        who = c.add_mutually_exclusive_group(required=True)
        who.add_argument("--tier", help="force this tier (no label, no trust rule)")
        who.add_argument("--image-ref", help="image reference the trust rules match, e.g. docker.io/library/nginx:1.27")
        c.add_argument("--image-id", default="", help="image id or digest (for digest trust rules)")
        c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="an image label (repeatable)")
        c.add_argument("--config", default="-", help="config.json to harden (default: stdin)")
        if name == "explain":  # or a container that ran: its decision and the likely causes of a failure
            who.add_argument("container", nargs="?", help="a container's id (prefix) or engine name")
            c.add_argument("--log", metavar="F", help="decision log for CONTAINER (default: $TIERGATE_LOG or the system log)")
        c.set_defaults(func=cmd_render if name == "render" else cmd_explain)

def _read_spec(path: str) -> dict:
    from tiergate.core.spec import validate
    from tiergate.oci import jsonio

    data = sys.stdin.buffer.read(jsonio.MAX_BYTES + 1) if path == "-" else Path(path).read_bytes()
    spec = jsonio.loads(data, "config")
    validate(spec)  # the hook's and the shim's rules: each refuses the same specs, naming the field
    return spec


def _decide_and_harden(args) -> tuple[dict, Decision | None, Tier, list, list]:
    """The pipeline the hook and the shim run (core.pipeline), on this host, with the image
    facts given on the command line: what a container with this config would get here."""
    from tiergate.core import pipeline
    from tiergate.host.edge import host_edge
    from tiergate.policy.cache import load_compiled

    policy = load_compiled(args.policy)
    spec = _read_spec(args.config)
    labels = {}
    for item in args.label:
        key, eq, value = item.partition("=")
        if not eq:
            raise TiergateError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    image = Image(refs=[args.image_ref], id=args.image_id, labels=labels)
    if args.tier:
        if args.tier not in policy["tiers"]:
            raise Refusal(f"unknown tier {args.tier!r}; valid tiers: {', '.join(sorted(policy['tiers']))}")
        why = f"--tier {args.tier} given on the command line"
        chosen = pipeline.Chosen(Decision(args.tier, args.tier, "command line", args.tier, "", why),
                                 policy["tiers"][args.tier], {})
    else:
        chosen = pipeline.choose(policy, image, spec)
    done = pipeline.enforce(spec, policy, image, chosen, host_edge("cli", None, None, None))
    return done.spec, None if args.tier else chosen.decision, done.tier, done.changes, done.notes


def cmd_render(args) -> int:
    hardened, *_ = _decide_and_harden(args)
    json.dump(hardened, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _denied_groups(tier: Tier, args) -> list[str]:
    """The profile's denying groups, each with the rationale written beside it in tiergate/configs/seccomp."""
    from tiergate.policy.cache import policy_path
    from tiergate.core.names import configs_dir
    from tiergate.seccomp.profiles import SeccompProfileError, explain

    name = tier["seccomp_profile"]
    if not name:
        return []
    dirs = [Path(policy_path(args.policy)).parent / "seccomp", Path(configs_dir(), "seccomp")]
    try:
        groups = explain(name, search_dirs=dirs)
    except SeccompProfileError:
        return []
    lines = []
    for g in groups:
        if g["action"] == "SCMP_ACT_ALLOW":
            continue
        how = "only with some arguments" if g["conditional"] else f"errno {g['errnoRet']}"
        lines.append(f"  denied ({how}): {', '.join(sorted(g['names']))}\n      because {g['why']}")
    for name in tier["seccomp_deny"]:
        lines.append(f"  denied (errno 1): {name}\n      because the policy's seccomp_deny names it")
    return lines


def cmd_explain(args) -> int:
    if args.container:
        from tiergate.cli.diagnose import explain_container

        return explain_container(args)
    _, decision, tier, changes, notes = _decide_and_harden(args)
    out = [f"tier: {tier['name']} - {tier['description']}"]
    if decision is not None:
        out.append(f"why:  {decision.why}")
    else:
        out.append("why:  forced with --tier")
    if tier["seccomp"]:
        sc = tier["seccomp"]
        out.append(f"seccomp: profile {tier['seccomp_profile']}, {len(sc.get('syscalls', []))} rules; "
                   f"unlisted syscalls fail with errno {sc.get('defaultErrnoRet', 1)}")
        out += _denied_groups(tier, args)
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
