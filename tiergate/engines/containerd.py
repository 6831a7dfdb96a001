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

Like nvidia-ctk, the handler copies the `runc` handler's settings and options
(SystemdCgroup = true on kubeadm nodes, BinaryName aside): a pod under
tiergate runs as it would under runc, hardened. containerd 1.6/1.7 (config
version 2) name the CRI plugin io.containerd.grpc.v1.cri; 2.x (version 3)
io.containerd.cri.v1.runtime. The shim learns containerd's root (where the
CRI records and content store are) from the config's `root`.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from tiergate.core.errors import EngineConfigError
from tiergate.core.names import ANNOTATION_PREFIX
from tiergate.engines import files, parse, shim

DEFAULT_CONFIG = Path("/etc/containerd/config.toml")
DEFAULT_ROOT = "/var/lib/containerd"
NAME = "tiergate"
BACKUP_SUFFIX = ".tiergate-backup"
# config version -> the CRI plugin's name (the runtimes live in its `containerd` table)
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
POD_ANNOTATIONS = [ANNOTATION_PREFIX + "*"]  # never io.kubernetes.*: those are containerd's records
BEGIN, END = "# BEGIN tiergate runtime handler (tiergate install)", "# END tiergate runtime handler"
DEFAULT_TAG = "# tiergate default"
WAS_TAG = "# tiergate-was: "


def cri_table(version: int) -> str:
    return f'plugins."{CRI_PLUGIN[version]}".containerd'


def _cri(doc: dict, version: int = 2) -> dict:
    return doc.get("plugins", {}).get(CRI_PLUGIN[version], {}).get("containerd", {})


def _toml(value) -> str | None:
    """A TOML value for a scalar or a list of scalars; None for what the block does not copy (tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list) and all(_toml(v) is not None and not isinstance(v, list) for v in value):
        return "[" + ", ".join(_toml(v) or "" for v in value) + "]"
    return None


def block(exe: Path, with_runc: bool, default_table: bool, version: int = 2, runc: dict | None = None) -> str:
    """The handler: runc's settings and options copied (BinaryName aside), our pod_annotations added."""
    q = json.dumps
    cri = cri_table(version)
    runc = runc or {}
    lines = [BEGIN]
    if default_table:
        lines += [f"[{cri}]", f"  default_runtime_name = {q(NAME)}"]
    if with_runc:  # defining any runtime drops the built-in runc one: keep it
        lines += [f"[{cri}.runtimes.runc]", '  runtime_type = "io.containerd.runc.v2"']
    settings = {k: v for k, v in runc.items() if k not in ("options", "pod_annotations") and _toml(v) is not None}
    settings.setdefault("runtime_type", "io.containerd.runc.v2")
    annotations = list(dict.fromkeys([*POD_ANNOTATIONS, *(runc.get("pod_annotations") or [])]))
    lines += [f"[{cri}.runtimes.{NAME}]", *(f"  {k} = {_toml(v)}" for k, v in settings.items()),
              f"  pod_annotations = {_toml(annotations)}", f"[{cri}.runtimes.{NAME}.options]"]
    options = runc["options"] if isinstance(runc.get("options"), dict) else {}
    lines += [f"  {k} = {_toml(v)}" for k, v in options.items() if k != "BinaryName" and _toml(v) is not None]
    lines += [f"  BinaryName = {q(str(exe))}", END]
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


def _set_default(text: str, version: int = 2) -> tuple[str, bool]:
    """Set default_runtime_name in an existing CRI containerd table; (text, whether the table exists)."""
    header = re.compile(rf"^\s*\[\s*{re.escape(cri_table(version))}\s*\]\s*(#.*)?$")
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


def render(text: str, exe: Path, default: bool, where: str = "config.toml") -> str:
    """config.toml with tiergate's handler (from the text without any earlier tiergate edits)."""
    parse.toml(Path(where), text)  # a broken file: one line naming it, and nothing touched
    base = _strip(text)
    doc = parse.toml(Path(where), base) if base.strip() else {}
    version = doc.get("version", 1) if doc else 2  # containerd reads a file without `version` as version 1
    if version not in CRI_PLUGIN:
        raise EngineConfigError(f"containerd config version {version!r}: tiergate needs version 2 (containerd "
                                "1.6/1.7) or 3 (2.x); run `containerd config migrate` or add the handler by hand",
                                where)
    if not base.strip():
        base = "version = 2\n"
    has_default_table = False
    if default:
        base, has_default_table = _set_default(base, version)
    runtimes = _cri(doc, version).get("runtimes")
    with_runc = not isinstance(runtimes, dict)
    runc = runtimes.get("runc") if isinstance(runtimes, dict) and isinstance(runtimes.get("runc"), dict) else {}
    out = base.rstrip("\n") + "\n\n" + block(exe, with_runc, default and not has_default_table, version, runc)
    tomllib.loads(out)  # never write a file containerd cannot read
    return out


def containerd_root(text: str) -> str:
    """Where containerd keeps its metadata and content (the config's `root`)."""
    root = parse.toml(Path("config.toml"), text).get("root") if text.strip() else None
    return root if isinstance(root, str) and root else DEFAULT_ROOT


def install(config: Path, bin_dir: Path, default: bool = False, say=print, **settings) -> Path:
    config = Path(config)
    text = parse.read(config) or ""
    exe = Path(bin_dir) / shim.SHIM
    new = render(text, exe, default, str(config))  # checks the file before anything is installed
    shim.install(bin_dir, f"containerd {config}", say=say, containerd_root=containerd_root(text), **settings)
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
        elif new.strip() in ("", "version = 2", "version = 3") and not backup.exists():
            files.remove(config, None, say)  # tiergate created it
        elif new != text:
            files.write(config, new, config.stat().st_mode & 0o7777, say)
        else:
            say(f"unchanged {config}")
    shim.uninstall(bin_dir, f"containerd {config}", say)
    say("restart containerd: systemctl restart containerd")
