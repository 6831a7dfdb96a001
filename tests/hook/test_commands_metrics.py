"""`tiergate metrics`: Prometheus text from the counters the hook persists with each record (no root)."""

from __future__ import annotations

import datetime as dt
import os
import re

import pytest

from tiergate.cli import main as cli
from tiergate.telemetry import counters, record
from tiergate.cli import metrics as M
from tiergate.cli.log import record_time

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


def state_of(records: list[dict]) -> dict:
    state: dict = {}
    for rec in records:
        t = record_time(rec)
        counters.add(state, rec, t.timestamp() if t else 0.0)
    return state


def write_all(log, records: list[dict]) -> None:
    for rec in records:
        assert record.write(dict(rec), str(log)) is None


def test_render():
    text = M.render(state_of(RECS))
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
    lab = 'stage="precreate",tier="restricted",outcome="allowed"'
    b = {le: s[f'tiergate_hook_duration_seconds_bucket{{{lab},le="{le}"}}']
         for le in ("0.001", "0.0025", "0.005", "0.01", "0.1", "1.0", "10.0", "+Inf")}
    assert b == {"0.001": 1, "0.0025": 1, "0.005": 2, "0.01": 2, "0.1": 2, "1.0": 2, "10.0": 2, "+Inf": 2}
    slow = 'stage="precreate",tier="restricted",outcome="refused"'
    assert s[f'tiergate_hook_duration_seconds_bucket{{{slow},le="0.1"}}'] == 0  # 250 ms: buckets reach seconds
    assert s[f'tiergate_hook_duration_seconds_bucket{{{slow},le="0.25"}}'] == 1
    assert s[f'tiergate_hook_duration_seconds_count{{{lab}}}'] == 2
    assert s[f'tiergate_hook_duration_seconds_sum{{{lab}}}'] == pytest.approx(0.0049)
    assert 'tiergate_hook_duration_seconds_count{stage="createRuntime",tier="isolated",outcome="refused"}' not in s  # "n/a"
    assert s["tiergate_records_total"] == len(RECS)
    assert s["tiergate_last_record_timestamp_seconds"] == dt.datetime(2026, 11, 24, 10, 0, 5, tzinfo=dt.UTC).timestamp()
    assert text.count("# TYPE tiergate_hook_duration_seconds histogram") == 1


def test_empty_state():
    s = parse(M.render({}))
    assert s == {"tiergate_records_total": 0, "tiergate_policy_error": 0,
                 "tiergate_last_policy_error_timestamp_seconds": 0, "tiergate_last_record_timestamp_seconds": 0}


def test_audit_would_deny_counts_per_kind():
    rec = {"stage": "precreate", "tier": "restricted", "outcome": "allowed", "mode": "audit",
           "changes": ["$.process.capabilities.bounding: would drop CAP_NET_RAW", "$.linux.seccomp: would set",
                       "$.mounts[3]: would make read-only", "$.process.capabilities.effective: would drop X"]}
    s = parse(M.render(state_of([rec, {**rec, "mode": "enforce"}])))
    assert s['tiergate_audit_would_deny_total{kind="capabilities"}'] == 2
    assert s['tiergate_audit_would_deny_total{kind="seccomp"}'] == 1
    assert s['tiergate_audit_would_deny_total{kind="mounts"}'] == 1


def test_policy_error_gauge_follows_the_last_start(tmp_path):
    log = tmp_path / "d.jsonl"
    ok = {"stage": "precreate", "tier": "baseline", "outcome": "allowed", "policy": "abcd"}
    write_all(log, [ok])
    assert parse(M.render(counters.load(counters.path_for(str(log)))))["tiergate_policy_error"] == 0
    write_all(log, [{**ok, "policy_error": "/etc/tiergate/policy.toml:2: invalid TOML"}] * 2)
    s = parse(M.render(counters.load(counters.path_for(str(log)))))
    assert s["tiergate_policy_error"] == 1 and s['tiergate_policy_errors_total{action="last_good"}'] == 2
    assert s["tiergate_last_policy_error_timestamp_seconds"] > 0
    assert s['tiergate_decisions_total{tier="baseline",outcome="allowed"}'] == 3  # the error records are not decisions
    errors = [r for r in record.read(str(log)) if r["stage"] == "policy"]
    assert len(errors) == 2 and all("policy.toml:2: invalid TOML" in r["reason"] and r["outcome"] == "error" for r in errors)
    write_all(log, [ok])
    assert parse(M.render(counters.load(counters.path_for(str(log)))))["tiergate_policy_error"] == 0


