"""The decision log: one JSON line per decision, refusal or error.

Each record is written with a single write(2) on an O_APPEND descriptor under
an exclusive flock, so concurrent hooks never interleave or lose a line.
"""

from __future__ import annotations

import os
import time

from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import dumps, parse

DEFAULT_LOG = "/var/log/tiergate/decisions.jsonl"
MAX_BYTES = 64 * 1024 * 1024  # rotate to .1 beyond this


def log_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("TIERGATE_LOG") or DEFAULT_LOG


def write(record: dict, path: str | None = None) -> str | None:
    """Append one record; returns None, or one line saying why it could not be kept."""
    import fcntl

    path = log_path(path)
    record.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z")
    line = dumps(_plain(record), ascii=True) + b"\n"
    try:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size > MAX_BYTES:
                os.replace(path, path + ".1")  # the next writer creates a fresh file
            written = os.write(fd, line)
            if written != len(line):
                return f"decision log {path}: short write ({written} of {len(line)} bytes)"
        finally:
            os.close(fd)
    except OSError as exc:
        return f"decision log {path}: {exc.strerror}"
    return None


def read(path: str | None = None) -> list[dict]:
    """All records, oldest first (rotated file included); torn or foreign lines are skipped."""
    path = log_path(path)
    out = []
    for p in (path + ".1", path):
        try:
            with open(p, "rb") as fh:
                for raw in fh:
                    try:
                        rec = parse(raw.decode("utf-8", "replace"), "log line")
                    except OciError:
                        continue
                    if isinstance(rec, dict):
                        out.append(rec)
        except OSError:
            continue
    return out


def _plain(value):
    """JSON-able copy: anything else becomes its str() (a record must never fail to serialise)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
