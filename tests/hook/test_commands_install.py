"""`tiergate install` as an operator meets it: --version, --dry-run, broken engine configs, completion (no root)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tiergate.cli import main as cli
from tiergate.engines import ENGINES, front

BROKEN = {  # engine -> (file to break, its broken text, the line named)
    "docker": ("daemon.json", '{\n  "log-level": "warn",\n  oops\n}\n', 3),
    "containerd": ("config.toml", 'version = 2\n[plugins."io.containerd.grpc.v1.cri"\n', 2),
    "podman-runtime": ("containers.conf", '[engine]\nruntime = crun\n', 2),
}
ORIGINAL = {
    "docker": ("daemon.json", '{"log-level": "warn", "runtimes": {"other": {"path": "/x"}}}\n'),
    "containerd": ("config.toml", 'version = 2\n\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
                                  '  default_runtime_name = "runc"\n'),
    "podman-runtime": ("containers.conf", '[engine]\nruntime = "runc"\n'),
    "podman": (None, None),
}


def _args(engine: str, root: Path, runc: str) -> list[str]:
    paths = {"docker": ["--daemon-json", str(root / "daemon.json")],
             "containerd": ["--config", str(root / "config.toml")],
             "podman-runtime": ["--config", str(root / "containers.conf.d")],
             "podman": ["--hooks-dir", str(root / "hooks.d")]}[engine]
    return ["--engine", engine, "--bin-dir", str(root / "bin"), *paths,
            *(["--runtime", runc] if engine != "podman" else [])]


def _diffs(out: str) -> dict[str, str]:
    """The unified diffs in an output, by the file they change (the `+++` name, or `---` for a removal)."""
    diffs, lines = {}, out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            j = i + 2
            while j < len(lines) and lines[j][:1] in (" ", "+", "-", "@", "\\") and not lines[j].startswith("--- "):
                j += 1
            name = lines[i + 1][4:] if lines[i + 1] != "+++ /dev/null" else line[4:]
            diffs[name] = "\n".join(lines[i:j]) + "\n"
    return diffs


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, mode and content (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            body = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
            out[str(p.relative_to(root))] = (st.st_mode, body)
    return out


@pytest.fixture
def runc(tmp_path) -> str:
    exe = tmp_path / "fake-runc"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return str(exe)


def test_version(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"tiergate {version('tiergate')}\n"


@pytest.mark.parametrize("engine", list(ENGINES))
def test_dry_run_changes_nothing_and_prints_the_exact_diff(engine, tmp_path, runc, capsys) -> None:
    """The printed diff, applied with patch(1) to a copy of the untouched tree, gives what a real install writes."""
    root = tmp_path / "host"
    root.mkdir()
    name, text = ORIGINAL[engine]
    if name:
        (root / name).write_text(text)
    before = _tree(root)
    cache = ["--cache-dir", str(tmp_path / "cache")]  # install compiles the policy into the hook's cache
    assert cli.main(["install", "--dry-run", *_args(engine, root, runc), *cache]) == 0
    out = capsys.readouterr().out
    assert _tree(root) == before  # nothing written, created, linked or removed
    assert "+++ " in out and "would create" in out
    assert cli.main(["install", *_args(engine, root, runc), *cache]) == 0
    capsys.readouterr()
    after = _tree(root)
    diffs = _diffs(out)
    for rel, (_, body) in before.items():  # a file that existed: its diff is the edit the real install made
        if after[rel][1] != body:
            copy = tmp_path / "copy"
            copy.write_bytes(body)
            subprocess.run(["patch", "-s", str(copy)], input=diffs[str(root / rel)], text=True, check=True, timeout=20)
            assert copy.read_bytes() == after[rel][1]
    trees = re.findall(r"^would copy (.+) into (\S+)/$", out, re.M)  # the pinned package release: a copy
    assert [Path(d).parent.name for _, d in trees] == ["releases"], out
    sources = {Path(src).name: Path(src) for src in trees[0][0].split(", ")}
    for rel, (_, body) in after.items():
        inside = Path(root / rel).relative_to(trees[0][1]) if str(root / rel).startswith(trees[0][1] + "/") else None
        if inside and rel.endswith(".py"):  # tiergate/<file>: the installed package's file, unchanged
            assert (sources[inside.parts[0]].joinpath(*inside.parts[1:])).read_bytes() == body, rel
    for rel, (_, body) in after.items():  # every other file the install made was announced, with its content
        if any(str(root / rel).startswith(d + "/") for _, d in trees):
            continue
        if rel not in before and isinstance(body, bytes) and body.startswith(b"\x7fELF"):  # engines/front.c
            assert f"would compile {front.SOURCE} into {root / rel}" in out, rel
            continue
        if rel not in before and isinstance(body, bytes) and not rel.endswith(".tiergate-created"):
            new = "".join(l[1:] + "\n" for l in diffs[str(root / rel)].splitlines()[3:])
            assert new == body.decode(), rel
    assert cli.main(["uninstall", "--dry-run", *_args(engine, root, runc)[:-2 if engine != "podman" else None]]) == 0
    assert f"--- {root / 'bin' / 'tiergate-hook'}" in capsys.readouterr().out


@pytest.mark.parametrize("engine", list(BROKEN))
def test_broken_engine_config_is_one_line_naming_file_and_line(engine, tmp_path, runc, capsys) -> None:
    name, text, line = BROKEN[engine]
    (tmp_path / name).write_text(text)
    if engine == "podman-runtime":
        (tmp_path / "containers.conf.d").mkdir()
    before = _tree(tmp_path)
    assert cli.main(["install", *_args(engine, tmp_path, runc)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tiergate: {tmp_path / name}:{line}: not valid "), err
    assert "Traceback" not in err and _tree(tmp_path) == before


def _complete(tmp_path: Path, *words: str) -> list[str]:
    script = tmp_path / "c.sh"
    script.write_text(subprocess.run([*cli_cmd(), "completion", "bash"], capture_output=True, text=True,
                                     check=True, timeout=30).stdout)
    arr = " ".join(f"'{w}'" for w in words)
    out = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; "
                          "_tiergate; printf '%s\\n' \"${COMPREPLY[@]}\""],
                         capture_output=True, text=True, timeout=20, check=True)
    return [x for x in out.stdout.splitlines() if x]


def cli_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "tiergate.cli.main"]


def test_completion_offers_every_engine_per_subcommand(tmp_path) -> None:
    for sub in ("install", "uninstall"):
        assert _complete(tmp_path, "tiergate", sub, "--engine", "") == list(ENGINES)
    assert _complete(tmp_path, "tiergate", "install", "--engine", "podman-") == ["podman-runtime"]
    assert _complete(tmp_path, "tiergate", "label", "img", "--engine", "") == ["podman", "docker"]
    assert "--dry-run" in _complete(tmp_path, "tiergate", "install", "--d")
