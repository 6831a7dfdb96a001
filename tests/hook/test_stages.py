"""tiergate.hook.stages as the engine runs it: a subprocess, spec or state on stdin, JSON only on stdout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import (CONTAINER, SHIPPED_POLICY, assert_no_traceback, make_storage, podman_precreate, run, shipped_policy,
                     weaknesses)
from tiergate.telemetry.record import read
from tiergate.hook.stages import refusal_spec
from spec_schema import validate_config

MODULE = "tiergate.hook.stages"


class Hook:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.log = tmp_path / "log" / "d.jsonl"
        self.graph = tmp_path / "storage"

    def args(self, stage: str) -> list[str]:
        return [stage, "--policy", str(SHIPPED_POLICY), "--cache-dir", str(self.tmp / "cache"), "--log", str(self.log)]

    def spec(self, labels: dict | None = None, **kw) -> dict:
        spec = podman_precreate()
        spec["root"]["path"] = make_storage(self.graph, labels=labels, **kw)
        return spec

    def precreate(self, stdin: bytes) -> subprocess.CompletedProcess:
        res = run(MODULE, self.args("precreate"), stdin)
        assert_no_traceback(res.stderr)
        return res

    def records(self) -> list[dict]:
        return read(str(self.log))


@pytest.fixture
def hook(tmp_path: Path) -> Hook:
    return Hook(tmp_path)


def refusal_line(out: dict) -> str:
    (h,) = out["hooks"]["createRuntime"]
    assert h["path"] == "/bin/sh" and h["args"][:3] == ["sh", "-c", 'printf "%s\\n" "$0" >&2; exit 1']
    return h["args"][3]


def run_refusal_hook(out: dict) -> subprocess.CompletedProcess:
    h = out["hooks"]["createRuntime"][0]
    return subprocess.run([h["path"], *h["args"][1:]], capture_output=True, timeout=10, check=False)


@pytest.mark.parametrize("tier", ["baseline", "restricted", "isolated"])
def test_precreate_allowed_prints_only_the_hardened_spec(hook: Hook, tier: str) -> None:
    """Allowed: exit 0, stdout is exactly one JSON spec, hardened to the label's tier; the log has the record."""
    spec = hook.spec({"io.tiergate.tier": tier})
    res = hook.precreate(json.dumps(spec).encode())
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["annotations"]["io.tiergate.tier"] == tier
    policy = shipped_policy()
    assert weaknesses(out, policy["tiers"][tier], policy) == []
    assert validate_config(out) == []
    assert "io.tiergate.refused" not in out["annotations"]
    (rec,) = hook.records()
    assert rec["stage"] == "precreate" and rec["outcome"] == "allowed" and rec["tier"] == tier
    assert rec["image"] == "docker.io/library/nginx:1.27" and rec["label"] == tier


def test_precreate_clamps_privileged_request_from_an_untrusted_image(hook: Hook) -> None:
    """A label asking for privileged from an untrusted image is clamped to baseline (shipped trust rules)."""
    res = hook.precreate(json.dumps(hook.spec({"io.tiergate.tier": "privileged"})).encode())
    out = json.loads(res.stdout)
    assert out["annotations"]["io.tiergate.tier"] == "baseline"
    assert "clamped to baseline" in out["annotations"]["io.tiergate.why"]


def _dup_keys(hook: Hook) -> bytes:
    body = json.dumps(hook.spec())
    return body[:-1].encode() + b', "annotations": {"io.tiergate.tier": "privileged"}}'


