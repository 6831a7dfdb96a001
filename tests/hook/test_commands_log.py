"""`tiergate log`: time parsing, filters, table formatting (no root, no engine)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tiergate.cli import main as cli
from tiergate.cli import log as L
from tiergate.core.errors import TiergateError

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)

RECS = [
    {"time": "2026-11-24T10:00:00.000Z", "stage": "precreate", "container": "aaaaaaaaaaaa", "image": "localhost/a:1",
     "requested": "restricted", "tier": "restricted", "why": "label asks for restricted", "outcome": "allowed",
     "duration_ms": 4.2},
    {"time": "2026-11-24T11:55:00.000Z", "stage": "precreate", "container": "bbbbbbbbbbbb", "image": "reg.example/b:2",
     "requested": "privileged", "tier": "baseline", "why": "clamped to baseline " + "x" * 200, "outcome": "allowed"},
    {"time": "2026-11-24T11:58:00.000Z", "stage": "precreate", "container": "cccccccccccc", "image": "localhost/a:1",
     "requested": "restricted", "tier": "restricted", "why": "w", "outcome": "refused",
     "reason": "tier restricted refuses a container that asks for --privileged"},
    {"time": "2026-11-24T11:59:00.000Z", "stage": "createRuntime", "engine": "podman",
     "container": "c" * 64, "tier": "isolated", "network": "none", "outcome": "allowed"},
    {"time": "garbage", "stage": "precreate", "outcome": "error", "reason": "internal error: boom"},
]


@pytest.mark.parametrize("text,expected", [
    ("10m", NOW - dt.timedelta(minutes=10)), ("1h", NOW - dt.timedelta(hours=1)),
    ("30s", NOW - dt.timedelta(seconds=30)), ("2d", NOW - dt.timedelta(days=2)),
    ("1.5h", NOW - dt.timedelta(minutes=90)),
    ("2026-11-24T08:00", dt.datetime(2026, 11, 24, 8, tzinfo=UTC)),
    ("2026-11-24T08:00:00Z", dt.datetime(2026, 11, 24, 8, tzinfo=UTC)),
    ("2026-11-24T10:00:00+02:00", dt.datetime(2026, 11, 24, 8, tzinfo=UTC)),
    ("2026-11-24", dt.datetime(2026, 11, 24, tzinfo=UTC)),
])
def test_parse_since(text, expected):
    assert L.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "10", "5y", "", "-1h"])
def test_parse_since_rejects(text):
    with pytest.raises(TiergateError, match="--since"):
        L.parse_since(text, NOW)


def test_filters():
    since = L.parse_since("10m", NOW)
    assert [r["container"] for r in L.select(RECS, since=since)] == ["bbbbbbbbbbbb", "cccccccccccc", "c" * 64]
    assert [r["outcome"] for r in L.select(RECS, refused=True)] == ["refused", "error"]
    assert len(L.select(RECS, tier="restricted")) == 2
    assert len(L.select(RECS, tier="privileged")) == 1  # asked for counts too
    assert len(L.select(RECS, container="ccc")) == 2  # short and full id
    assert len(L.select(RECS, container="c" * 64)) == 2  # a full id finds the short one logged at precreate
    assert L.select(RECS, container="cc" + "d" * 62) == []
    assert len(L.select(RECS, stage="createRuntime")) == 1


def test_rows_and_table():
    rows = [L.row(r) for r in RECS]
    assert rows[0][:6] == ["2026-11-24 10:00:00", "precreate", "aaaaaaaaaaaa", "localhost/a:1", "restricted", "allowed"]
    assert rows[1][4] == "privileged->baseline"
    assert rows[2][6].startswith("tier restricted refuses")  # refusals show the reason, not the why
    assert rows[3][2] == "cccccccccccc" and rows[3][3] == "-" and rows[3][6] == "network policy none loaded"
    assert rows[4][0] == "garbage" and rows[4][4] == "-"
    text = L.render(RECS, width=140)
    lines = text.splitlines()
    assert lines[0].startswith("TIME (UTC)") and len(lines) == 6
    assert all(len(line) <= 140 for line in lines)
    assert max(len(line) for line in L.render(RECS, width=60).splitlines()) == 98 + 30  # WHY keeps 30 columns
    assert "..." in lines[2] and "\033[" not in text
    assert len(max(L.render(RECS, wide=True).splitlines(), key=len)) > 200
    assert "\033[32mallowed\033[0m" in L.render(RECS, colour=True)


def test_shorten():
    assert L.shorten("a  b\nc", 10) == "a b c"
    assert L.shorten("abcdefghij", 6) == "abc..."
    assert L.shorten(None, 5) == ""


def test_cli(tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in RECS) + "\n{torn\n")
    assert cli.main(["log", "--file", str(f), "--refused", "--json"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["outcome"] for r in out] == ["refused", "error"]
    assert cli.main(["log", "--file", str(f), "--container", "bbb"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "reg.example/b:2" in out[1]
    assert cli.main(["log", "--file", str(f), "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().err.strip() == "no matching decisions"
    assert cli.main(["log", "--file", str(tmp_path / "none.jsonl")]) == 2
    assert cli.main(["log", "--file", str(f), "--since", "soon"]) == 2


def test_rotated_part_is_read(tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    (tmp_path / "d.jsonl.1").write_text(json.dumps(RECS[0]) + "\n")
    f.write_text(json.dumps(RECS[1]) + "\n")
    assert cli.main(["log", "--file", str(f), "--json"]) == 0
    assert [json.loads(x)["container"] for x in capsys.readouterr().out.splitlines()] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
