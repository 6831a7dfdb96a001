"""`tiergate log`: the decision log as a table, filtered by time, container, tier and outcome.

Also home of the small helpers the other operator commands share: `table()`
(plain aligned columns, colour only on a terminal), `parse_since()` and
`record_time()`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys

from tiergate.core.names import DECISION_STAGES

EXAMPLES = """examples:
  tiergate log                                  # every decision, oldest first
  tiergate log --since 10m --refused            # what was refused in the last ten minutes
  tiergate log --container 13dc0b9ac8f1         # one container (an id prefix)
  tiergate log --tier restricted --since 2026-11-24T08:00
  tiergate log --file /tmp/decisions.jsonl --json | jq .why
"""

NOT_ALLOWED = ("refused", "error")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_COLOURS = {"ok": "32", "allowed": "32", "warn": "33", "fail": "31", "refused": "31", "error": "31"}


# -- shared helpers ----------------------------------------------------------

def use_colour(stream=None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def shorten(text: object, width: int) -> str:
    s = " ".join(str(text if text is not None else "").split())
    if len(s) <= width:
        return s
    return s[: max(width - 3, 0)] + "..." if width > 3 else s[:max(width, 0)]


def table(headers: list[str], rows: list[list[str]], colour_col: int | None = None,
          colour: bool = False, last_width: int | None = None) -> str:
    """Left-aligned columns separated by two spaces; the last column may be cut to last_width."""
    rows = [[str(c) for c in r] for r in rows]
    if last_width is not None:
        rows = [r[:-1] + [shorten(r[-1], last_width)] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    out = []
    for n, r in enumerate([headers] + rows):
        cells = []
        for i, c in enumerate(r):
            pad = c.ljust(widths[i]) if i < len(r) - 1 else c
            if colour and n and i == colour_col and c in _COLOURS:
                pad = f"\033[{_COLOURS[c]}m{c}\033[0m" + pad[len(c):]
            cells.append(pad)
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def terminal_width(default: int = 160) -> int:
    """The terminal's columns; CI logs (no tty) get a wide default so lines stay whole."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size((default, 24)).columns
    return int(os.environ.get("COLUMNS") or default)


def record_time(rec: dict) -> dt.datetime | None:
    """A record's time as an aware UTC datetime (None when absent or malformed)."""
    value = rec.get("time")
    if not isinstance(value, str):
        return None
    try:
        return _parse_iso(value)
    except ValueError:
        return None


def _parse_iso(text: str) -> dt.datetime:
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    t = dt.datetime.fromisoformat(text)
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """`30s`, `10m`, `1h`, `2d`, `1w` (ago), or an ISO date/time (UTC unless it has an offset)."""
    from tiergate.core.errors import TiergateError

    now = now or dt.datetime.now(dt.UTC)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        return now - dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        return _parse_iso(text)
    except ValueError:
        raise TiergateError(f"--since {text!r}: expected a duration such as 10m, 1h, 2d "
                            "or an ISO time such as 2026-11-24T08:00 (UTC)") from None


def same_container(wanted: str, logged: object) -> bool:
    """An id prefix matches a logged id; a logged short id (12) matches a longer id asked for."""
    if not isinstance(logged, str) or not logged or not wanted:
        return False
    w, l = wanted.lower(), logged.lower()
    return l.startswith(w) or (len(l) >= 12 and w.startswith(l))


# -- the command ---------------------------------------------------------------

def register(sub) -> None:
    import argparse

    c = sub.add_parser("log", help="show the decision log as a table, with filters",
                       description="Show tiergate's decision log (one JSON line per hook run) as a table: "
                       "time (UTC), container, image, tier asked -> granted, outcome, and why (or the refusal).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--file", metavar="F", help="decision log (default: $TIERGATE_LOG or /var/log/tiergate/decisions.jsonl; "
                   "F.1, the rotated part, is read too)")
    c.add_argument("--since", metavar="WHEN", help="only records at or after WHEN: 10m, 1h, 2d ago or an ISO time (UTC)")
    c.add_argument("--container", metavar="ID", help="only this container: its full or short id (a prefix), or its name")
    c.add_argument("--tier", metavar="T", help="only decisions that granted (or asked for) tier T")
    c.add_argument("--stage", metavar="S", help="only this hook stage (precreate, createRuntime, prestart, ...)")
    c.add_argument("--refused", action="store_true", help="only refusals and errors (the container did not start)")
    c.add_argument("--would-deny", action="store_true",
                   help="audit mode: what enforcement would have changed or refused, per container")
    c.add_argument("--json", action="store_true", help="print the matching records as JSON lines")
    c.add_argument("--wide", action="store_true", help="do not shorten the why column")
    c.set_defaults(func=cmd_log)


