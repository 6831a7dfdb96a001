"""The decision log: one JSON line per decision, refusal or error.

Each record is written with a single write(2) on an O_APPEND descriptor under
an exclusive flock, so concurrent hooks never interleave or lose a line.
The log target "journal" sends each record to systemd-journald instead (one
datagram: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER=tiergate, TIERGATE_RECORD).
"""

from __future__ import annotations

import os
import time

from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import dumps, parse

DEFAULT_LOG = "/var/log/tiergate/decisions.jsonl"
JOURNAL = "journal"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
INFLIGHT_JOURNAL = "/run/tiergate/inflight"
MAX_BYTES = 64 * 1024 * 1024  # rotate to .1 beyond this


def log_path(explicit: str | None = None) -> str:
    """--log, else $TIERGATE_LOG, else the system log (root) or the user's state dir (rootless)."""
    return explicit or os.environ.get("TIERGATE_LOG") or file_log()


def file_log() -> str:
    """The default file log: where records go when journald cannot take them, and the metrics state lives."""
    return DEFAULT_LOG if owner_uid() == 0 else user_dir("XDG_STATE_HOME", ".local/state", "decisions.jsonl")


def owner_uid(uid_map: str = "/proc/self/uid_map") -> int:
    """Who this process is on the host: a rootless engine runs hooks as uid 0 of the user's namespace."""
    euid = os.geteuid()
    try:
        with open(uid_map, encoding="ascii") as fh:
            for line in fh:
                inside, outside, count = (int(x) for x in line.split())
                if inside <= euid < inside + count:
                    return outside + euid - inside
    except (OSError, ValueError):
        pass
    return euid


def user_dir(xdg: str, fallback: str, name: str) -> str:
    """A rootless engine runs hooks as the user, often with an empty environment: find home by uid."""
    base = os.environ.get(xdg)
    if not base:
        import pwd

        try:
            home = os.environ.get("HOME") or pwd.getpwuid(owner_uid()).pw_dir
        except KeyError:  # never a shared temp dir someone else could create first: writes fail, and say so
            home = "/nonexistent"
        base = os.path.join(home, fallback)
    return os.path.join(base, "tiergate", name)


def begin(record: dict, path: str | None = None) -> str | None:
    """Note a decision in flight (<log>.inflight/<pid>-<ns>.json); `write` removes it.

    A hook the engine kills on its timeout never writes its line: `read` reports
    what it left here as outcome "killed", so the record is kept all the same.
    """
    record.setdefault("time", _now())
    marker = os.path.join(_inflight_dir(log_path(path)), f"{os.getpid()}-{time.monotonic_ns()}.json")
    try:
        os.makedirs(os.path.dirname(marker), mode=0o750, exist_ok=True)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, dumps(_plain({**record, "pid": os.getpid()}), ascii=True))
        finally:
            os.close(fd)
    except OSError:
        return None
    return marker


# Fields every record this process writes carries: a start the warm helper ran (engines/warm.py)
# says so, {"warm": <the helper's pid>}; empty in a hook that runs its start itself.
SERVED: dict = {}

LOCK_WAIT = 2.0  # seconds: a stuck log holder must not stall every container start