REFUSED = [
    ("unknown tier in the label", lambda h: json.dumps(h.spec({"io.tiergate.tier": "gold"})).encode(), "refused",
     "unknown tier 'gold' asked by label io.tiergate.tier; valid tiers: baseline, "),
    ("path traversal in the label", lambda h: json.dumps(h.spec({"io.tiergate.tier": "../../etc;rm -rf /"})).encode(),
     "refused", "unknown tier '../../etc;rm -rf /' asked by label"),
    ("unknown image (no storage)", lambda h: json.dumps(podman_precreate()).encode(), "refused", "cannot read the image's labels"),
    ("truncated JSON", lambda h: b'{"ociVersion": "1.0.2", "process": ', "error", "invalid JSON in config"),
    ("not an object", lambda h: b"[1, 2, 3]", "error", "expected an object @ $"),
    ("empty stdin", lambda h: b"", "error", "invalid JSON in config"),
    ("over 16 MiB", lambda h: b'{"a": "' + b"x" * (16 * 1024 * 1024) + b'"}', "error", "config is larger than 16777216 bytes"),
    ("not UTF-8", lambda h: b'{"ociVersion": "\xff\xfe"}', "error", "config is not valid UTF-8"),
    ("duplicate keys", _dup_keys, "error", "duplicate key 'annotations'"),
    ("deeply nested", lambda h: b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "error", "nesting deeper than"),
    ("wrong type in the spec", lambda h: json.dumps(dict(h.spec(), mounts={"x": 1})).encode(), "error",
     "expected an array @ $.mounts"),
]


