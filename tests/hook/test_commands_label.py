"""`tiergate label`: tier validation and the engine commands it runs (fake engines on PATH; no root)."""

from __future__ import annotations

import json
import sys

import pytest

from tiergate.cli import main as cli
from tiergate.cli import label as LB

FAKE = r'''#!{py}
import json, os, sys
log = os.environ["FAKE_ENGINE_LOG"]
with open(log, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\n")
args = sys.argv[1:]
state = log + ".labels"
if args[0] == "build":
    ctx = args[-1]
    text = open(os.path.join(ctx, "Containerfile")).read()
    with open(log + ".containerfile", "w") as f:
        f.write(text)
    key, _, value = text.splitlines()[1][6:].partition("=")
    json.dump({json.loads(key): json.loads(value)}, open(state, "w"))
    print("sha256:" + "ab" * 32)
elif args[0] == "create":
    print("c0ffee")
elif args[0] == "commit":
    key, _, value = args[2][6:].partition("=")
    json.dump({json.loads(key): json.loads(value)}, open(state, "w"))
    print("sha256:" + "cd" * 32)
elif args[0] == "image":
    labels = json.load(open(state)) if os.path.exists(state) else {}
    print(json.dumps([{"Config": {"Labels": labels}}]))
elif args[0] == "rm":
    pass
else:
    sys.exit(3)
'''


@pytest.fixture
def engines(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("podman", "docker"):
        p = bin_dir / name
        p.write_text(FAKE.replace("{py}", sys.executable))
        p.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(log))
    return lambda: [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_podman_build(engines, capsys, tmp_path):
    assert cli.main(["label", "localhost/app:1", "restricted", "--tag", "localhost/app:1-r"]) == 0
    calls = engines()
    build = calls[0]
    assert build[:7] == ["podman", "build", "--pull=never", "--quiet", "--format", "docker", "-t"]
    assert build[7] == "localhost/app:1-r"
    assert (tmp_path / "calls.jsonl.containerfile").read_text() == 'FROM localhost/app:1\nLABEL "io.tiergate.tier"="restricted"\n'
    assert calls[1] == ["podman", "image", "inspect", "localhost/app:1-r"]
    out = capsys.readouterr()
    assert out.out.strip() == "localhost/app:1-r: io.tiergate.tier=restricted (image abababababab)"
    assert out.err == ""


def test_docker_commit_and_default_tag(engines, capsys):
    assert cli.main(["label", "app:1", "baseline", "--engine", "docker"]) == 0
    calls = engines()
    assert calls[0] == ["docker", "create", "app:1", "/tiergate-label-placeholder"]
    assert calls[1] == ["docker", "commit", "--change", 'LABEL "io.tiergate.tier"="baseline"', "c0ffee", "app:1"]
    assert calls[2] == ["docker", "rm", "--force", "c0ffee"]
    assert "app:1: io.tiergate.tier=baseline" in capsys.readouterr().out


def test_unknown_tier_runs_no_engine(engines, capsys):
    assert cli.main(["label", "app:1", "superuser"]) == 2
    assert "unknown tier 'superuser'; valid tiers:" in capsys.readouterr().err
    assert engines() == []


def test_capped_by_trust_rules_says_so(engines, capsys):
    assert cli.main(["label", "registry.example/app:1", "privileged"]) == 0
    assert "will grant baseline" in capsys.readouterr().err


def test_no_engine(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(["label", "app:1", "baseline"]) == 2
    assert "podman or docker not found" in capsys.readouterr().err


def test_engine_failure_is_one_line(engines, monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bin" / "podman"
    bad.write_text("#!/bin/sh\necho 'Error: localhost/app:1: image not known' >&2\nexit 125\n")
    assert cli.main(["label", "localhost/app:1", "baseline"]) == 2
    assert capsys.readouterr().err.strip() == "tiergate: podman build failed: Error: localhost/app:1: image not known"


def test_containerfile_quotes():
    assert LB.containerfile("a:1", "io.tiergate.tier", "web") == 'FROM a:1\nLABEL "io.tiergate.tier"="web"\n'
