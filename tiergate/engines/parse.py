"""Reading engine config files: a broken one is one line naming file:line, never a traceback.

Install and uninstall parse a file before touching anything, so a broken file
stays exactly as the operator left it.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from tiergate.core.errors import EngineConfigError


def read(path: Path) -> str | None:
    """The file's text, None when it does not exist."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None


def json_object(path: Path, text: str) -> dict:
    """daemon.json-style: a JSON object (an empty file counts as {})."""
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineConfigError(f"not valid JSON: {exc.msg} (column {exc.colno})", str(path), exc.lineno) from None
    if not isinstance(doc, dict):
        raise EngineConfigError("not a JSON object", str(path), 1)
    return doc


def toml(path: Path, text: str) -> dict:
    """config.toml / containers.conf: TOML, with the line tomllib names (or the last one)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r" \(at line (\d+), column (\d+)\)$", msg)
        if m:
            reason, line = f"not valid TOML: {msg[:m.start()]} (column {m.group(2)})", int(m.group(1))
        else:
            reason, line = f"not valid TOML: {msg}", max(1, text.count("\n") + (not text.endswith("\n")))
        raise EngineConfigError(reason, str(path), line) from None