def test_counters_never_decrease_across_log_rotation(tmp_path, monkeypatch, capsys):
    """Scrape, rotate the log (twice over: the first rotated part is gone), scrape: no sample went down."""
    monkeypatch.setattr(record, "MAX_BYTES", 2000)
    log = tmp_path / "d.jsonl"
    before: dict[str, float] = {}
    for round_ in range(6):
        write_all(log, RECS)
        assert cli.main(["metrics", "--file", str(log)]) == 0
        now = parse(capsys.readouterr().out)
        for name, value in before.items():
            if "timestamp" not in name and name != "tiergate_policy_error":
                assert now.get(name, 0) >= value, (round_, name)
        before = now
    assert before["tiergate_records_total"] == 6 * len(RECS) > len(record.read(str(log)))
    assert before['tiergate_decisions_total{tier="restricted",outcome="allowed"}'] == 12


def test_journal_without_journald_falls_back_to_the_file_log(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERGATE_JOURNAL_SOCKET", str(tmp_path / "no-journald"))
    monkeypatch.setattr(record, "file_log", lambda: str(tmp_path / "fallback.jsonl"))
    problem = record.write({"stage": "precreate", "tier": "baseline", "outcome": "allowed"}, "journal")
    assert problem and "record kept in" in problem and "fallback.jsonl" in problem
    (rec,) = record.read(str(tmp_path / "fallback.jsonl"))
    assert rec["log_fallback"].startswith("journal: ")
    s = parse(M.render(counters.load(counters.path_for("journal"))))
    assert s['tiergate_log_fallbacks_total{target="journal"}'] == 1


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
    assert counters.reason_kind({"reason": reason, "outcome": outcome}) == kind


def test_out_is_atomic(tmp_path, capsys):
    log = tmp_path / "d.jsonl"
    write_all(log, RECS)
    out = tmp_path / "tiergate.prom"
    out.write_text("old")
    assert cli.main(["metrics", "--file", str(log), "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    expected = M.render(counters.load(counters.path_for(str(log))))
    assert out.read_text() == expected and parse(expected)["tiergate_records_total"] == len(RECS)
    assert not os.path.exists(str(out) + ".tmp")
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert cli.main(["metrics", "--file", str(log)]) == 0
    assert capsys.readouterr().out == expected
    assert cli.main(["metrics", "--file", str(log), "--out", str(tmp_path / "nodir" / "x.prom")]) == 2


def test_state_is_rewritten_in_place_and_never_shrinks(tmp_path):
    """One inode, rewritten under the lock; a shorter state is padded (still JSON), a longer one grows."""
    log = str(tmp_path / "d.jsonl")
    path = counters.path_for(log)
    bad = {"stage": "precreate", "tier": "baseline", "outcome": "allowed", "policy": "p", "policy_error": "x" * 700}
    assert counters.update(log, bad, 1.0) is None
    inode, size = os.stat(path).st_ino, os.stat(path).st_size
    assert counters.update(log, {**bad, "policy_error": None}, 2.0) is None  # the long reason is gone
    assert (os.stat(path).st_ino, os.stat(path).st_size) == (inode, size)
    state = counters.load(path)
    assert state["records"] == 2 and state["policy_error"]["active"] == 0 and state["last_record"] == 2.0
    for n in range(40):  # new tiers: the state outgrows its room
        assert counters.update(log, {"stage": "precreate", "tier": f"tier-{n}", "outcome": "allowed"}, 3.0) is None
    assert os.stat(path).st_ino == inode and os.stat(path).st_size > size
    assert counters.load(path)["records"] == 42 and len(counters.load(path)["decisions"]) == 41
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl.counters.json", "d.jsonl.counters.json.lock"]


def test_state_unchanged_when_the_disk_is_full(tmp_path, monkeypatch):
    """No room to grow: nothing of the old state is overwritten, and the record says why."""
    log = str(tmp_path / "d.jsonl")
    rec = {"stage": "precreate", "tier": "baseline", "outcome": "allowed"}
    assert counters.update(log, rec, 1.0) is None
    before = open(counters.path_for(log), "rb").read()

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    problem = counters.update(log, {**rec, "tier": "a-new-tier-" + "x" * 600}, 2.0)
    assert problem == f"metrics state {counters.path_for(log)}: No space left on device"
    assert open(counters.path_for(log), "rb").read() == before
    assert counters.load(counters.path_for(log))["records"] == 1


def test_state_never_written_through_a_symlink(tmp_path):
    log = str(tmp_path / "d.jsonl")
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.symlink(target, counters.path_for(log))
    problem = counters.update(log, {"stage": "precreate", "tier": "baseline", "outcome": "allowed"}, 1.0)
    assert problem and problem.startswith(f"metrics state {counters.path_for(log)}: ")
    assert target.read_text() == "keep"
