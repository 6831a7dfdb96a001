"""`tiergate doctor`: what this host offers and what tiergate needs, as a table; exit 1 when enforcement is blocked."""

from __future__ import annotations

import json
import sys

EXAMPLES = """examples:
  tiergate doctor                               # the table; exit 1 if something blocks enforcement
  tiergate doctor --json | jq '.checks[] | select(.status != "ok")'
  tiergate doctor --hooks-dir /etc/containers/oci/hooks.d
  tiergate --policy /etc/tiergate/policy.toml doctor

status: ok = ready; warn = works, with a limit worth knowing (e.g. AppArmor absent, no engine
registered yet); fail = tiergate cannot enforce here (no seccomp filters, invalid policy,
broken hook launcher, nftables missing while a tier has a network policy). Exit 1 on any fail.
"""


def register(sub) -> None:
    import argparse

    c = sub.add_parser("doctor", help="check what the host offers and whether tiergate can enforce here",
                       description="Probe the host for real: seccomp filters (a filter is loaded in a forked child), "
                       "nftables (a test ruleset is checked, not loaded), AppArmor, user namespaces, landlock, cgroup "
                       "mode, container engines and their versions, whether tiergate is registered with podman "
                       "(hooks.d, [engine.runtimes]), docker (daemon.json runtimes) and containerd (CRI runtimes) and "
                       "with which interpreter, whether the policy compiles, and for each registration the policy, "
                       "compiled cache, decision log and launchers it really uses.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--json", action="store_true", help="print {\"ok\": bool, \"checks\": [{name, status, detail}], "
                   "\"known\": {...}}: known is what this tiergate knows (capabilities, namespaces, seccomp actions/operators/architectures, shim "
                   "subcommands, tier-name rule, label and annotation keys), as `runc features` says")
    c.add_argument("--hooks-dir", action="append", metavar="DIR",
                   help="podman hooks dir to look in (repeatable; default: containers.conf hooks_dir, "
                   "else /usr/share/containers/oci/hooks.d and /etc/containers/oci/hooks.d)")
    c.add_argument("--containerd-config", action="append", metavar="FILE",
                   help="containerd config.toml whose CRI runtimes to check (repeatable; default: "
                   "/etc/containerd/config.toml)")
    c.add_argument("--containers-conf", action="append", metavar="FILE",
                   help="containers.conf whose [engine.runtimes] to check (repeatable; default: the files podman "
                   "merges: $CONTAINERS_CONF, else containers.conf and containers.conf.d/*.conf)")
    c.set_defaults(func=cmd_doctor)


def render(checks, colour: bool = False) -> str:
    """The table, then a verdict line; details are never cut (they are what an operator acts on)."""
    from tiergate.cli.log import table

    rows = [[c.name, c.status, c.detail] for c in checks]
    text = table(["CHECK", "STATUS", "DETAIL"], rows, colour_col=1, colour=colour)
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    verdict = ("tiergate can enforce its policy on this host" if not fails
               else f"tiergate cannot enforce here: {fails} check(s) failed")
    return f"{text}\n\n{verdict} ({warns} warning(s))"


def cmd_doctor(args) -> int:
    from tiergate.cli import probes as host
    from tiergate.cli.log import use_colour

    checks = host.gather(args.policy, args.hooks_dir, containerd_configs=args.containerd_config or host.CONTAINERD_CONFIGS,
                         podman_confs=args.containers_conf)
    ok = not any(c.status == host.FAIL for c in checks)
    if args.json:
        from tiergate.core.names import known

        json.dump({"ok": ok, "checks": [c.as_dict() for c in checks], "known": known()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(checks, use_colour()))
    return 0 if ok else 1