@pytest.mark.parametrize(("make", "outcome", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_precreate_refusal_is_a_spec_that_cannot_start(hook: Hook, make, outcome: str, reason: str) -> None:
    """Refused or broken input: exit 0 (podman drops a failing precreate's output) with a refusal spec
    whose createRuntime hook prints the one line and exits 1; the decision log holds the record."""
    res = hook.precreate(make(hook))
    assert res.returncode == 0
    out = json.loads(res.stdout)
    line = refusal_line(out)
    assert line.startswith(f"tiergate: {outcome}: ") and reason in line, line
    assert "\n" not in line and line.isprintable() and len(line) < 1000
    assert out["annotations"]["io.tiergate.refused"] == line
    assert out["process"]["capabilities"] == {} and out["process"]["noNewPrivileges"] is True
    assert out["process"]["user"] == {"uid": 65534, "gid": 65534} and out["root"]["readonly"] is True
    assert validate_config(out) == []
    shown = run_refusal_hook(out)
    assert shown.returncode == 1 and shown.stderr.decode() == line + "\n" and shown.stdout == b""
    (rec,) = hook.records()
    assert rec["outcome"] == outcome and reason in rec["reason"]




@pytest.mark.parametrize("stdin", [b"{", b'{"ociVersion": "1.0.2", "process": {', b'{"a" 1}', b'{"a": "\x01"}'],
                         ids=["lone brace", "cut after a brace", "missing colon", "control char in string"])
def test_precreate_malformed_json_is_named_as_such(hook: Hook, stdin: bytes) -> None:
    """Malformed JSON is refused as 'invalid JSON in config', not as an internal error."""
    line = refusal_line(json.loads(hook.precreate(stdin).stdout))
    assert line.startswith("tiergate: error: invalid JSON in config: "), line


@pytest.mark.parametrize("line", ["tiergate: refused: unknown tier 'a\\\\x0a'", "tiergate: error: rootfs /a\\cb is not in storage",
                                  "tiergate: error: rootfs /a\\nb"], ids=["escaped control", "backslash-c", "backslash-n"])
def test_refusal_hook_prints_the_line_verbatim(line: str) -> None:
    """The createRuntime hook of a refusal spec prints exactly the recorded line, whatever it holds."""
    shown = run_refusal_hook(refusal_spec(None, line))
    assert shown.stderr.decode() == line + "\n"


def test_precreate_label_with_control_characters_is_refused_on_one_line(hook: Hook) -> None:
    """A label with a newline and escape codes is refused; the line (as recorded) is one printable line."""
    res = hook.precreate(json.dumps(hook.spec({"io.tiergate.tier": "../../etc\n\x1b[31m"})).encode())
    line = refusal_line(json.loads(res.stdout))
    assert line.startswith("tiergate: refused: unknown tier '../../etc\\\\x0a\\\\x1b[31m' asked by label")
    assert line.isprintable() and "\n" not in line


def test_refusal_spec_keeps_only_safe_fields() -> None:
    """refusal_spec carries over root.path and cgroupsPath, nothing that could weaken it."""
    spec = podman_precreate()
    spec["mounts"].append({"destination": "/s", "type": "bind", "source": "/var/run/docker.sock"})
    out = refusal_spec(spec, "tiergate: refused: x")
    assert out["root"]["path"] == spec["root"]["path"]
    assert out["linux"]["cgroupsPath"] == spec["linux"]["cgroupsPath"]
    assert out["mounts"] == [{"destination": "/proc", "type": "proc", "source": "proc"}]
    assert "seccomp" not in out["linux"] and "devices" not in out["linux"]
    assert refusal_spec(None, "x")["root"]["path"] == "/"
    assert refusal_spec({"root": {"path": 5}, "linux": []}, "x")["root"]["path"] == "/"


def test_broken_policy_refuses_every_container(hook: Hook, tmp_path: Path) -> None:
    """Fail closed: a broken policy refuses with its file:line in the line."""
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[tiers.a\n")
    args = ["precreate", "--policy", str(bad), "--cache-dir", str(tmp_path / "c"), "--log", str(hook.log)]
    res = run(MODULE, args, json.dumps(hook.spec()).encode())
    assert_no_traceback(res.stderr)
    line = refusal_line(json.loads(res.stdout))
    assert line.startswith(f"tiergate: error: {bad}:2: invalid TOML")


@pytest.mark.parametrize("content", [
    pytest.param(b'{"format": ', id="truncated"),
    pytest.param(b"[]", id="array"),
    pytest.param(b"\xff", id="not UTF-8"),
    pytest.param(b"{", id="lone brace"),
])
def test_corrupt_policy_cache_is_recompiled_in_the_hook(hook: Hook, content: bytes) -> None:
    """A corrupt cache entry costs a recompile in the real hook process, never a refusal."""
    spec = json.dumps(hook.spec()).encode()
    assert hook.precreate(spec).returncode == 0
    (entry,) = [p for p in (hook.tmp / "cache").iterdir() if p.suffix == ".json"]
    entry.write_bytes(content)
    out = json.loads(hook.precreate(spec).stdout)
    assert "io.tiergate.refused" not in out["annotations"], out["annotations"].get("io.tiergate.refused")
    assert out["annotations"]["io.tiergate.tier"] == "baseline"


def test_unwritable_log_does_not_change_the_outcome(hook: Hook, tmp_path: Path) -> None:
    """precreate still prints the hardened spec when the log cannot be written (stdout stays JSON only)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["precreate", "--policy", str(SHIPPED_POLICY), "--cache-dir", str(tmp_path / "c"), "--log", str(blocker / "x.jsonl")]
    res = run(MODULE, args, json.dumps(hook.spec()).encode())
    assert res.returncode == 0
    assert json.loads(res.stdout)["annotations"]["io.tiergate.tier"] == "baseline"
    assert_no_traceback(res.stderr)


@pytest.mark.parametrize("argv", [[], ["bogus"], ["precreate", "--policy"], ["precreate", "--frobnicate"]])
def test_bad_arguments_exit_2_with_one_line(argv: list[str]) -> None:
    res = run(MODULE, argv)
    assert res.returncode == 2 and res.stdout == b""
    assert res.stderr.decode().count("\n") == 1 and res.stderr.startswith(b"tiergate-hook: ")


# --- createRuntime / prestart with a state on stdin ----------------------------------------------------


def _bundle(tmp_path: Path, spec: dict) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def _state(bundle: Path) -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "id": "c1", "status": "created", "pid": 4242,
                       "bundle": str(bundle), "annotations": {}}).encode()


def test_prestart_accepts_a_hardened_bundle(hook: Hook) -> None:
    """The spec precreate produced passes the prestart check: exit 0, nothing on stdout or stderr."""
    spec = hook.spec({"io.tiergate.tier": "restricted"})
    hardened = json.loads(hook.precreate(json.dumps(spec).encode()).stdout)
    res = run(MODULE, hook.args("prestart"), _state(_bundle(hook.tmp, hardened)))
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")
    assert hook.records()[-1]["stage"] == "prestart" and hook.records()[-1]["outcome"] == "allowed"


def test_prestart_refuses_a_bundle_weaker_than_its_tier(hook: Hook) -> None:
    """An unhardened bundle (engine spec as is) is refused: exit 1, one line on stderr, recorded."""
    spec = hook.spec({"io.tiergate.tier": "restricted"})
    res = run(MODULE, hook.args("prestart"), _state(_bundle(hook.tmp, spec)))
    assert_no_traceback(res.stderr)
    assert res.returncode == 1 and res.stdout == b""
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("tiergate: refused: container is weaker than tier restricted: ")
    assert hook.records()[-1]["outcome"] == "refused"


def test_prestart_refuses_a_hardened_bundle_later_weakened(hook: Hook) -> None:
    """A docker.sock mount added after precreate is caught at prestart."""
    hardened = json.loads(hook.precreate(json.dumps(hook.spec()).encode()).stdout)
    hardened["mounts"].append({"destination": "/s", "type": "bind", "source": "/var/run/docker.sock", "options": ["rbind"]})
    res = run(MODULE, hook.args("prestart"), _state(_bundle(hook.tmp, hardened)))
    assert res.returncode == 1 and b"$.mounts[" in res.stderr


@pytest.mark.parametrize(("stdin", "reason"), [
    (b'{"id": ', "invalid JSON in state"),
    pytest.param(b"{", "invalid JSON in state", id="lone brace"),
    (b'{"id": "c1"}', "the hook state names no bundle"),
    (b'{"id": "c1", "bundle": "/nonexistent/bundle"}', "cannot open bundle /nonexistent/bundle"),
], ids=["bad json", "lone brace", "no bundle", "missing bundle"])
@pytest.mark.parametrize("stage", ["prestart", "createRuntime"])
def test_state_stages_fail_closed_with_one_line(hook: Hook, stage: str, stdin: bytes, reason: str) -> None:
    res = run(MODULE, hook.args(stage), stdin)
    assert_no_traceback(res.stderr)
    assert res.returncode == 1 and res.stdout == b""
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("tiergate: error: ") and reason in err


def test_prestart_refuses_a_symlinked_config(hook: Hook, tmp_path: Path) -> None:
    """config.json as a symlink (to /etc/shadow) is not followed: exit 1, one line."""
    bundle = tmp_path / "b2"
    bundle.mkdir()
    (bundle / "config.json").symlink_to("/etc/shadow")
    res = run(MODULE, hook.args("prestart"), _state(bundle))
    assert res.returncode == 1 and b"refusing to follow symlink" in res.stderr
    assert_no_traceback(res.stderr)


def test_create_runtime_of_a_passthrough_tier_is_a_no_op(hook: Hook) -> None:
    """createRuntime on a privileged (passthrough) bundle has nothing to apply: exit 0, silent."""
    hardened = json.loads(hook.precreate(json.dumps(hook.spec()).encode()).stdout)
    hardened["annotations"]["io.tiergate.tier"] = "privileged"
    res = run(MODULE, hook.args("createRuntime"), _state(_bundle(hook.tmp, hardened)))
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")
    pre, rt = hook.records()
    assert rt["stage"] == "createRuntime" and rt["container"] == "c1" and rt["image_id"] == pre["image_id"] != ""


def test_create_runtime_fails_closed_when_metadata_cannot_be_closed(hook: Hook) -> None:
    """baseline closes metadata even without a network policy: a namespace it cannot enter is one refusal line."""
    hardened = json.loads(hook.precreate(json.dumps(hook.spec()).encode()).stdout)
    state = json.loads(_state(_bundle(hook.tmp, hardened)))
    state["pid"] = 999_999_999  # above any pid_max: no such process
    res = run(MODULE, hook.args("createRuntime"), json.dumps(state).encode())
    assert_no_traceback(res.stderr)
    assert res.returncode == 1 and res.stderr.count(b"\n") == 1
    assert res.stderr.startswith(b"tiergate: error: cannot close cloud metadata"), res.stderr


def test_create_runtime_refuses_an_unhardened_bundle(hook: Hook) -> None:
    """A bundle with no (or an unknown) io.tiergate.tier was never hardened: refused."""
    res = run(MODULE, hook.args("createRuntime"), _state(_bundle(hook.tmp, podman_precreate())))
    assert res.returncode == 1
    assert res.stderr.decode().startswith("tiergate: refused: the bundle carries no valid tiergate tier")


def test_precreate_logs_the_engines_container_id_not_the_workloads_hostname(hook: Hook) -> None:
    """-e HOSTNAME=evil --hostname evil: the record names the container containers-storage holds for the rootfs."""
    spec = hook.spec()
    spec["hostname"] = "evil"
    spec["process"]["env"] = [e for e in spec["process"].get("env", []) if not e.startswith("HOSTNAME=")] + ["HOSTNAME=evil"]
    assert hook.precreate(json.dumps(spec).encode()).returncode == 0
    (rec,) = hook.records()
    assert rec["container"] == CONTAINER and rec["name"] == "web"
    assert rec["image_id"] and rec["tier"] and rec["source"] and rec["stage"] == "precreate" and rec["duration_ms"] >= 0


def test_broken_policy_save_keeps_starting_on_the_last_good_one_and_says_so(hook: Hook, tmp_path: Path) -> None:
    policy = tmp_path / "etc" / "policy.toml"
    policy.parent.mkdir()
    policy.write_text(SHIPPED_POLICY.read_text())
    args = ["precreate", "--policy", str(policy), "--cache-dir", str(tmp_path / "c"), "--log", str(hook.log)]
    spec = json.dumps(hook.spec()).encode()
    good = json.loads(run(MODULE, args, spec).stdout)
    policy.write_text("version = 1\n[tiers.a\n")
    for _ in range(2):
        res = run(MODULE, args, spec)
        assert_no_traceback(res.stderr)
        out = json.loads(res.stdout)
        assert "io.tiergate.refused" not in out["annotations"]
        assert out["annotations"]["io.tiergate.tier"] == good["annotations"]["io.tiergate.tier"]
    recs = hook.records()
    errors = [r for r in recs if r["stage"] == "policy"]
    assert len(errors) == 2 and all(f"{policy}:2: invalid TOML" in r["reason"] for r in errors)
    assert [r["outcome"] for r in recs if r["stage"] == "precreate"] == ["allowed"] * 3


# -- on_error (the policy's choice for tiergate's own failures), in the hook process itself ------

def _precreate_in_process(monkeypatch, tmp_path: Path, hook: Hook, policy: Path, engine: str = "podman") -> tuple[dict, dict]:
    """precreate with the pipeline failing inside (an internal error): (record, stdout spec)."""
    import io
    import sys

    from tiergate.core import pipeline
    from tiergate.hook import stages

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "enforce", broken)
    spec = hook.spec({"io.tiergate.tier": "restricted"})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(spec).encode())))
    opts = stages.parse_args(["precreate", "--policy", str(policy), "--cache-dir", str(tmp_path / "cache"),
                              "--log", str(hook.log), "--engine", engine])
    rec: dict = {}
    assert stages.precreate(opts, rec) == 0
    return rec, rec.pop("_stdout")


@pytest.mark.parametrize("engines, outcome", [
    ("", "error"),                                             # the shipped choice: fail closed
    ('[engines.docker]\non_error = "allow"\n', "error"),      # another engine's choice
    ('[engines.podman]\non_error = "allow"\n', "allowed-on-error"),
])
def test_precreate_internal_error_follows_on_error_for_podman(monkeypatch, tmp_path: Path, hook: Hook,
                                                                engines: str, outcome: str) -> None:
    """An internal error refuses (a spec that cannot start) unless the policy chose "allow" for podman."""
    text = SHIPPED_POLICY.read_text()
    policy = tmp_path / "policy.toml"
    policy.write_text(text + "\n" + engines)
    rec, out = _precreate_in_process(monkeypatch, tmp_path, hook, policy)
    assert rec["outcome"] == outcome and "RuntimeError: boom" in rec["reason"]
    refused = out.get("annotations", {}).get("io.tiergate.refused")
    assert (refused is None) == (outcome == "allowed-on-error"), refused


def test_refusal_spec_names_its_line_where_crun_quotes_it() -> None:
    """crun quotes no hook output, but quotes a hook output file it cannot open: the refusal spec
    names one under /proc (where no such entry can exist) that holds the line."""
    line = "tiergate: refused: tier restricted refuses a container that runs --privileged"
    path = refusal_spec(None, line)["annotations"]["run.oci.hooks.stderr"]
    assert path == "/proc/" + line and not os.path.lexists(path)
