"""The decision log sent to systemd-journald: one native-protocol datagram per record."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from tiergate.telemetry import record


@pytest.fixture(autouse=True)
def _private_file_log(tmp_path, monkeypatch):
    """The metrics state (and journald's fallback) live beside the default file log: keep them in tmp."""
    monkeypatch.setattr(record, "file_log", lambda: str(tmp_path / "fallback.jsonl"))


def test_record_goes_to_the_journal_socket(tmp_path, monkeypatch) -> None:
    """With the target "journal", write() sends MESSAGE/PRIORITY/SYSLOG_IDENTIFIER/TIERGATE_RECORD to the socket."""
    path = tmp_path / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    monkeypatch.setenv("TIERGATE_JOURNAL_SOCKET", str(path))
    rec = {"stage": "precreate", "container": "ab" * 32, "tier": "restricted", "outcome": "refused",
           "reason": "tier restricted refuses a container that runs --privileged\nwith a newline"}
    try:
        assert record.write(dict(rec), record.JOURNAL) is None
        data = server.recv(65536).decode()
    finally:
        server.close()
    fields = dict(line.split("=", 1) for line in data.splitlines())
    assert fields["SYSLOG_IDENTIFIER"] == "tiergate" and fields["PRIORITY"] == "4"
    assert fields["MESSAGE"].startswith("tiergate precreate: refused abababababab tier restricted: ")
    got = json.loads(fields["TIERGATE_RECORD"])
    assert got["reason"] == rec["reason"] and got["outcome"] == "refused"


def test_no_journal_is_one_line_problem(tmp_path, monkeypatch) -> None:
    """No journald listening: the problem comes back as one line, nothing raises."""
    monkeypatch.setenv("TIERGATE_JOURNAL_SOCKET", str(tmp_path / "absent.sock"))
    problem = record.write({"stage": "precreate", "outcome": "allowed"}, record.JOURNAL)
    assert problem and problem.startswith("journal: ") and "\n" not in problem


def test_journal_is_read_back_through_journalctl(tmp_path, monkeypatch) -> None:
    """read("journal") takes the TIERGATE_RECORD field of `journalctl -o json` lines; junk is skipped."""
    fake = tmp_path / "journalctl"
    lines = [json.dumps({"TIERGATE_RECORD": json.dumps({"stage": "precreate", "tier": "isolated"})}),
             "not json", json.dumps({"MESSAGE": "no record"})]
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(lines) + "\nEOF\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(record, "INFLIGHT_JOURNAL", str(tmp_path / "inflight"))
    assert record.read(record.JOURNAL) == [{"stage": "precreate", "tier": "isolated"}]
