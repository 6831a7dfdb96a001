"""`tiergate completion bash` and every command's help (no root)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tiergate.cli import main as cli
from tiergate.cli import completion

OPERATOR_COMMANDS = ("doctor", "log", "status", "metrics", "label", "completion")


def _script(capsys) -> str:
    assert cli.main(["completion", "bash"]) == 0
    return capsys.readouterr().out


def _complete(script: str, tmp_path, *words: str) -> list[str]:
    f = tmp_path / "c.sh"
    f.write_text(script)
    arr = " ".join(f"'{w}'" for w in words)
    out = subprocess.run(["bash", "-c", f"source {f}; COMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; "
                          "_tiergate; printf '%s\\n' \"${COMPREPLY[@]}\""],
                         capture_output=True, text=True, timeout=20, check=True)
    return [x for x in out.stdout.splitlines() if x]


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_bash_completion(capsys, tmp_path):
    script = _script(capsys)
    assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=20).returncode == 0
    top = _complete(script, tmp_path, "tiergate", "")
    for name in ("render", "explain", "policy", "install", "uninstall", *OPERATOR_COMMANDS):
        assert name in top
    assert _complete(script, tmp_path, "tiergate", "me") == ["metrics"]
    assert set(_complete(script, tmp_path, "tiergate", "log", "--")) >= {
        "--file", "--since", "--container", "--tier", "--refused", "--json", "--stage", "--wide"}
    assert _complete(script, tmp_path, "tiergate", "label", "img", "t", "--engine", "") == ["podman", "docker"]
    assert _complete(script, tmp_path, "tiergate", "completion", "") == ["bash"]
    assert _complete(script, tmp_path, "tiergate", "--policy", "p.toml", "sta") == ["status"]
    assert "check" in _complete(script, tmp_path, "tiergate", "policy", "")
    (tmp_path / "dec.jsonl").write_text("")
    assert _complete(script, tmp_path, "tiergate", "log", "--file", str(tmp_path / "de")) == [str(tmp_path / "dec.jsonl")]


def test_script_follows_the_parser(capsys):
    script = _script(capsys)
    assert script == completion.bash_script(cli.parser())
    assert "complete -o default -F _tiergate tiergate" in script


@pytest.mark.parametrize("name", OPERATOR_COMMANDS)
def test_help_has_examples(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"tiergate {name}" in out.split("examples:", 1)[1]
