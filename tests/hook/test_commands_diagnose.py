"""`tiergate explain CONTAINER`: the decision from the log and the likely cause of a failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SHIPPED_POLICY
from tiergate.cli import main as cli
from tiergate.cli.diagnose import LOG_CAUSES, SYMPTOMS, causes_in_log, removed
from tiergate.core.capabilities import ENGINE_DEFAULTS
from tiergate.policy.compile import compile_file

NGINX = '2026/11/29 08:53:10 [emerg] 1#1: chown("/var/lib/nginx/body", 33) failed (1: Operation not permitted)'


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A `podman` on PATH that knows one container, `web1` (id abc123...), its exit code and output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "podman"
    script.write_text("#!/bin/sh\n"
                      'case "$1 $4" in\n'
                      '  "inspect web1") case "$3" in *Id*) echo abc123def4567890;; '
                      '*) echo "exit status 1 (exited)";; esac;;\n'
                      f"  \"logs web1\") echo '{NGINX}' >&2;;\n"
                      "  *) exit 125;;\n"
                      "esac\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("TIERGATE_CACHE_DIR", str(tmp_path / "cache"))


def write_log(path: Path, tier: str = "web") -> Path:
    recs = [{"stage": "precreate", "engine": "podman", "container": "abc123def456", "image": "localhost/x:1",
             "tier": tier, "requested": tier, "why": "label asks", "outcome": "allowed",
             "changes": ["$.process.capabilities.bounding: dropped CAP_CHOWN"]},
            {"stage": "precreate", "container": "ffff00000000", "tier": "baseline", "outcome": "allowed"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def explain(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(["--policy", str(SHIPPED_POLICY), "explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_name_resolves_and_the_log_line_names_the_capability(capsys, fake_engine, tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl")
    code, out, err = explain(capsys, ["web1", "--log", str(log)])
    assert code == 0, err
    assert "tier: web" in out and "exit status 1 (exited)" in out
    assert f"  CAP_CHOWN, which tier web removes: {NGINX}" in out
    assert "CAP_SETGID: setgid/setgroups/initgroups fail with EPERM" in out  # the tier's other drops
    assert "network policy web" in out


def test_a_cause_the_tier_did_not_remove_is_not_blamed(capsys, fake_engine, tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", tier="baseline")  # baseline keeps CAP_CHOWN
    code, out, _ = explain(capsys, ["web1", "--log", str(log)])
    assert code == 0 and "tier: baseline" in out and "most likely" not in out


def test_unknown_container_is_one_line_exit_2(capsys, fake_engine, tmp_path: Path) -> None:
    code, out, err = explain(capsys, ["nosuch", "--log", str(write_log(tmp_path / "d.jsonl"))])
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("tiergate: no decision")


def test_log_patterns_and_what_each_tier_removes() -> None:
    lines = ["[alert] 7#7: setgid(33) failed (1: Operation not permitted)", "touch: /x: Read-only file system",
             "Error: spawn EPERM", "socket: Operation not permitted", "nginx: [emerg] bind() to 0.0.0.0:80 failed "
             "(13: Permission denied)", "all good"]
    assert [c for c, _ in causes_in_log(lines)] == [
        "CAP_SETGID", "the read-only root filesystem", "the seccomp profile (process creation)",
        "the seccomp profile (socket families)", "CAP_NET_BIND_SERVICE"]
    policy = compile_file(SHIPPED_POLICY)
    assert removed(policy["tiers"]["privileged"]) == set()
    assert "the read-only root filesystem" in removed(policy["tiers"]["payment-worker"])
    assert "CAP_CHOWN" not in removed(policy["tiers"]["baseline"])
    assert set(SYMPTOMS) == ENGINE_DEFAULTS  # one symptom per capability an engine grants
    assert {c for _, c in LOG_CAUSES if c.startswith("CAP_")} <= set(SYMPTOMS)


def test_a_refused_container_says_so(capsys, fake_engine, tmp_path: Path) -> None:
    log = tmp_path / "d.jsonl"
    log.write_text(json.dumps({"stage": "precreate", "container": "abc123def456", "image": "x", "tier": None,
                               "outcome": "refused", "reason": "--privileged is not allowed"}) + "\n")
    code, out, _ = explain(capsys, ["web1", "--log", str(log)])
    assert code == 0 and "why:  --privileged is not allowed" in out and "did not start" in out
    assert "likely causes" not in out
