"""Prometheus counters kept in a state file beside the decision log, bumped with each record.

Counters must never go down while the host runs (Prometheus' rate() and
increase() read a drop as a restart), so they are not recomputed from a log
that rotates: every record written adds to <log>.counters.json (journald:
beside the default file log), under <that>.lock, rewritten in place by one
write (see update). Standard library only: this runs on every container start.
"""

from __future__ import annotations

import os

from tiergate.core.names import DECISION_STAGES
from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import dumps, parse

# Hook runs took 1 ms to over 0.5 s here (network tiers): buckets reach 10 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Stages that only carry out a decision already made (the network createRuntime hook).
FOLLOW_UP_STAGES = frozenset({"createRuntime"})
POLICY_STAGE = "policy"  # the error record of a start that ran on the last good policy
SEP = "|"  # joins label values in state keys (tier names and stages never hold it)
MAX_STATE = 1 << 20  # the state holds a few hundred bytes per tier: anything near this is not ours
GROW = 512  # the state file grows in steps of this many bytes (spaces until used)

# (substring of the reason, kind); first match wins.
REASON_KINDS = (
    ("may get at most", "ceiling"),
    ("unknown tier", "unknown_tier"),
    ("cannot read the image's labels", "unknown_image"),
    ("refuses a container that", "escalation"),
    ("requires AppArmor", "apparmor"),
    ("network policy", "network"),
    ("weaker than tier", "verify"),
    ("not hardened", "verify"),
    ("internal error", "internal"),
)

# Audit mode: what enforcement would have changed, by the spec field a change names.
WOULD_DENY_KINDS = (
    ("$.process.capabilities", "capabilities"),
    ("--cap", "capabilities"),
    ("$.linux.seccomp", "seccomp"),
    ("$.process.noNewPrivileges", "no_new_privileges"),
    ("--no-new-privs", "no_new_privileges"),
    ("$.process.apparmorProfile", "apparmor"),
    ("$.mounts", "mounts"),
    ("$.linux.devices", "devices"),
    ("$.linux.resources.devices", "devices"),
    ("$.linux.namespaces", "namespaces"),
    ("$.linux.maskedPaths", "paths"),
    ("$.linux.readonlyPaths", "paths"),
    ("$.root", "paths"),
    ("$.linux.sysctl", "sysctl"),
    ("$.linux.resources", "resources"),
    ("$.process.rlimits", "resources"),
    ("network", "network"),
)


def reason_kind(rec: dict) -> str:
    reason = str(rec.get("reason") or "")
    for needle, kind in REASON_KINDS:
        if needle in reason:
            return kind
    if rec.get("outcome") == "error":
        return "policy" if "policy" in reason.lower() or ".toml" in reason else "error"
    return "other"


def would_deny_kind(change: str) -> str:
    for prefix, kind in WOULD_DENY_KINDS:
        if change.startswith(prefix):
            return kind
    return "other"


def path_for(log: str) -> str:
    if log == "journal":
        from tiergate.telemetry.record import file_log

        log = file_log()
    return log + ".counters.json"


def _key(*parts: object) -> str:
    return SEP.join(str(p) for p in parts)


def add(state: dict, rec: dict, timestamp: float) -> dict:
    """Pure: the counters after one more record."""
    def bump(table: str, key: str, n: float = 1) -> None:
        t = state.setdefault(table, {})
        t[key] = t.get(key, 0) + n

    stage = str(rec.get("stage") or "unknown")
    outcome = str(rec.get("outcome") or "unknown")
    tier = str(rec.get("tier") or "none")
    state["records"] = state.get("records", 0) + 1
    state["last_record"] = max(state.get("last_record", 0), timestamp)
    if stage == POLICY_STAGE:
        bump("policy_errors", "last_good")
        return state
    if stage not in FOLLOW_UP_STAGES or outcome != "allowed":
        bump("decisions", _key(tier, outcome))
    if outcome in ("refused", "error"):
        bump("refusals", reason_kind(rec))
    if rec.get("policy_error") or (outcome == "error" and reason_kind(rec) == "policy"):
        state["policy_error"] = {"active": 1, "time": timestamp, "reason": str(rec.get("policy_error") or rec.get("reason"))}
        if not rec.get("policy_error"):
            bump("policy_errors", "refused")
    elif rec.get("policy"):
        state["policy_error"] = dict(state.get("policy_error") or {}, active=0)
    d = rec.get("duration_ms")
    if isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0:
        h = state.setdefault("durations", {}).setdefault(_key(stage, tier, outcome),
                                                         {"buckets": [0] * len(BUCKETS), "sum": 0.0, "count": 0})
        seconds = d / 1000.0
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                h["buckets"][i] += 1
        h["sum"] = round(h["sum"] + seconds, 6)
        h["count"] += 1
    if rec.get("mode") == "audit" and stage in DECISION_STAGES:
        for change in rec.get("changes") or []:
            bump("would_deny", would_deny_kind(str(change)))
    if rec.get("log_fallback"):
        bump("log_fallbacks", "journal")
    return state


def load(path: str) -> dict:
    """The persisted counters ({} when none yet), read under the writers' lock (shared) when it
    can be opened: a reader never sees a write in progress."""
    import fcntl

    try:
        lock = os.open(path + ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        lock = -1
    try:
        if lock >= 0:
            fcntl.flock(lock, fcntl.LOCK_SH)
        with open(path, "rb") as fh:
            return _state(fh.read())
    except OSError:
        return {}
    finally:
        if lock >= 0:
            os.close(lock)


def _state(data: bytes) -> dict:
    try:
        state = parse(data.decode("utf-8"), "metrics state")
    except (UnicodeDecodeError, OciError):
        return {}
    return state if isinstance(state, dict) else {}


def update(log: str, rec: dict, timestamp: float) -> str | None:
    """Add one record to the persisted counters; returns None or one line saying why it could not.

    Under the exclusive lock the file is rewritten in place by one write, padded with spaces
    (JSON's whitespace) to its current size, so it never shrinks and a writer killed at any
    point leaves the old state or the new one. It grows only into space reserved first
    (posix_fallocate), so a full disk fails before a byte is overwritten. A rename of a
    temporary file over it, as before, cost every record ~0.3 ms on ext4 (the new file's
    delayed allocation is flushed on a rename over an existing one)."""
    import fcntl

    path = path_for(log)
    try:
        try:
            lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # the log's directory, on a first record
            os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
            lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o640)
            try:
                size = os.fstat(fd).st_size
                if size > MAX_STATE:
                    return f"metrics state {path}: larger than {MAX_STATE} bytes"
                old = os.pread(fd, size, 0)
                data = dumps(add(_state(old), rec, timestamp))
                if len(data) > size:
                    size = -(-len(data) // GROW) * GROW  # room for a while: few reservations
                    os.posix_fallocate(fd, 0, size)
                data = data.ljust(size)
                done = 0
                while done < len(data):
                    done += os.pwrite(fd, data[done:], done)
            finally:
                os.close(fd)
        finally:
            os.close(lock)
    except OSError as exc:
        return f"metrics state {path}: {exc.strerror}"
    return None
