"""`tiergate`: the operator's command line. Exit 0 ok, 1 refused, 2 bad input or setup.

Each subcommand lives in tiergate/cli/<name>.py with a `register(subparsers)`
that sets `func`; this module only dispatches and turns errors into one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tiergate.oci.errors import OciError

from tiergate.core.errors import PolicyError, Refusal, TiergateError

COMMANDS = ("render", "policy", "install", "doctor", "log", "status", "metrics", "suggest", "label", "completion")

EXAMPLES = """examples:
  tiergate render --image-ref docker.io/library/nginx:1.27 --label io.tiergate.tier=restricted < config.json
  tiergate explain --tier isolated < config.json
  tiergate policy check /etc/tiergate/policy.toml
  tiergate install --engine podman
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), like every other tiergate error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed distribution's version (pyproject.toml's, via its metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tiergate")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tiergate", description="Harden every container by a tier chosen from its image's labels.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("--policy", help="policy file (default: $TIERGATE_POLICY, /etc/tiergate/policy.toml, then the shipped one)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except Refusal as exc:
        print(f"tiergate: refused: {exc}", file=sys.stderr)
        return 1
    except (PolicyError, TiergateError, OciError) as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tiergate ... | head`
        sys.stderr.close()
        return 0
    except OSError as exc:
        print(f"tiergate: {exc.filename or ''}: {exc.strerror}" if exc.strerror else f"tiergate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
