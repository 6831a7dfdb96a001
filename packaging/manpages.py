"""Write man pages from the CLI's own argparse help: tiergate(1) and tiergate-COMMAND(1) per subcommand.

Run at package build time (debian/rules): python3 packaging/manpages.py OUT_DIR.
The text is argparse's --help, so the pages say what the installed CLI says.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path


def _roff(text: str) -> str:
    """Help text as roff lines: escapes, and no line starting with a control character."""
    out = []
    for line in text.rstrip("\n").splitlines():
        line = line.replace("\\", "\\e")
        out.append(("\\&" + line) if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _sections(help_text: str) -> tuple[str, list[tuple[str, str]]]:
    """argparse help split into the usage line(s) and (heading, body) sections."""
    usage, rest = help_text.split("\n\n", 1) if "\n\n" in help_text else (help_text, "")
    sections, head, body = [], "DESCRIPTION", []
    for line in rest.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith(":"):
            if body:
                sections.append((head, "\n".join(body).strip("\n")))
            head, body = line.rstrip(":").upper(), []
        else:
            body.append(line)
    if body:
        sections.append((head, "\n".join(body).strip("\n")))
    return usage.removeprefix("usage: "), sections


def page(name: str, summary: str, parser: argparse.ArgumentParser, version: str, see_also: list[str]) -> str:
    os.environ["COLUMNS"] = "80"  # argparse wraps to the terminal: make pages reproducible
    usage, sections = _sections(parser.format_help())
    date = datetime.datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or 0,
                                           datetime.UTC).strftime("%Y-%m-%d")
    lines = [f'.TH {name.upper()} 1 "{date}" "tiergate {version}" "User Commands"',
             ".SH NAME", f"{name} \\- {summary}", ".SH SYNOPSIS", ".nf", _roff(usage), ".fi"]
    for head, body in sections:
        lines += [f".SH {head}", ".nf", _roff(body), ".fi"]
    lines += [".SH SEE ALSO", ", ".join(f"\\fB{s}\\fR(1)" for s in see_also)]
    return "\n".join(lines) + "\n"


def main(out_dir: str) -> int:
    from tiergate.cli import main as cli
    from tiergate.cli.completion import _subparsers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parser = cli.parser()
    version = cli.version()
    commands = _subparsers(parser)
    names = [f"tiergate-{c}" for c in commands]
    (out / "tiergate.1").write_text(page("tiergate", parser.description.rstrip(".").lower(), parser, version, names))
    helps = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
    for cmd, sub in commands.items():
        summary = helps.get(cmd) or (sub.description or cmd)
        (out / f"tiergate-{cmd}.1").write_text(page(f"tiergate-{cmd}", summary, sub, version, ["tiergate"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
