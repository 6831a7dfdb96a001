"""containerd: a CRI runtime handler `tiergate` (io.containerd.runc.v2, BinaryName = the shim).

Why not a drop-in: containerd 1.6 merges an imported file plugin by plugin,
so a drop-in holding `plugins."io.containerd.grpc.v1.cri"` REPLACES the CRI
table of config.toml (seen here with `containerd config dump`: a runc runtime
with SystemdCgroup = true vanished). And defining any runtime drops the
built-in `runc` one. So the handler goes into config.toml itself, in a block
between two marker lines, with a `runc` runtime too when config.toml relied on
the built-in one. --default sets CRI's default_runtime_name (the line it
replaces is kept, commented, and restored by uninstall). A backup of the
file as it was is kept beside it. Kubernetes selects the handler with a
RuntimeClass (handler: tiergate); ctr with --runc-binary. Restart containerd.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from . import files, parse, shim

DEFAULT_CONFIG = Path("/etc/containerd/config.toml")
NAME = "tiergate"
BACKUP_SUFFIX = ".tiergate-backup"
CRI = 'plugins."io.containerd.grpc.v1.cri".containerd'
BEGIN, END = "# BEGIN tiergate runtime handler (tiergate install)", "# END tiergate runtime handler"
DEFAULT_TAG = "# tiergate default"
WAS_TAG = "# tiergate-was: "


def _cri(doc: dict) -> dict:
    return doc.get("plugins", {}).get("io.containerd.grpc.v1.cri", {}).get("containerd", {})


def block(exe: Path, with_runc: bool, default_table: bool) -> str:
    q = json.dumps
    lines = [BEGIN]
    if default_table:
        lines += [f"[{CRI}]", f"  default_runtime_name = {q(NAME)}"]
    if with_runc:  # defining any runtime drops the built-in runc one: keep it
        lines += [f"[{CRI}.runtimes.runc]", '  runtime_type = "io.containerd.runc.v2"']
    lines += [f"[{CRI}.runtimes.{NAME}]", '  runtime_type = "io.containerd.runc.v2"',
              '  pod_annotations = ["io.tiergate.*"]',
              f"[{CRI}.runtimes.{NAME}.options]", f"  BinaryName = {q(str(exe))}", END]
    return "\n".join(lines) + "\n"


def _strip(text: str) -> str:
    """config.toml without anything tiergate added: the block, the default line; commented lines restored."""
    text = re.sub(rf"\n?{re.escape(BEGIN)}\n.*?{re.escape(END)}\n?", "\n", text, flags=re.S)
    out = []
    for line in text.splitlines(keepends=True):
        if line.rstrip().endswith(DEFAULT_TAG):
            continue
        out.append(line.replace(WAS_TAG, "", 1) if line.lstrip().startswith(WAS_TAG) else line)
    text = "".join(out)
    return text.rstrip("\n") + "\n" if text.strip() else ""


def _set_default(text: str) -> tuple[str, bool]:
    """Set default_runtime_name in an existing CRI containerd table; (text, whether the table exists)."""
    header = re.compile(rf"^\s*\[\s*{re.escape(CRI)}\s*\]\s*(#.*)?$")
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if header.match(line):
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("["):
                if re.match(r"^\s*default_runtime_name\s*=", lines[j]):
                    indent = lines[j][:len(lines[j]) - len(lines[j].lstrip())]
                    lines[j] = indent + WAS_TAG + lines[j].lstrip()
                j += 1
            lines.insert(i + 1, f"  default_runtime_name = {json.dumps(NAME)} {DEFAULT_TAG}\n")
            return "".join(lines), True
    return text, False


def render(text: str, exe: Path, default: bool) -> str:
    """config.toml with tiergate's handler (from the text without any earlier tiergate edits)."""
    base = _strip(text)
    doc = tomllib.loads(base) if base.strip() else {}
    if doc and doc.get("version") != 2:
        raise ValueError("containerd config version 2 is needed (version 1 names the CRI plugin differently); "
                         "run `containerd config migrate` or add the handler by hand")
    if not base.strip():
        base = "version = 2\n"
    has_default_table = False
    if default:
        base, has_default_table = _set_default(base)
    with_runc = "runtimes" not in _cri(doc)
    out = base.rstrip("\n") + "\n\n" + block(exe, with_runc, default and not has_default_table)
    tomllib.loads(out)  # never write a file containerd cannot read
    return out


def install(config: Path, bin_dir: Path, default: bool = False, say=print, **settings) -> Path:
    config = Path(config)
    text = parse.read(config) or ""
    parse.toml(config, text)  # a broken file: one line naming it, and nothing touched
    exe = Path(bin_dir) / shim.SHIM
    new = render(text, exe, default)  # checks the file before anything is installed
    shim.install(bin_dir, f"containerd {config}", say=say, **settings)
    if new == text:
        say(f"unchanged {config}")
    else:
        backup = config.with_name(config.name + BACKUP_SUFFIX)
        if text and not backup.exists():
            files.write(backup, text, config.stat().st_mode & 0o7777, say)
        files.write(config, new, config.stat().st_mode & 0o7777 if text else 0o644, say)
    say(f"restart containerd to load it: systemctl restart containerd; Kubernetes: a RuntimeClass with handler {NAME}; "
        f"ctr: ctr run --runc-binary {exe} ...")
    return exe


def uninstall(config: Path, bin_dir: Path, say=print) -> None:
    config = Path(config)
    backup = config.with_name(config.name + BACKUP_SUFFIX)
    if config.exists():
        text = config.read_text()
        new = _strip(text)
        if backup.exists() and new.strip() == _strip(backup.read_text()).strip():
            files.write(config, backup.read_text(), backup.stat().st_mode & 0o7777, say)
            files.remove(backup, None, say)
        elif new.strip() in ("", "version = 2") and not backup.exists():
            files.remove(config, None, say)  # tiergate created it
        elif new != text:
            files.write(config, new, config.stat().st_mode & 0o7777, say)
        else:
            say(f"unchanged {config}")
    shim.uninstall(bin_dir, f"containerd {config}", say)
    say("restart containerd: systemctl restart containerd")