def select(records: list[dict], since: dt.datetime | None = None, container: str | None = None,
           tier: str | None = None, refused: bool = False, stage: str | None = None) -> list[dict]:
    out = []
    for rec in records:
        if since is not None:
            t = record_time(rec)
            if t is None or t < since:
                continue
        if container and not (same_container(container, rec.get("container")) or container == rec.get("name")):
            continue
        if tier and tier not in (rec.get("tier"), rec.get("requested")):
            continue
        if refused and rec.get("outcome") not in NOT_ALLOWED:
            continue
        if stage and rec.get("stage") != stage:
            continue
        out.append(rec)
    return out


def asked_granted(rec: dict) -> str:
    asked, granted = rec.get("requested"), rec.get("tier")
    if not asked and not granted:
        return "-"
    if not asked or asked == granted:
        return str(granted or asked)
    return f"{asked}->{granted or '-'}"


def row(rec: dict) -> list[str]:
    t = record_time(rec)
    when = t.strftime("%Y-%m-%d %H:%M:%S") if t else str(rec.get("time", "-"))
    container = str(rec.get("container") or "-")[:12]
    image = str(rec.get("image") or "-")
    outcome = str(rec.get("outcome") or "-")
    stage = str(rec.get("stage") or "-")
    why = rec.get("reason") if outcome in NOT_ALLOWED else rec.get("why")
    if not why and rec.get("network"):
        why = f"network policy {rec['network']} loaded"
    return [when, stage, container, image, asked_granted(rec), outcome, str(why or "")]


HEADERS = ["TIME (UTC)", "STAGE", "CONTAINER", "IMAGE", "TIER", "OUTCOME", "WHY"]


def render(records: list[dict], width: int = 160, wide: bool = False, colour: bool = False) -> str:
    rows = [row(r) for r in records]
    if not rows:
        return ""
    fixed = sum(max([len(HEADERS[i])] + [len(r[i]) for r in rows]) + 2 for i in range(len(HEADERS) - 1))
    last = None if wide else max(width - fixed, 30)
    return table(HEADERS, rows, colour_col=5, colour=colour, last_width=last)


def cmd_log(args) -> int:
    from tiergate.telemetry import record

    path = record.log_path(args.file)
    if path != record.JOURNAL and not os.path.exists(path) and not os.path.exists(path + ".1"):
        print(f"tiergate: no decision log at {path} (nothing decided yet, or pass --file)", file=sys.stderr)
        return 2
    since = parse_since(args.since) if args.since else None
    records = select(record.read(path), since, args.container, args.tier, args.refused, args.stage)
    if args.would_deny:
        records = [r for r in records if r.get("mode") == "audit" and r.get("stage") in (*DECISION_STAGES, None)]
        if not args.json:
            print(would_deny(records) if records else "no audit-mode decisions", file=sys.stdout if records else sys.stderr)
            return 0
    if args.json:
        for rec in records:
            sys.stdout.write(json.dumps(rec, separators=(",", ":"), sort_keys=False) + "\n")
        return 0
    if not records:
        print("no matching decisions", file=sys.stderr)
        return 0
    print(render(records, terminal_width(), args.wide, use_colour()))
    return 0


def would_deny(records: list[dict]) -> str:
    """Audit records as a list: per container, each change enforcement would have made."""
    out = []
    for rec in records:
        out.append(f"{rec.get('time', '?')}  {str(rec.get('container', ''))[:12]}  {rec.get('image', '')}  tier {rec.get('tier')}")
        for change in rec.get("changes") or []:
            out.append(f"    {change}")
        if rec.get("notes"):
            out.append(f"    notes: {rec['notes']}")
    return "\n".join(out)
