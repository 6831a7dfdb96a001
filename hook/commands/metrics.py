"""`tiergate metrics`: the decision log as Prometheus text (node_exporter's textfile collector)."""

from __future__ import annotations

import os
import sys

EXAMPLES = """examples:
  tiergate metrics                              # print to stdout
  tiergate metrics --out /var/lib/node_exporter/textfile/tiergate.prom
  # cron / systemd timer, every minute:
  * * * * *  root  tiergate metrics --out /var/lib/node_exporter/textfile/tiergate.prom
"""

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# Stages that only carry out a decision already made (the network createRuntime hook).
FOLLOW_UP_STAGES = frozenset({"createRuntime"})

# (substring of the reason, kind); first match wins.
REASON_KINDS = (
    ("may get at most", "ceiling"),
    ("unknown tier", "unknown_tier"),
    ("cannot read the image's labels", "unknown_image"),
    ("refuses a container that", "escalation"),
    ("requires AppArmor", "apparmor"),
    ("network policy", "network"),
    ("weaker than tier", "verify"),
    ("not hardened", "verify"),
    ("internal error", "internal"),
)


def register(sub) -> None:
    import argparse

    c = sub.add_parser("metrics", help="write Prometheus metrics from the decision log",
                       description="Turn the decision log into Prometheus text format for node_exporter's textfile "
                       "collector: tiergate_decisions_total{tier,outcome}, tiergate_refusals_total{reason_kind}, "
                       "tiergate_hook_duration_seconds{stage} (histogram). With --out the file is written to "
                       "PATH.tmp and renamed, so the collector never reads half a file.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--file", metavar="F", help="decision log (default: $TIERGATE_LOG or /var/log/tiergate/decisions.jsonl)")
    c.add_argument("--out", metavar="PATH", help="write here atomically (PATH.tmp, then rename) instead of stdout")
    c.set_defaults(func=cmd_metrics)


def reason_kind(rec: dict) -> str:
    reason = str(rec.get("reason") or "")
    for needle, kind in REASON_KINDS:
        if needle in reason:
            return kind
    if rec.get("outcome") == "error":
        return "policy" if "policy" in reason.lower() or ".toml" in reason else "error"
    return "other"


def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def render(records: list[dict]) -> str:
    decisions: dict[tuple[str, str], int] = {}
    refusals: dict[str, int] = {}
    durations: dict[str, list[float]] = {}
    last = 0.0
    for rec in records:
        stage = str(rec.get("stage") or "unknown")
        outcome = str(rec.get("outcome") or "unknown")
        if stage not in FOLLOW_UP_STAGES or outcome != "allowed":
            key = (str(rec.get("tier") or "none"), outcome)
            decisions[key] = decisions.get(key, 0) + 1
        if outcome in ("refused", "error"):
            kind = reason_kind(rec)
            refusals[kind] = refusals.get(kind, 0) + 1
        d = rec.get("duration_ms")
        if isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0:
            durations.setdefault(stage, []).append(d / 1000.0)
        from .log import record_time

        t = record_time(rec)
        if t is not None:
            last = max(last, t.timestamp())
    out = [
        "# HELP tiergate_decisions_total Container starts tiergate decided, by granted tier and outcome.",
        "# TYPE tiergate_decisions_total counter",
    ]
    for (tier, outcome), n in sorted(decisions.items()):
        out.append(f'tiergate_decisions_total{{tier="{_esc(tier)}",outcome="{_esc(outcome)}"}} {n}')
    out += ["# HELP tiergate_refusals_total Refusals and errors (the container did not start), by kind of reason.",
            "# TYPE tiergate_refusals_total counter"]
    for kind, n in sorted(refusals.items()):
        out.append(f'tiergate_refusals_total{{reason_kind="{_esc(kind)}"}} {n}')
    out += ["# HELP tiergate_hook_duration_seconds Time one hook run took, by stage.",
            "# TYPE tiergate_hook_duration_seconds histogram"]
    for stage, values in sorted(durations.items()):
        s = _esc(stage)
        for b in BUCKETS:
            out.append(f'tiergate_hook_duration_seconds_bucket{{stage="{s}",le="{b}"}} {sum(1 for v in values if v <= b)}')
        out.append(f'tiergate_hook_duration_seconds_bucket{{stage="{s}",le="+Inf"}} {len(values)}')
        out.append(f'tiergate_hook_duration_seconds_sum{{stage="{s}"}} {round(sum(values), 6)!r}')
        out.append(f'tiergate_hook_duration_seconds_count{{stage="{s}"}} {len(values)}')
    out += ["# HELP tiergate_log_records Records in the decision log (rotated part included).",
            "# TYPE tiergate_log_records gauge", f"tiergate_log_records {len(records)}",
            "# HELP tiergate_last_record_timestamp_seconds Time of the newest record (0: none).",
            "# TYPE tiergate_last_record_timestamp_seconds gauge",
            f"tiergate_last_record_timestamp_seconds {_fmt(round(last, 3))}"]
    return "\n".join(out) + "\n"


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cmd_metrics(args) -> int:
    from .. import record

    text = render(record.read(args.file))
    if args.out:
        write_atomic(args.out, text)
    else:
        sys.stdout.write(text)
    return 0