def _lock(fd: int, fcntl) -> None:
    """flock, bounded: past LOCK_WAIT write anyway (one O_APPEND write of a line is still whole)."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)


def _inflight_dir(path: str) -> str:
    return INFLIGHT_JOURNAL if path == JOURNAL else path + ".inflight"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def write(record: dict, path: str | None = None, inflight: str | None = None) -> str | None:
    """Append one record (and retire its in-flight note), and add it to the persisted metrics;
    returns None, or one line saying why it could not be kept.

    A start that ran on the last good policy (record["policy_error"]) first writes an
    error record of its own (stage "policy"), so the broken file shows on every start.
    Journald that cannot take a record: the record goes to the default file log,
    marked "log_fallback".
    """
    path = log_path(path)
    record.setdefault("time", _now())
    record.update(SERVED)
    try:
        problems = []
        if record.get("policy_error"):
            problems.append(_write_one({
                "time": record["time"], "stage": "policy", "outcome": "error", "engine": record.get("engine"),
                "container": record.get("container"), "policy": record.get("policy"),
                "reason": f"the policy does not compile; this start used the last good policy "
                          f"({record.get('policy')}): {record['policy_error']}"}, path))
        problems.append(_write_one(record, path))
        return "; ".join(p for p in problems if p) or None
    finally:
        if inflight:
            try:
                os.unlink(inflight)
            except OSError:
                pass


def _write_one(record: dict, path: str) -> str | None:
    from tiergate.telemetry import counters

    problem = None
    if path == JOURNAL:
        problem = _journal(record)
        if problem:
            record["log_fallback"] = problem
            path = file_log()
            problem = f"{problem}; record kept in {path}" + (f" ({p})" if (p := _append(record, path)) else "")
    else:
        problem = _append(record, path)
    lost = counters.update(path, record, time.time())
    return "; ".join(p for p in (problem, lost) if p) or None


def _append(record: dict, path: str) -> str | None:
    import fcntl

    line = dumps(_plain(record), ascii=True) + b"\n"
    try:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            _lock(fd, fcntl)
            size = os.fstat(fd).st_size
            if size > MAX_BYTES:
                os.replace(path, path + ".1")  # the next writer creates a fresh file
            try:
                written = os.write(fd, line)
            except OSError:
                written = -1
            if written != len(line):  # a full disk: never leave half a line for the next one to join
                os.ftruncate(fd, size)
                return f"decision log {path}: no room for the record (disk full?)"
        finally:
            os.close(fd)
    except OSError as exc:
        return f"decision log {path}: {exc.strerror}"
    return None


def _journal(record: dict) -> str | None:
    """One native-protocol datagram to journald (fields hold no newline: the record is ASCII JSON)."""
    import socket

    outcome = record.get("outcome", "?")
    summary = (f"tiergate {record.get('stage')}: {outcome} {str(record.get('container', ''))[:12]} "
               f"tier {record.get('tier', '-')}: {record.get('reason') or record.get('why') or ''}")
    fields = {
        "MESSAGE": summary.replace("\n", " ")[:2000],
        "PRIORITY": "6" if outcome == "allowed" else "4",
        "SYSLOG_IDENTIFIER": "tiergate",
        "TIERGATE_RECORD": dumps(_plain(record), ascii=True).decode(),
    }
    payload = "".join(f"{k}={v}\n" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload, os.environ.get("TIERGATE_JOURNAL_SOCKET", JOURNAL_SOCKET))
    except OSError as exc:
        return f"journal: {exc.strerror or exc}"
    return None


def read(path: str | None = None) -> list[dict]:
    """All records, oldest first (rotated file included); torn or foreign lines are skipped.

    Decisions whose hook died before writing its line (see `begin`) come last, as
    outcome "killed".
    """
    path = log_path(path)
    if path == JOURNAL:
        return _read_journal() + _killed(INFLIGHT_JOURNAL)
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
    out.extend(_killed(_inflight_dir(path)))
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


def _read_journal() -> list[dict]:
    """Records from `journalctl -t tiergate -o json` (their TIERGATE_RECORD field)."""
    import subprocess

    try:
        out = subprocess.run(["journalctl", "-q", "-t", "tiergate", "-o", "json", "--output-fields=TIERGATE_RECORD"],
                             capture_output=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    records = []
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            entry = parse(line, "journal entry")
            rec = parse(entry["TIERGATE_RECORD"], "journal record") if isinstance(entry, dict) else None
        except (OciError, KeyError, TypeError):
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _killed(directory: str) -> list[dict]:
    out: list[dict] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    for entry in entries:
        try:
            pid = int(entry.name.split("-", 1)[0])
            if os.path.exists(f"/proc/{pid}"):
                continue  # still deciding (or the pid was reused: then it shows up later)
            with open(entry.path, "rb") as fh:
                rec = parse(fh.read(65536).decode("utf-8", "replace"), "in-flight record")
        except (ValueError, OSError, OciError):
            continue
        if isinstance(rec, dict):
            rec.update(outcome="killed", reason="the hook died before recording its decision (engine timeout?)")
            out.append(rec)
    return out
