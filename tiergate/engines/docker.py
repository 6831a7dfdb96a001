"""Docker: a `tiergate` runtime in daemon.json (`runtimes`), optionally the default runtime.

Every other key of daemon.json is kept; the file as it was is saved once to
daemon.json.tiergate-backup. dockerd reloads `runtimes` and `default-runtime`
on SIGHUP (or restart it). Uninstall removes what install added and, when the
rest is what the backup holds, puts the backup back byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiergate.engines import files, parse, shim

DEFAULT_DAEMON_JSON = Path("/etc/docker/daemon.json")
NAME = "tiergate"
BACKUP_SUFFIX = ".tiergate-backup"
# dockerd 20.10 keeps these whatever daemon.json says ('runc' is reserved; entries under the
# containerd names are replaced by its own): `docker run --runtime NAME` bypasses tiergate.
BUILTIN_RUNTIMES = ("runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux")
BYPASS = (f"docker run --runtime {{{','.join(BUILTIN_RUNTIMES)}}} still bypasses tiergate: dockerd keeps its "
          "built-in runtimes (only an authorization plugin in front of the API could refuse them)")


def _load(path: Path) -> tuple[dict, str | None]:
    text = parse.read(path)
    return ({}, None) if text is None else (parse.json_object(path, text), text)


def install(daemon_json: Path, bin_dir: Path, default: bool = False, say=print, **settings) -> Path:
    daemon_json = Path(daemon_json)
    doc, text = _load(daemon_json)  # parse before touching anything: a broken file stays as it is
    exe = shim.install(bin_dir, f"docker {daemon_json}", say=say, **settings)
    backup = daemon_json.with_name(daemon_json.name + BACKUP_SUFFIX)
    want = json.loads(json.dumps(doc))
    want.setdefault("runtimes", {})[NAME] = {"path": str(exe)}
    if default:
        want["default-runtime"] = NAME
    elif want.get("default-runtime") == NAME:
        del want["default-runtime"]
    if want == doc:
        say(f"unchanged {daemon_json}")
    else:
        if text is not None and not backup.exists():
            files.write(backup, text, daemon_json.stat().st_mode & 0o7777, say)
        files.write(daemon_json, json.dumps(want, indent=2) + "\n", 0o644 if text is None else daemon_json.stat().st_mode & 0o7777, say)
    say("reload dockerd to use it: kill -HUP $(pidof dockerd) (or systemctl restart docker); "
        f"then docker run --runtime {NAME} ..." + ("" if default else ", or reinstall without --no-default"))
    if default:
        say(f"note: {BYPASS}")
    return exe


def uninstall(daemon_json: Path, bin_dir: Path, say=print) -> None:
    daemon_json = Path(daemon_json)
    backup = daemon_json.with_name(daemon_json.name + BACKUP_SUFFIX)
    doc, text = _load(daemon_json)
    want = json.loads(json.dumps(doc))
    old, old_text = _load(backup) if backup.exists() else ({}, None)
    runtimes = want.get("runtimes")
    if isinstance(runtimes, dict) and NAME in runtimes:
        del runtimes[NAME]
    if want.get("default-runtime") == NAME:
        if old.get("default-runtime") not in (None, NAME):
            want["default-runtime"] = old["default-runtime"]  # what it was before --default
        else:
            del want["default-runtime"]
    if runtimes == {} and "runtimes" not in old:
        del want["runtimes"]
    if old_text is not None and want == old:
        files.write(daemon_json, old_text, backup.stat().st_mode & 0o7777, say)
        files.remove(backup, None, say)
    elif text is None:
        say(f"absent {daemon_json}")
    elif want == {} and old_text is None:  # install made the file: leave no "{}" behind
        files.remove(daemon_json, None, say)
    elif want == doc:
        say(f"unchanged {daemon_json}")
    else:
        files.write(daemon_json, json.dumps(want, indent=2) + "\n", daemon_json.stat().st_mode & 0o7777, say)
    shim.uninstall(bin_dir, f"docker {daemon_json}", say)
    say("restart dockerd (systemctl restart docker): a SIGHUP reloads runtimes only while daemon.json names some")
