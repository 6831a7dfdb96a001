"""`tiergate metrics`: Prometheus text from decision records (no root)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re

import pytest

from tiergate.hook import cli
from tiergate.hook.commands import metrics as M

RECS = [
    {"time": "2026-11-24T10:00:00.000Z", "stage": "precreate", "tier": "restricted", "outcome": "allowed", "duration_ms": 0.9},
    {"time": "2026-11-24T10:00:01.000Z", "stage": "precreate", "tier": "restricted", "outcome": "allowed", "duration_ms": 4.0},
    {"time": "2026-11-24T10:00:02.000Z", "stage": "createRuntime", "tier": "isolated", "outcome": "allowed", "duration_ms": 30},
    {"time": "2026-11-24T10:00:03.000Z", "stage": "precreate", "tier": "restricted", "outcome": "refused", "duration_ms": 250,
     "reason": "tier restricted refuses a container that asks for --privileged"},
    {"time": "2026-11-24T10:00:04.000Z", "stage": "precreate", "outcome": "refused",
     "reason": "reg/x:1 asks for tier privileged (label) but may get at most baseline (trust[1])"},
    {"time": "2026-11-24T10:00:05.000Z", "stage": "precreate", "outcome": "error", "reason": "internal error: KeyError: 'x'"},
    {"stage": "createRuntime", "tier": "isolated", "outcome": "refused",
     "reason": "cannot apply network policy none: nft failed", "duration_ms": "n/a"},
    {"stage": "precreate", "tier": 'we"ird\\', "outcome": "allowed"},
]


def parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.fullmatch(r"# (HELP tiergate_\w+ .+|TYPE tiergate_\w+ (counter|gauge|histogram))", line)
            continue
        m = re.fullmatch(r'(tiergate_\w+(?:\{(?:\w+="(?:[^"\\]|\\.)*",?)+\})?) (\S+)', line)
        assert m, line
        out[m.group(1)] = float(m.group(2))
    return out


def test_render():
    text = M.render(RECS)
    assert text.endswith("\n")
    s = parse(text)
    assert s['tiergate_decisions_total{tier="restricted",outcome="allowed"}'] == 2
    assert s['tiergate_decisions_total{tier="restricted",outcome="refused"}'] == 1
    assert s['tiergate_decisions_total{tier="none",outcome="refused"}'] == 1
    assert s['tiergate_decisions_total{tier="none",outcome="error"}'] == 1
    assert s['tiergate_decisions_total{tier="isolated",outcome="refused"}'] == 1  # a failed follow-up counts
    assert 'tiergate_decisions_total{tier="isolated",outcome="allowed"}' not in s  # an allowed follow-up does not
    assert s['tiergate_decisions_total{tier="we\\"ird\\\\",outcome="allowed"}'] == 1
    assert s['tiergate_refusals_total{reason_kind="escalation"}'] == 1
    assert s['tiergate_refusals_total{reason_kind="ceiling"}'] == 1
    assert s['tiergate_refusals_total{reason_kind="internal"}'] == 1
    assert s['tiergate_refusals_total{reason_kind="network"}'] == 1
    b = {le: s[f'tiergate_hook_duration_seconds_bucket{{stage="precreate",le="{le}"}}']
         for le in ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "+Inf")}
    assert b == {"0.001": 1, "0.0025": 1, "0.005": 2, "0.01": 2, "0.025": 2, "0.05": 2, "0.1": 2, "+Inf": 3}
    assert s['tiergate_hook_duration_seconds_count{stage="precreate"}'] == 3
    assert s['tiergate_hook_duration_seconds_sum{stage="precreate"}'] == pytest.approx(0.2549)
    assert s['tiergate_hook_duration_seconds_count{stage="createRuntime"}'] == 1  # "n/a" skipped
    assert s["tiergate_log_records"] == len(RECS)
    assert s["tiergate_last_record_timestamp_seconds"] == dt.datetime(2026, 11, 24, 10, 0, 5, tzinfo=dt.timezone.utc).timestamp()
    # each TYPE line precedes its samples, once
    assert text.count("# TYPE tiergate_hook_duration_seconds histogram") == 1


def test_empty_log():
    s = parse(M.render([]))
    assert s == {"tiergate_log_records": 0, "tiergate_last_record_timestamp_seconds": 0}


@pytest.mark.parametrize("reason,outcome,kind", [
    ("unknown tier 'x' asked by label", "refused", "unknown_tier"),
    ("cannot read the image's labels (gone); the policy refuses unknown images", "refused", "unknown_image"),
    ("tier t requires AppArmor, which this host does not offer", "refused", "apparmor"),
    ("container is weaker than tier t: $.process: x", "refused", "verify"),
    ("/etc/tiergate/policy.toml:3: bad", "error", "policy"),
    ("the hook state has no pid", "error", "error"),
    ("something new", "refused", "other"),
])
def test_reason_kind(reason, outcome, kind):
    assert M.reason_kind({"reason": reason, "outcome": outcome}) == kind


def test_out_is_atomic(tmp_path, capsys):
    log = tmp_path / "d.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in RECS) + "\n")
    out = tmp_path / "tiergate.prom"
    out.write_text("old")
    assert cli.main(["metrics", "--file", str(log), "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert out.read_text() == M.render(RECS)
    assert not os.path.exists(str(out) + ".tmp")
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert cli.main(["metrics", "--file", str(log)]) == 0
    assert capsys.readouterr().out == M.render(RECS)
    assert cli.main(["metrics", "--file", str(log), "--out", str(tmp_path / "nodir" / "x.prom")]) == 2
