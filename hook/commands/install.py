"""`tiergate install` / `uninstall`: register with an engine, idempotently; print what was done."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    for name in ("install", "uninstall"):
        c = sub.add_parser(name, help=f"{name} tiergate's hooks for an engine (idempotent)")
        c.add_argument("--engine", required=True, choices=["podman"], help="engine to register with")
        c.add_argument("--hooks-dir", type=Path, default=None, help="podman hooks.d directory")
        c.add_argument("--bin-dir", type=Path, default=None, help="where the hook launcher lives")
        if name == "install":
            c.add_argument("--policy", default=argparse.SUPPRESS, help="policy file the hook uses (checked first)")
            c.add_argument("--prestart", action="store_true", help="also register the prestart verify hook")
            c.add_argument("--log", help="decision log file for the hook")
            c.add_argument("--cache-dir", help="compiled-policy cache directory for the hook")
            c.set_defaults(func=cmd_install)
        else:
            c.set_defaults(func=lambda a: cmd_install(a, remove=True))


def cmd_install(args, remove: bool = False) -> int:
    from ..engines import podman

    hooks_dir = args.hooks_dir or podman.DEFAULT_HOOKS_DIR
    bin_dir = args.bin_dir or podman.DEFAULT_BIN_DIR
    if remove:
        podman.uninstall(hooks_dir, bin_dir)
        return 0
    extra = []
    if args.policy:
        from ..policy.compile import compile_file

        compile_file(args.policy)  # refuse to install a broken policy
        extra += ["--policy", str(Path(args.policy).resolve())]
    for flag in ("log", "cache_dir"):
        if getattr(args, flag):
            extra += ["--" + flag.replace("_", "-"), str(Path(getattr(args, flag)).resolve())]
    podman.install(hooks_dir, bin_dir, extra, args.prestart)
    return 0
