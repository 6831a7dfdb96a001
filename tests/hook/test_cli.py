"""tiergate render / explain / policy check: exit 0, 1 (refused), 2 (bad input); errors are one line on stderr."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from helpers import (SHIPPED_POLICY, TIERS, assert_no_traceback, docker_bundle, privileged_like, run,
                     runc_default, shipped_policy, weaknesses)
from tiergate.cli import main as cli
from tiergate.core.spec import validate as validate_spec
from spec_schema import validate_config

class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No system policy or cache is touched: shipped policy, cache in tmp_path."""
    monkeypatch.setenv("TIERGATE_POLICY", str(SHIPPED_POLICY))
    monkeypatch.setenv("TIERGATE_CACHE_DIR", str(tmp_path / "cache"))


def tg(capsys, monkeypatch, argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", _Stdin(stdin))
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n") and err.startswith("tiergate"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("tier", TIERS)
def test_render_each_tier_validates(capsys, monkeypatch, tier: str) -> None:
    """render --tier T prints a schema-valid, parseable, never-weaker config.json; exit 0, stderr empty."""
    code, out, err = tg(capsys, monkeypatch, ["render", "--tier", tier], json.dumps(docker_bundle()).encode())
    assert (code, err) == (0, "")
    spec = json.loads(out)
    assert validate_config(spec) == []
    validate_spec(spec)
    policy = shipped_policy()
    assert weaknesses(spec, policy["tiers"][tier], policy) == []
    assert spec["annotations"]["io.tiergate.tier"] == tier


def test_render_from_a_file_and_labels(capsys, monkeypatch, tmp_path: Path) -> None:
    """--config FILE and --image-ref/--label decide like the hook: a label within the ceiling is honoured."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(runc_default()))
    code, out, err = tg(capsys, monkeypatch, ["render", "--config", str(path), "--image-ref", "docker.io/library/nginx:1.27",
                                              "--label", "io.tiergate.tier=restricted"])
    assert code == 0 and json.loads(out)["annotations"]["io.tiergate.tier"] == "restricted"


def test_render_clamps_above_the_ceiling(capsys, monkeypatch) -> None:
    code, out, _ = tg(capsys, monkeypatch, ["render", "--image-ref", "docker.io/x:1", "--label", "io.tiergate.tier=privileged"],
                      json.dumps(runc_default()).encode())
    assert code == 0 and json.loads(out)["annotations"]["io.tiergate.tier"] == "baseline"


ERRORS = [
    ("unknown --tier is a refusal", ["render", "--tier", "gold"], json.dumps(runc_default()).encode(), 1,
     "tiergate: refused: unknown tier 'gold'; valid tiers: "),
    ("unknown label tier is a refusal", ["render", "--image-ref", "x", "--label", "io.tiergate.tier=../../etc"],
     json.dumps(runc_default()).encode(), 1, "tiergate: refused: unknown tier '../../etc' asked by label"),
    ("escalation under restricted is a refusal", ["render", "--tier", "restricted"], json.dumps(privileged_like()).encode(), 1,
     "tiergate: refused: tier restricted refuses a container that "),
    ("explain refuses the same way", ["explain", "--tier", "restricted"], json.dumps(privileged_like()).encode(), 1,
     "tiergate: refused: tier restricted refuses a container that "),
    ("malformed JSON", ["render", "--tier", "baseline"], b'{"ociVersion": ', 2, "tiergate: invalid JSON in config"),
    ("not an object", ["render", "--tier", "baseline"], b"[]", 2, "tiergate: expected an object @ $"),
    ("wrong type", ["render", "--tier", "baseline"], json.dumps(dict(runc_default(), mounts="x")).encode(), 2,
     "tiergate: expected a"),
    ("duplicate keys", ["render", "--tier", "baseline"], b'{"ociVersion": "1.0.2", "ociVersion": "1.0.2"}', 2,
     "tiergate: duplicate key 'ociVersion'"),
    ("not UTF-8", ["render", "--tier", "baseline"], b'{"a": "\xff"}', 2, "tiergate: config is not valid UTF-8"),
    ("label without =", ["render", "--image-ref", "x", "--label", "novalue"], json.dumps(runc_default()).encode(), 2,
     "tiergate: --label 'novalue': expected KEY=VALUE"),
    ("missing config file", ["render", "--tier", "baseline", "--config", "/nonexistent/config.json"], b"", 2,
     "tiergate: /nonexistent/config.json: No such file or directory"),
]


@pytest.mark.parametrize(("argv", "stdin", "code", "start"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_exit_code_and_one_line(capsys, monkeypatch, argv, stdin: bytes, code: int, start: str) -> None:
    """Refusals exit 1, bad input exits 2; stdout stays empty and stderr is one line."""
    got, out, err = tg(capsys, monkeypatch, argv, stdin)
    assert got == code and out == ""
    one_line(err)
    assert err.startswith(start), err


def test_bad_vectors_are_bad_input(capsys, monkeypatch, data_dir: Path) -> None:
    """Every runtime-spec bad vector is exit 2 with one line (never a traceback)."""
    for path in sorted((data_dir / "oci-runtime-spec/test/config/bad").glob("*.json")):
        code, out, err = tg(capsys, monkeypatch, ["render", "--tier", "baseline"], path.read_bytes())
        assert code == 2 and out == "", path.name
        one_line(err)


def test_explain_says_which_rule_and_what_changes(capsys, monkeypatch) -> None:
    """explain names the tier, the rule that chose it, and each change with its reason."""
    code, out, err = tg(capsys, monkeypatch, ["explain", "--image-ref", "docker.io/x:1", "--label", "io.tiergate.tier=privileged"],
                        json.dumps(privileged_like()).encode())
    assert (code, err) == (0, "")
    assert out.startswith("tier: baseline - ")
    assert "why:  label io.tiergate.tier asks for privileged, clamped to baseline" in out
    assert "trust[0] match '*'" in out
    assert "seccomp: profile baseline" in out and "denied (errno 1): " in out and "because " in out
    assert "  - $.linux.devices: removed 3 host devices" in out and "      because tier baseline" in out


def test_explain_of_an_already_hardened_spec_has_no_changes(capsys, monkeypatch) -> None:
    _, rendered, _ = tg(capsys, monkeypatch, ["render", "--tier", "restricted"], json.dumps(docker_bundle()).encode())
    code, out, _ = tg(capsys, monkeypatch, ["explain", "--tier", "restricted"], rendered.encode())
    assert code == 0 and "changes: none (the spec already meets the tier)" in out


def test_policy_check_ok(capsys, monkeypatch) -> None:
    code, out, err = tg(capsys, monkeypatch, ["policy", "check", str(SHIPPED_POLICY)])
    assert code == 0 and all(line.startswith("tiergate: warn: ") for line in err.splitlines())
    assert out.startswith(f"ok: {SHIPPED_POLICY}: {len(TIERS)} tiers (privileged, baseline, restricted, isolated")


@pytest.mark.parametrize(("text", "reason"), [
    ("version = 1\n[tiers.a\n", ":2: invalid TOML: "),
    ('version = 1\ndefault_tier = "a"\ndefault_ceiling = "a"\n[tiers.a]\ncapabilities = ["CAP_FLY"]\n',
     ":5: tier 'a': unknown capability 'CAP_FLY'"),
    ('version = 1\ndefault_tier = "gold"\n[tiers.a]\n', ":2: unknown tier 'gold'; valid tiers: a"),
], ids=["broken TOML", "unknown capability", "unknown default tier"])
def test_policy_check_broken_is_exit_2_file_line(capsys, monkeypatch, tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    code, out, err = tg(capsys, monkeypatch, ["policy", "check", str(path)])
    assert code == 2 and out == ""
    one_line(err)
    assert err.startswith(f"tiergate: {path}{reason}"), err


def test_policy_check_missing_file(capsys, monkeypatch, tmp_path: Path) -> None:
    code, _, err = tg(capsys, monkeypatch, ["policy", "check", str(tmp_path / "nope.toml")])
    assert code == 2
    one_line(err)
    assert "cannot read policy: No such file or directory" in err


def test_broken_active_policy_makes_render_exit_2(capsys, monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("version = 1\n[tiers.a\n")
    code, out, err = tg(capsys, monkeypatch, ["--policy", str(path), "render", "--tier", "baseline"], b"{}")
    assert code == 2 and out == ""
    one_line(err)


@pytest.mark.parametrize("argv", [["render"], ["render", "--tier"], ["frobnicate"]], ids=["no tier", "no value", "no command"])
def test_usage_errors_are_one_line(capsys, monkeypatch, argv: list[str]) -> None:
    code, _, err = tg(capsys, monkeypatch, argv)
    assert code == 2
    one_line(err)


def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    """The real entry point: render prints JSON, exit 0; a refusal exits 1 with one line; no traceback."""
    env = {"TIERGATE_POLICY": str(SHIPPED_POLICY), "TIERGATE_CACHE_DIR": str(tmp_path / "c")}
    ok = run("tiergate.cli.main", ["render", "--tier", "isolated"], json.dumps(runc_default()).encode(), env)
    assert ok.returncode == 0 and ok.stderr == b""
    assert validate_config(json.loads(ok.stdout)) == []
    bad = run("tiergate.cli.main", ["render", "--tier", "isolated"], json.dumps(privileged_like()).encode(), env)
    assert bad.returncode == 1 and bad.stdout == b""
    assert_no_traceback(bad.stderr)
    assert bad.stderr.count(b"\n") == 1 and bad.stderr.startswith(b"tiergate: refused: ")


def test_install_log_journal_without_journald_is_an_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TIERGATE_JOURNAL_SOCKET", str(tmp_path / "no-journald.sock"))
    rc = cli.main(["install", "--engine", "podman", "--hooks-dir", str(tmp_path / "hooks"),
                   "--bin-dir", str(tmp_path / "bin"), "--log", "journal"])
    err = capsys.readouterr().err
    assert rc == 2 and "systemd-journald is not running here" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "hooks").exists() and not (tmp_path / "bin").exists()


def test_policy_apply_cli(tmp_path: Path, capsys) -> None:
    live = tmp_path / "etc" / "policy.toml"
    live.parent.mkdir()
    live.write_text(SHIPPED_POLICY.read_text())
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[tiers.a\n")
    base = ["policy", "apply", "--to", str(live), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main([*base, str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"tiergate: {bad}:2: invalid TOML: Expected ']' at the end of a table declaration"
    assert live.read_text() == SHIPPED_POLICY.read_text()
    good = tmp_path / "good.toml"
    good.write_text(SHIPPED_POLICY.read_text().replace('default_tier = "baseline"', 'default_tier = "restricted"'))
    assert cli.main([*base, str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"applied: {good} -> {live}: ")
    assert live.read_text() == good.read_text()


def test_explain_names_the_policys_own_seccomp_denies(capsys, monkeypatch, tmp_path: Path) -> None:
    """A tier's seccomp_deny reaches explain through the compiled tier (it was read and never set)."""
    policy = tmp_path / "policy.toml"
    policy.write_text('version = 1\ndefault_tier = "a"\ndefault_ceiling = "a"\n\n'
                      '[tiers.a]\nstrictness = 1\nseccomp = "baseline"\nseccomp_deny = ["syslog"]\n')
    monkeypatch.setenv("TIERGATE_POLICY", str(policy))
    code, out, err = tg(capsys, monkeypatch, ["explain", "--tier", "a"], json.dumps(runc_default()).encode())
    assert (code, err) == (0, "")
    assert "  denied (errno 1): syslog\n      because the policy's seccomp_deny names it" in out


def test_render_judges_mounts_as_the_hook_does(capsys, monkeypatch, tmp_path: Path) -> None:
    """render runs the hook's pipeline on this host: a bind of tiergate's own cache dir (an own path
    the hook's edge names, not a policy path) is not kept writable, as at a real start; privileged keeps it."""
    own = tmp_path / "cache"  # TIERGATE_CACHE_DIR (_isolated_env)
    own.mkdir(mode=0o700, exist_ok=True)
    spec = runc_default()
    spec["mounts"].append({"destination": "/tg", "type": "bind", "source": str(own), "options": ["rbind", "rw"]})

    def kept_writable(out: str) -> bool:
        return any(m.get("source") == str(own) and "ro" not in m.get("options", []) for m in json.loads(out)["mounts"])

    code, out, err = tg(capsys, monkeypatch, ["render", "--tier", "privileged"], json.dumps(spec).encode())
    assert code == 0 and kept_writable(out), err
    code, out, err = tg(capsys, monkeypatch, ["render", "--tier", "baseline"], json.dumps(spec).encode())
    assert (code == 1 and "refused" in err) or (code == 0 and not kept_writable(out)), (code, err)
