"""The intersection of two seccomp profiles: what either denies, the result denies. Pure, stdlib only.

Used on every start where the engine or caller already set a profile (podman
always does), so the tier never swaps a stricter profile for a weaker one.

Per syscall each profile is reduced to the argument conditions under which it
allows the call (a disjunction of rules, each a conjunction of comparisons) and
its conditional deny rules (kept for their errno). The result allows a call
only where both allow it: the cross product of the two disjunctions. Where that
cannot be written as seccomp rules (two different comparisons on one argument
in one rule, a MASKED_EQ deny to negate in a default-allow profile, too many
rules) the combination is dropped, which denies it: an approximation that is
only ever stricter. Deny rules stay disjoint from the result's allows because
each was disjoint from its own profile's allows, a superset of the result's.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

ALLOW = "SCMP_ACT_ALLOW"
# Actions that let the call run. NOTIFY and TRACE hand the choice to the caller's agent:
# they count as denials (kept as they are), so the agent can never allow what the tier denies.
_ALLOWING = frozenset({ALLOW, "SCMP_ACT_LOG"})
_NEGATE = {"SCMP_CMP_EQ": "SCMP_CMP_NE", "SCMP_CMP_NE": "SCMP_CMP_EQ", "SCMP_CMP_LT": "SCMP_CMP_GE",
           "SCMP_CMP_GE": "SCMP_CMP_LT", "SCMP_CMP_LE": "SCMP_CMP_GT", "SCMP_CMP_GT": "SCMP_CMP_LE"}
_MAX_RULES = 64  # per syscall; beyond it the call is denied (sound, and keeps runc's compile small)
_WEAKENING_FLAGS = frozenset({"SECCOMP_FILTER_FLAG_SPEC_ALLOW"})

Cond = tuple[int, int, int, str]  # (index, value, valueTwo, op)
Action = tuple[str | None, int | None]  # (action or None when a profile lacks defaultAction, errnoRet or None)
Conds = tuple[Cond, ...]  # a conjunction


class _Profile:
    __slots__ = ("default", "rules", "plain")

    def __init__(self, profile: dict[str, Any]) -> None:
        self.default: Action = (profile.get("defaultAction"), profile.get("defaultErrnoRet"))
        self.rules: dict[str, list[tuple[Action, tuple[Cond, ...]]]] = {}
        self.plain: dict[str, Action] = {}  # names whose every rule is unconditional: the action (the fast path)
        conditional = set()
        for rule in profile.get("syscalls") or []:
            action = (rule["action"], rule.get("errnoRet"))
            args = rule.get("args")
            conds = tuple(sorted((a["index"], a.get("value", 0), a.get("valueTwo", 0), a["op"]) for a in args)) if args else ()
            for name in rule["names"]:
                self.rules.setdefault(name, []).append((action, conds))
                if conds:
                    conditional.add(name)
                else:
                    self.plain[name] = action
        for name in conditional:
            self.plain.pop(name, None)

    def verdict(self, name: str) -> Action | None:
        """The action every call of `name` gets, or None when it depends on the arguments."""
        return self.plain.get(name) or (None if name in self.rules else self.default)

    def outcome(self, name: str) -> tuple[list[Conds], list[tuple[Action, Conds]], Action | None]:
        """(allowing conjunctions, conditional deny rules, the deny every other call gets or None)."""
        rules = self.rules.get(name, [])
        plain = [a for a, conds in rules if not conds]
        fall = plain[-1] if plain else self.default
        denies = [(a, conds) for a, conds in rules if conds and a[0] not in _ALLOWING]
        if fall[0] not in _ALLOWING:
            return [conds for a, conds in rules if conds and a[0] in _ALLOWING], denies, fall
        allowed: list[Conds] = [()]
        for _, conds in denies:  # allowed where no deny rule matches: AND of NOT(c1 AND c2 ...)
            negated = [_negate(c) for c in conds]
            allowed = _and(allowed, [(n,) for n in negated if n]) if all(negated) else []
        return allowed, denies, None


def _negate(cond: Cond) -> Cond | None:
    op = _NEGATE.get(cond[3])
    return (cond[0], cond[1], cond[2], op) if op else None


def _holds(cond: Cond, x: int) -> bool:
    _, v, v2, op = cond
    return {"SCMP_CMP_EQ": x == v, "SCMP_CMP_NE": x != v, "SCMP_CMP_LT": x < v, "SCMP_CMP_LE": x <= v,
            "SCMP_CMP_GT": x > v, "SCMP_CMP_GE": x >= v, "SCMP_CMP_MASKED_EQ": (x & v) == v2}.get(op, False)


def _both(c: Cond, d: Cond) -> Cond | None | Literal[False]:
    """One comparison meaning `c and d` on the same argument; None: never true; False: not writable."""
    if c == d:
        return c
    for pin, other in ((c, d), (d, c)):
        if pin[3] == "SCMP_CMP_EQ":  # the value is known: the other comparison is decided
            return pin if _holds(other, pin[1]) else None
    if c[3] == d[3] == "SCMP_CMP_MASKED_EQ":
        (_, m1, v1, _), (_, m2, v2, _) = c, d
        if v1 & ~m1 or v2 & ~m2 or (v1 & m2) != (v2 & m1):
            return None
        return (c[0], m1 | m2, v1 | v2, "SCMP_CMP_MASKED_EQ")
    return False


def _and(left: list[Conds], right: list[Conds]) -> list[Conds]:
    """The conjunction of two disjunctions, one comparison per argument per rule (libseccomp's rule)."""
    out = []
    for a in left:
        for b in right:
            by_index: dict[int, Cond] = {}
            ok = True
            for cond in (*a, *b):
                have = by_index.get(cond[0])
                merged = cond if have is None else _both(have, cond)
                if not merged:  # never true (exact) or not writable (dropped: stricter)
                    ok = False
                    break
                by_index[cond[0]] = merged
            rule = tuple(sorted(by_index.values()))
            if ok and rule not in out:
                out.append(rule)
    return out if len(out) <= _MAX_RULES else []


def intersect(tier: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
    """A profile that denies every call either profile denies (the tier's errno first)."""
    a, b = _Profile(tier), _Profile(caller)
    default = next((d for d in (a.default, b.default) if d[0] not in _ALLOWING), (ALLOW, None))
    out_rules: dict[tuple[Action, Conds], list[str]] = {}

    def emit(name: str, action: Action, conds: Conds) -> None:
        out_rules.setdefault((action, conds), []).append(name)

    for name in dict.fromkeys([*a.rules, *b.rules]):
        va, vb = a.verdict(name), b.verdict(name)
        if va and vb:  # the common case: neither looks at arguments
            deny = va if va[0] not in _ALLOWING else vb if vb[0] not in _ALLOWING else None
            if deny is None:
                if default[0] not in _ALLOWING:
                    emit(name, (ALLOW, None), ())
            elif deny != default:
                emit(name, deny, ())
            continue
        (a_ok, a_deny, a_fall), (b_ok, b_deny, b_fall) = a.outcome(name), b.outcome(name)
        if default[0] in _ALLOWING:  # both allow by default: the union of their denials is exact
            for fall in (a_fall, b_fall):
                if fall:
                    emit(name, fall, ())
                    break
            else:
                for action, conds in dict.fromkeys([*a_deny, *b_deny]):
                    emit(name, action, conds)
            continue
        allowed = _and(a_ok, b_ok)
        if () in allowed:
            emit(name, (ALLOW, None), ())
            continue
        if not allowed:
            fall = a_fall or b_fall or (a_deny or b_deny or [(default, ())])[0][0]
            if fall != default:
                emit(name, fall, ())
            continue
        for conds in allowed:
            emit(name, (ALLOW, None), conds)
        seen = set()
        for action, conds in [*a_deny, *b_deny]:
            if conds not in seen:  # the same condition in both: the tier's action
                seen.add(conds)
                emit(name, action, conds)
    return _render(tier, caller, default, out_rules)


def _render(tier: dict[str, Any], caller: dict[str, Any], default: Action, rules: dict[tuple[Action, Conds], list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"defaultAction": default[0]}
    if default[1] is not None:
        out["defaultErrnoRet"] = default[1]
    arches_a, arches_b = tier.get("architectures") or [], caller.get("architectures") or []
    arches = [x for x in arches_a if x in arches_b] if arches_a and arches_b else []
    if arches:
        out["architectures"] = arches
    flags = [f for f in dict.fromkeys([*(tier.get("flags") or []), *(caller.get("flags") or [])])
             if f not in _WEAKENING_FLAGS]
    if flags:
        out["flags"] = flags
    syscalls = []  # in one canonical order, so a second intersection is equal, not only equivalent
    for (action, conds), names in sorted(rules.items(), key=lambda kv: (kv[0][0][0], kv[0][0][1] or 0, kv[0][1])):
        rule: dict[str, Any] = {"names": sorted(names), "action": action[0]}
        if action[1] is not None:
            rule["errnoRet"] = action[1]
        if conds:  # valueTwo only when set: Go engines re-serialise without a zero one
            rule["args"] = [{"index": i, "value": v, **({"valueTwo": v2} if v2 else {}), "op": op}
                            for i, v, v2, op in conds]
        syscalls.append(rule)
    out["syscalls"] = syscalls
    if any(r["action"] == "SCMP_ACT_NOTIFY" for r in syscalls):
        for key in ("listenerPath", "listenerMetadata"):
            if caller.get(key) is not None:
                out[key] = caller[key]
    return out
