"""`tiergate metrics`: tiergate's persisted counters as Prometheus text (node_exporter's textfile collector).

The counters are kept by the hook itself with every record (tiergate/telemetry/counters.py), so they
survive log rotation and never go down."""

from __future__ import annotations

import sys

EXAMPLES = """examples:
  tiergate metrics                              # print to stdout
  tiergate metrics --out /var/lib/node_exporter/textfile/tiergate.prom
  # cron / systemd timer, every minute:
  * * * * *  root  tiergate metrics --out /var/lib/node_exporter/textfile/tiergate.prom
"""


def register(sub) -> None:
    import argparse

    c = sub.add_parser("metrics", help="write Prometheus metrics (counters kept beside the decision log)",
                       description="Print the counters the hook keeps beside its decision log (LOG.counters.json; they "
                       "survive log rotation and never decrease) in Prometheus text format for node_exporter's textfile "
                       "collector: tiergate_decisions_total{tier,outcome}, tiergate_refusals_total{reason_kind}, "
                       "tiergate_audit_would_deny_total{kind}, tiergate_policy_errors_total{action}, "
                       "tiergate_policy_error (gauge), tiergate_hook_duration_seconds{stage,tier,outcome} (histogram, "
                       "1 ms to 10 s). With --out the file is written to PATH.tmp and renamed, so the collector never "
                       "reads half a file.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--file", metavar="F", help="decision log (default: $TIERGATE_LOG or /var/log/tiergate/decisions.jsonl)")
    c.add_argument("--out", metavar="PATH", help="write here atomically (PATH.tmp, then rename) instead of stdout")
    c.set_defaults(func=cmd_metrics)


def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def _labels(names: tuple[str, ...], key: str) -> str:
    from tiergate.telemetry.counters import SEP

    return ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, key.split(SEP)))


def render(state: dict) -> str:
    """Prometheus text from the persisted counters (see tiergate/telemetry/counters.py)."""
    from tiergate.telemetry.counters import BUCKETS

    out: list[str] = []

    def family(name: str, kind: str, help_text: str, table: str, labels: tuple[str, ...]) -> None:
        out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        for key, n in sorted((state.get(table) or {}).items()):
            out.append(f"{name}{{{_labels(labels, key)}}} {_fmt(n)}")

    family("tiergate_decisions_total", "counter", "Container starts tiergate decided, by granted tier and outcome.",
           "decisions", ("tier", "outcome"))
    family("tiergate_refusals_total", "counter", "Refusals and errors (the container did not start), by kind of reason.",
           "refusals", ("reason_kind",))
    family("tiergate_audit_would_deny_total", "counter",
           "Audit mode: changes enforcement would have made, by kind (capabilities, seccomp, mounts, ...).",
           "would_deny", ("kind",))
    family("tiergate_policy_errors_total", "counter", "Starts that found the policy broken: run on the last good "
           "policy (last_good) or refused for want of one (refused).", "policy_errors", ("action",))
    family("tiergate_log_fallbacks_total", "counter", "Records journald could not take, kept in the file log instead.",
           "log_fallbacks", ("target",))
    out += ["# HELP tiergate_hook_duration_seconds Time one hook or shim run took, by stage, tier and outcome.",
            "# TYPE tiergate_hook_duration_seconds histogram"]
    for key, h in sorted((state.get("durations") or {}).items()):
        lab = _labels(("stage", "tier", "outcome"), key)
        for b, n in zip(BUCKETS, h.get("buckets") or []):
            out.append(f'tiergate_hook_duration_seconds_bucket{{{lab},le="{b}"}} {n}')
        out.append(f'tiergate_hook_duration_seconds_bucket{{{lab},le="+Inf"}} {h.get("count", 0)}')
        out.append(f'tiergate_hook_duration_seconds_sum{{{lab}}} {_fmt(h.get("sum", 0))}')
        out.append(f'tiergate_hook_duration_seconds_count{{{lab}}} {h.get("count", 0)}')
    perr = state.get("policy_error") or {}
    out += ["# HELP tiergate_records_total Records written to the decision log.",
            "# TYPE tiergate_records_total counter", f"tiergate_records_total {state.get('records', 0)}",
            "# HELP tiergate_policy_error 1 while the policy file does not compile (the last start said so), else 0.",
            "# TYPE tiergate_policy_error gauge", f"tiergate_policy_error {perr.get('active', 0)}",
            "# HELP tiergate_last_policy_error_timestamp_seconds When a start last found the policy broken (0: never).",
            "# TYPE tiergate_last_policy_error_timestamp_seconds gauge",
            f"tiergate_last_policy_error_timestamp_seconds {_fmt(round(perr.get('time', 0), 3))}",
            "# HELP tiergate_last_record_timestamp_seconds Time of the newest record (0: none).",
            "# TYPE tiergate_last_record_timestamp_seconds gauge",
            f"tiergate_last_record_timestamp_seconds {_fmt(round(state.get('last_record', 0), 3))}"]
    return "\n".join(out) + "\n"


def cmd_metrics(args) -> int:
    from tiergate.telemetry import counters, record
    from tiergate.policy.cache import write_atomic

    text = render(counters.load(counters.path_for(record.log_path(args.file))))
    if args.out:
        write_atomic(args.out, text)
    else:
        sys.stdout.write(text)
    return 0
