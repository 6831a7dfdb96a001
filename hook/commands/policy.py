"""`tiergate policy check`: validate a policy file, exit 0 or file:line: reason."""

from __future__ import annotations

import sys


def register(sub) -> None:
    pc = sub.add_parser("policy", help="work with policy files").add_subparsers(dest="policy_command", required=True)
    chk = pc.add_parser("check", help="validate a policy file; exit 0 or print file:line: reason")
    chk.add_argument("file", nargs="?", help="policy file (default: the active policy)")
    chk.set_defaults(func=cmd_policy)


def cmd_policy(args) -> int:
    from ..policy.cache import policy_path
    from ..policy.compile import compile_file, warnings

    path = args.file or policy_path(args.policy)
    compiled = compile_file(path)
    for line in warnings(compiled):  # informative: stdout keeps the one verdict line
        print(f"tiergate: warn: {line}", file=sys.stderr)
    print(f"ok: {path}: {len(compiled['tiers'])} tiers ({', '.join(compiled['tiers'])}), "
          f"{len(compiled['trust'])} trust rules, digest {compiled['digest'][:16]}")
    return 0
