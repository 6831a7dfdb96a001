"""tiergate.telemetry.record: the JSON-lines decision log; concurrent writers never tear or lose a line."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from tiergate.telemetry import record

WRITERS, PER_WRITER = 8, 200


def _writer(path: str, n: int, count: int) -> None:
    for i in range(count):
        # records of very different sizes make torn writes visible
        problem = record.write({"writer": n, "seq": i, "pad": "x" * ((i * 37) % 3000)}, path)
        assert problem is None, problem


def test_concurrent_writers_never_interleave_or_lose_records(tmp_path: Path) -> None:
    """8 processes x 200 records: every line is complete JSON and each (writer, seq) appears exactly once."""
    path = str(tmp_path / "log" / "decisions.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, n, PER_WRITER)) for n in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = Path(path).read_bytes().split(b"\n")
    assert lines[-1] == b""
    recs = [json.loads(line) for line in lines[:-1]]  # raises on any torn line
    assert len(recs) == WRITERS * PER_WRITER
    assert sorted((r["writer"], r["seq"]) for r in recs) == [(w, s) for w in range(WRITERS) for s in range(PER_WRITER)]
    assert all(r["time"].endswith("Z") for r in recs)
    assert record.read(path) == recs


def test_record_is_one_ascii_line(tmp_path: Path) -> None:
    """Hostile text in a record stays on one line (escaped), and non-JSON values are stringified."""
    path = tmp_path / "d.jsonl"
    assert record.write({"reason": "a\nb\x00\u202e\u0456", "path": tmp_path}, str(path)) is None
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1 and raw.isascii()
    rec = json.loads(raw)
    assert rec["reason"] == "a\nb\x00\u202e\u0456" and rec["path"] == str(tmp_path)


@pytest.mark.parametrize("where", ["under a regular file", "in /proc"])
def test_unwritable_log_returns_one_line_problem(tmp_path: Path, where: str) -> None:
    """A log that cannot be written is reported as one line, never raised (runs as root: no chmod tricks)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = str(blocker / "log" / "d.jsonl") if where == "under a regular file" else "/proc/tiergate/d.jsonl"
    problem = record.write({"x": 1}, path)
    assert problem is not None and problem.startswith(f"decision log {path}: ")
    assert "\n" not in problem


def test_log_symlink_is_not_followed(tmp_path: Path) -> None:
    """The log file itself is opened with O_NOFOLLOW: a symlink planted there is not written through."""
    target = tmp_path / "target"
    target.write_text("")
    (tmp_path / "d.jsonl").symlink_to(target)
    problem = record.write({"x": 1}, str(tmp_path / "d.jsonl"))
    assert problem is not None and target.read_text() == ""


def test_rotation_keeps_every_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_BYTES the file moves to .1; read() returns old and new records in order."""
    monkeypatch.setattr(record, "MAX_BYTES", 200)
    path = str(tmp_path / "d.jsonl")
    for i in range(10):
        assert record.write({"i": i, "pad": "y" * 50}, path) is None
    assert Path(path + ".1").exists()
    got = [r["i"] for r in record.read(path)]
    assert got[-1] == 9 and got == sorted(got) and len(set(got)) == len(got)


def test_read_skips_torn_and_foreign_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": \n[1, 2]\nnot json\n{"c": 3}\n')
    assert record.read(str(path)) == [{"a": 1}, {"c": 3}]


def test_log_path_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERGATE_LOG", "/x/y.jsonl")
    assert record.log_path() == "/x/y.jsonl"
    assert record.log_path("/a.jsonl") == "/a.jsonl"
