"""Audit mode's seccomp filter: the tier's filter with every denial turned into SCMP_ACT_LOG. Pure, stdlib only.

A syscall the tier allows leaves no record, even where only a capability guards
it: socket(AF_PACKET) needs CAP_NET_RAW, not a seccomp denial. So the audit
filter also logs socket(AF_PACKET, ...) wherever the tier allows it. libseccomp
lets one rule compare an argument once and lets an ALLOW on `arg0 != 40` win
over a LOG on `arg0 == 17` (measured with libseccomp 2.5.4), so the tier's socket
ALLOW rules on arg0 are rewritten into one ALLOW per family they admit (0..63,
AF_PACKET left out) plus `arg0 >= 64` if they admit it: AF_PACKET then meets the
filter's default action, SCMP_ACT_LOG. The record is exact (the kernel's
type=1326 names the pid and syscall; the family is AF_PACKET by construction).
Limit: 32-bit x86 programs reach socket through socketcall(2), not rewritten.
"""

from __future__ import annotations

from tiergate.core.harden import clone

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

AF_PACKET = 17
FAMILIES = 64  # AF_MAX is 46 on Linux 6.x; above this every value behaves as 64 does for the shipped rules


def _holds(cond: dict[str, Any], v: int) -> bool:
    op, a, b = str(cond.get("op")), int(cond.get("value", 0)), int(cond.get("valueTwo", 0))
    return {"SCMP_CMP_NE": v != a, "SCMP_CMP_EQ": v == a, "SCMP_CMP_LT": v < a, "SCMP_CMP_LE": v <= a,
            "SCMP_CMP_GT": v > a, "SCMP_CMP_GE": v >= a, "SCMP_CMP_MASKED_EQ": v & a == b}.get(op, False)


def admits(profile: dict[str, Any] | None, syscall: str, arg0: int) -> bool:
    """Does the filter allow syscall(arg0, ...) for some value of the other arguments? (None: no filter.)"""
    if not profile:
        return True
    hits = [r.get("action") for r in profile.get("syscalls", []) if syscall in r.get("names", [])
            and all(_holds(a, arg0) for a in r.get("args") or [] if a.get("index") == 0)]
    return "SCMP_ACT_ALLOW" in hits if hits else profile.get("defaultAction") == "SCMP_ACT_ALLOW"


def log_mode(profile: dict[str, Any]) -> dict[str, Any]:
    """The same filter with every denying action turned into SCMP_ACT_LOG, and AF_PACKET sockets logged."""
    out: dict[str, Any] = clone(profile)
    if out.get("defaultAction") != "SCMP_ACT_ALLOW":
        out["defaultAction"] = "SCMP_ACT_LOG"
        out.pop("defaultErrnoRet", None)
    for rule in out.get("syscalls", []):
        if rule.get("action") != "SCMP_ACT_ALLOW":
            rule["action"] = "SCMP_ACT_LOG"
            rule.pop("errnoRet", None)
    return _watch_socket(out)


def _watch_socket(out: dict[str, Any]) -> dict[str, Any]:
    rules = out.get("syscalls", [])
    allows = [r for r in rules if "socket" in r.get("names", []) and r.get("action") == "SCMP_ACT_ALLOW"]
    if not allows and out.get("defaultAction") == "SCMP_ACT_ALLOW":  # allowed by default: an explicit LOG rule
        rules.append({"names": ["socket"], "action": "SCMP_ACT_LOG",
                      "args": [{"index": 0, "value": AF_PACKET, "op": "SCMP_CMP_EQ"}]})
        return out
    if not allows or any(a.get("index") != 0 for r in allows for a in r.get("args") or []):
        return out  # AF_PACKET already meets the (logging) default, or conditions we do not rewrite

    def admitted(v: int) -> bool:
        return any(all(_holds(a, v) for a in r.get("args") or []) for r in allows)

    if not admitted(AF_PACKET):
        return out
    for r in allows:
        r["names"] = [n for n in r["names"] if n != "socket"]
    out["syscalls"] = [r for r in rules if r["names"]]
    out["syscalls"] += [{"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]}
                        for v in range(FAMILIES) if v != AF_PACKET and admitted(v)]
    if admitted(FAMILIES):
        out["syscalls"].append({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                                "args": [{"index": 0, "value": FAMILIES, "op": "SCMP_CMP_GE"}]})
    return out

