"""Grouped seccomp profile sources -> OCI ``linux.seccomp`` objects.

A source lives in ``configs/seccomp/<name>.json``::

    {
      "description": "...",
      "extends": "baseline",                  # optional parent profile
      "defaultAction": "SCMP_ACT_ERRNO",      # required at the root, inherited
      "defaultErrnoRet": 38,                  # inherited
      "architectures": ["SCMP_ARCH_X86_64"],  # required at the root, a child replaces it
      "groups": [
        {"name": "file-io", "why": "one line",
         "action": "SCMP_ACT_ALLOW",          # default SCMP_ACT_ALLOW
         "errnoRet": 1,                       # SCMP_ACT_ERRNO only (default 1, EPERM)
         "names": ["read", "write"],
         "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1}],   # optional, ANDed
         "anyOf": [[{...}], [{...}]]          # optional instead of args: one rule per list (OR)
        }
      ],
      "remove": ["ptrace"]                    # drop the parent's rules for these names
    }

Inheritance: a child group naming a syscall REPLACES every parent rule for
that syscall; ``remove`` drops the parent's rules (the default action then
applies).  ``value``/``valueTwo`` may be written as "0x..." strings.  For
SCMP_CMP_MASKED_EQ, ``value`` is the mask and ``valueTwo`` the datum (as
runc/crun read it).

Compilation merges every group with the same action, errnoRet and args into
one rule, so the output has few rules and a deterministic order, and leaves
out rules that repeat the default action (libseccomp refuses them: runtimes
skip them).  Only the standard library is imported here; syscall names are
checked against libseccomp (syscalls.py) lazily, at compile time.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tiergate.core.names import SECCOMP_ACTIONS, SECCOMP_ARCHES, SECCOMP_OPERATORS, configs_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    SearchDirs = str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None
    Arg = tuple[int, str, int, int]  # (index, op, value, valueTwo)
    Entry = tuple[str, str, int | None, tuple[Arg, ...], str, str]  # (name, action, errnoRet, args, group, why)

PROFILE_DIR = Path(configs_dir(), "seccomp")
EPERM = 1
# On 32-bit x86, libseccomp turns a rule on these into a rule on socketcall(2)
# whose argument 0 is the *call number*: argument conditions cannot be enforced.
SOCKETCALL_MULTIPLEXED = frozenset((
    "socket", "bind", "connect", "listen", "accept", "accept4", "getsockname",
    "getpeername", "socketpair", "send", "recv", "sendto", "recvfrom", "shutdown",
    "setsockopt", "getsockopt", "sendmsg", "recvmsg", "recvmmsg", "sendmmsg",
))

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_TOP_KEYS = {"description", "extends", "defaultAction", "defaultErrnoRet",
             "architectures", "flags", "groups", "remove", "comment"}
_GROUP_KEYS = {"name", "why", "action", "errnoRet", "names", "args", "anyOf"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}
_ACTION_RANK = {a: i for i, a in enumerate(SECCOMP_ACTIONS)}


class SeccompProfileError(ValueError):
    """A seccomp profile source is missing, malformed or inconsistent."""


def _dirs(search_dirs: SearchDirs) -> list[Path]:
    if search_dirs is None:
        return [PROFILE_DIR]
    if isinstance(search_dirs, (str, os.PathLike)):
        return [Path(search_dirs)]
    return [Path(d) for d in search_dirs]


def list_profiles(search_dirs: SearchDirs = None) -> list[str]:
    """Names of the profiles found in ``search_dirs`` (default: the shipped ones)."""
    found: set[str] = set()
    for d in _dirs(search_dirs):
        if d.is_dir():
            found.update(p.stem for p in d.glob("*.json") if _PROFILE_RE.match(p.stem))
    return sorted(found)


def load_source(name: str, search_dirs: SearchDirs = None) -> dict[str, Any]:
    """The raw source of profile ``name`` (first search dir that has it wins)."""
    if not isinstance(name, str) or not _PROFILE_RE.match(name):
        raise SeccompProfileError(f"seccomp profile name {name!r} is not valid")
    for d in _dirs(search_dirs):
        path = d / f"{name}.json"
        if path.is_file():
            try:
                with open(path, encoding="utf-8") as f:
                    src = json.load(f)
            except (OSError, ValueError) as e:
                raise SeccompProfileError(f"seccomp profile {name!r} ({path}): cannot read: {e}") from None
            if not isinstance(src, dict):
                raise SeccompProfileError(f"seccomp profile {name!r} ({path}): not a JSON object")
            return src
    where = ", ".join(str(d) for d in _dirs(search_dirs))
    raise SeccompProfileError(f"unknown seccomp profile {name!r} (searched {where})")


def _int(v: object, what: str) -> int:
    if isinstance(v, bool):
        raise SeccompProfileError(f"{what}: {v!r} is not an integer")
    if isinstance(v, str):
        try:
            v = int(v, 0)
        except ValueError:
            raise SeccompProfileError(f"{what}: {v!r} is not an integer") from None
    if not isinstance(v, int) or not 0 <= v < 2**64:
        raise SeccompProfileError(f"{what}: {v!r} is not an unsigned 64-bit integer")
    return v


def _norm_args(args: object, what: str) -> tuple[Arg, ...]:
    if not isinstance(args, list):
        raise SeccompProfileError(f"{what}: args must be a list")
    out = []
    for a in args:
        if not isinstance(a, dict) or set(a) - _ARG_KEYS:
            raise SeccompProfileError(f"{what}: bad arg condition {a!r} (keys: index, value, valueTwo, op)")
        if a.get("op") not in SECCOMP_OPERATORS:
            raise SeccompProfileError(f"{what}: unknown op {a.get('op')!r}")
        index = _int(a.get("index"), f"{what}: index")
        if index > 5:
            raise SeccompProfileError(f"{what}: arg index {index} > 5")
        value = _int(a.get("value"), f"{what}: value")
        two = _int(a.get("valueTwo", 0), f"{what}: valueTwo")
        if a["op"] != "SCMP_CMP_MASKED_EQ" and two:
            raise SeccompProfileError(f"{what}: valueTwo only means something with SCMP_CMP_MASKED_EQ")
        if a["op"] == "SCMP_CMP_MASKED_EQ" and two & ~value:
            raise SeccompProfileError(f"{what}: MASKED_EQ datum {two:#x} has bits outside mask {value:#x}")
        out.append((index, a["op"], value, two))
    if len(set(out)) != len(out):
        raise SeccompProfileError(f"{what}: duplicate arg condition")
    return tuple(sorted(out))


def _norm_group(g: object, profile: str, i: int) -> dict[str, Any]:
    what = f"seccomp profile {profile!r} group #{i}"
    if not isinstance(g, dict):
        raise SeccompProfileError(f"{what}: not an object")
    what = f"seccomp profile {profile!r} group {g.get('name', i)!r}"
    extra = set(g) - _GROUP_KEYS
    if extra:
        raise SeccompProfileError(f"{what}: unknown keys {sorted(extra)}")
    if not isinstance(g.get("name"), str) or not g["name"]:
        raise SeccompProfileError(f"{what}: needs a name")
    if not isinstance(g.get("why"), str) or not g["why"].strip():
        raise SeccompProfileError(f"{what}: needs a one-line 'why'")
    action = g.get("action", "SCMP_ACT_ALLOW")
    if action not in SECCOMP_ACTIONS:
        raise SeccompProfileError(f"{what}: unknown action {action!r}")
    errno = None
    if action in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        errno = _int(g.get("errnoRet", EPERM), f"{what}: errnoRet")
        if errno >= 2**32:
            raise SeccompProfileError(f"{what}: errnoRet out of range")
    elif "errnoRet" in g:
        raise SeccompProfileError(f"{what}: errnoRet needs SCMP_ACT_ERRNO or SCMP_ACT_TRACE")
    names = g.get("names")
    if not isinstance(names, list) or not names:
        raise SeccompProfileError(f"{what}: names must be a non-empty list")
    for n in names:
        if not isinstance(n, str) or not _NAME_RE.match(n):
            raise SeccompProfileError(f"{what}: {n!r} is not a syscall name")
    if len(set(names)) != len(names):
        raise SeccompProfileError(f"{what}: names listed twice")
    if "args" in g and "anyOf" in g:
        raise SeccompProfileError(f"{what}: give args or anyOf, not both")
    if "anyOf" in g:
        if not isinstance(g["anyOf"], list) or not g["anyOf"]:
            raise SeccompProfileError(f"{what}: anyOf must be a non-empty list of arg lists")
        alts = [_norm_args(a, what) for a in g["anyOf"]]
        if any(not a for a in alts):
            raise SeccompProfileError(f"{what}: an empty anyOf alternative matches everything")
    else:
        alts = [_norm_args(g.get("args", []), what)]
    return {"name": g["name"], "why": g["why"].strip(), "action": action,
            "errnoRet": errno, "names": list(names), "alternatives": alts}


def resolve(name: str, search_dirs: SearchDirs = None) -> dict[str, Any]:
    """Resolve ``extends`` chains: the profile as its defaults plus a flat list of
    rule entries ``(name, action, errnoRet, args, group, why)``, parents first."""
    chain: list[str] = []
    srcs: list[dict[str, Any]] = []
    cur: str | None = name
    while cur is not None:
        if cur in chain:
            raise SeccompProfileError(
                f"seccomp profile {name!r}: extends cycle {' -> '.join(chain + [cur])}")
        chain.append(cur)
        src = load_source(cur, search_dirs)
        extra = set(src) - _TOP_KEYS
        if extra:
            raise SeccompProfileError(f"seccomp profile {cur!r}: unknown keys {sorted(extra)}")
        srcs.append(src)
        parent = src.get("extends")
        if parent is not None and not isinstance(parent, str):
            raise SeccompProfileError(f"seccomp profile {cur!r}: extends must be a profile name")
        cur = parent
    chain.reverse()
    srcs.reverse()

    out = {"name": name, "chain": chain, "description": srcs[-1].get("description", ""),
           "defaultAction": None, "defaultErrnoRet": None, "architectures": None,
           "flags": None, "entries": []}
    for pname, src in zip(chain, srcs):
        if "defaultAction" in src:
            if src["defaultAction"] not in SECCOMP_ACTIONS:
                raise SeccompProfileError(f"seccomp profile {pname!r}: unknown defaultAction {src['defaultAction']!r}")
            out["defaultAction"] = src["defaultAction"]
        if "defaultErrnoRet" in src:
            out["defaultErrnoRet"] = _int(src["defaultErrnoRet"], f"seccomp profile {pname!r}: defaultErrnoRet")
        if "architectures" in src:
            arches = src["architectures"]
            if not isinstance(arches, list) or not arches or any(a not in SECCOMP_ARCHES for a in arches):
                raise SeccompProfileError(f"seccomp profile {pname!r}: bad architectures {arches!r}")
            out["architectures"] = list(dict.fromkeys(arches))
        if "flags" in src:
            out["flags"] = list(src["flags"])
        groups = src.get("groups", [])
        if not isinstance(groups, list):
            raise SeccompProfileError(f"seccomp profile {pname!r}: groups must be a list")
        groups = [_norm_group(g, pname, i) for i, g in enumerate(groups)]
        remove = src.get("remove", [])
        if not isinstance(remove, list) or any(not isinstance(n, str) for n in remove):
            raise SeccompProfileError(f"seccomp profile {pname!r}: remove must be a list of names")
        inherited = {e[0] for e in out["entries"]}
        missing = sorted(set(remove) - inherited)
        if missing:
            raise SeccompProfileError(
                f"seccomp profile {pname!r}: remove names no inherited rule: {', '.join(missing)}")
        replaced = set(remove).union(*(g["names"] for g in groups)) if groups else set(remove)
        entries = [e for e in out["entries"] if e[0] not in replaced]
        for g in groups:
            for alt in g["alternatives"]:
                for n in g["names"]:
                    entries.append((n, g["action"], g["errnoRet"], alt, g["name"], g["why"]))
        out["entries"] = entries
    if out["defaultAction"] is None:
        raise SeccompProfileError(f"seccomp profile {name!r}: no defaultAction in {' -> '.join(chain)}")
    if out["architectures"] is None:
        raise SeccompProfileError(f"seccomp profile {name!r}: no architectures in {' -> '.join(chain)}")
    return out


def _check_consistency(name: str, entries: list[Entry], arches: list[str]) -> None:
    by_name: dict[str, set[tuple[str, int | None, tuple[Arg, ...]]]] = {}
    for n, action, errno, args, *_ in entries:
        by_name.setdefault(n, set()).add((action, errno, args))
    for n, rules in sorted(by_name.items()):
        if len(rules) > 1 and any(not args for _, _, args in rules):
            raise SeccompProfileError(
                f"seccomp profile {name!r}: {n} has an unconditional rule and other rules "
                "(libseccomp would let the unconditional one win; give every rule for it conditions)")
        seen: dict[tuple[Arg, ...], tuple[str, int | None]] = {}
        for action, errno, args in rules:
            if args in seen and seen[args] != (action, errno):
                raise SeccompProfileError(
                    f"seccomp profile {name!r}: {n} has two different actions for the same conditions")
            seen[args] = (action, errno)
    if "SCMP_ARCH_X86" in arches:
        socketcall_open = ("SCMP_ACT_ALLOW", None, ()) in by_name.get("socketcall", ())
        for n in sorted(SOCKETCALL_MULTIPLEXED & set(by_name)):
            if any(args for _, _, args in by_name[n]) and not socketcall_open:
                raise SeccompProfileError(
                    f"seccomp profile {name!r}: argument conditions on {n} cannot be enforced on "
                    "SCMP_ARCH_X86 (libseccomp filters socketcall's call number instead); "
                    "drop SCMP_ARCH_X86 from architectures")


def _effect(action: str, errno: int | None) -> tuple[str, int | None]:
    """An action as libseccomp sees it: ERRNO and TRACE without errnoRet are EPERM, KILL is KILL_THREAD."""
    if action in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        return action, EPERM if errno is None else errno
    return ("SCMP_ACT_KILL_THREAD" if action == "SCMP_ACT_KILL" else action), None


def _arg_json(a: Arg) -> dict[str, Any]:
    index, op, value, two = a
    d: dict[str, Any] = {"index": index, "value": value}
    if op == "SCMP_CMP_MASKED_EQ":
        d["valueTwo"] = two
    d["op"] = op
    return d


def compile_profile(name: str, extra_deny: str | Iterable[str] = (), search_dirs: SearchDirs = None,
                    check_names: bool = True, arches: Iterable[str] | None = None,
                    extra_allow: Iterable[str] = ()) -> dict[str, Any]:
    """Compile profile ``name`` to an OCI ``linux.seccomp`` object.

    ``arches`` keeps only those of the profile's architectures (the host's
    family): every listed architecture makes runc compile and the kernel carry
    another copy of the filter (~10 ms per start for the two ARM ones on x86).

    ``extra_deny`` names lose every rule they had and are denied with EPERM;
    ``extra_allow`` names (a tier's seccomp_allow) lose every rule and are allowed.
    With ``check_names`` every syscall name must be known to libseccomp
    (see syscalls.check_names); raises SeccompProfileError on any problem.
    """
    if isinstance(extra_deny, str):
        extra_deny = [extra_deny]
    res = resolve(name, search_dirs)
    deny = []
    for n in extra_deny:
        if not isinstance(n, str) or not _NAME_RE.match(n):
            raise SeccompProfileError(f"seccomp deny list: {n!r} is not a syscall name")
        deny.append(n)
    allow = []
    for n in extra_allow:
        if not isinstance(n, str) or not _NAME_RE.match(n):
            raise SeccompProfileError(f"seccomp allow list: {n!r} is not a syscall name")
        if n in deny:
            raise SeccompProfileError(f"seccomp: {n!r} is both allowed and denied")
        allow.append(n)
    deny_set = set(deny) | set(allow)
    entries = [e for e in res["entries"] if e[0] not in deny_set]
    entries += [(n, "SCMP_ACT_ERRNO", EPERM, (), "extra-deny", "denied by policy") for n in deny]
    entries += [(n, "SCMP_ACT_ALLOW", None, (), "extra-allow", "allowed by policy") for n in allow]

    if check_names:
        from tiergate.seccomp import syscalls as _syscalls  # pyseccomp: policy-compile time only
        unknown = _syscalls.check_names({e[0] for e in entries})
        if unknown:
            raise SeccompProfileError(
                f"seccomp profile {name!r}: unknown syscall names: {', '.join(unknown)}")
    _check_consistency(name, entries, res["architectures"])

    # A rule that repeats the default action is left out: libseccomp refuses it, so every
    # runtime skips it (runc silently), and it would only cost bytes in every spec.
    default = _effect(res["defaultAction"], res["defaultErrnoRet"])
    rules: dict[tuple[str, int | None, tuple[Arg, ...]], set[str]] = {}
    for n, action, errno, args, *_ in entries:
        if _effect(action, errno) != default:
            rules.setdefault((action, errno, args), set()).add(n)

    def order(key: tuple[str, int | None, tuple[Arg, ...]]) -> tuple[int, int, bool, tuple[Arg, ...]]:
        action, errno, args = key
        return (_ACTION_RANK[action], errno or 0, len(args) > 0, args)

    syscalls = []
    for key in sorted(rules, key=order):
        action, errno, args = key
        rule: dict[str, Any] = {"names": sorted(rules[key]), "action": action}
        if errno is not None:
            rule["errnoRet"] = errno
        if args:
            rule["args"] = [_arg_json(a) for a in args]
        syscalls.append(rule)

    out = {"defaultAction": res["defaultAction"]}
    if res["defaultErrnoRet"] is not None:
        out["defaultErrnoRet"] = res["defaultErrnoRet"]
    out["architectures"] = [a for a in res["architectures"] if arches is None or a in arches]
    if not out["architectures"]:
        raise SeccompProfileError(f"seccomp profile {name!r} covers none of this host's architectures ({', '.join(arches or ())})")
    if res["flags"]:
        out["flags"] = list(res["flags"])
    out["syscalls"] = syscalls
    return out


def explain(name: str, search_dirs: SearchDirs = None) -> list[dict[str, Any]]:
    """Per group, what the resolved profile does and why (for ``tiergate explain``)."""
    res = resolve(name, search_dirs)
    groups: dict[tuple[str, str, int | None], dict[str, Any]] = {}
    for n, action, errno, args, group, why in res["entries"]:
        g = groups.setdefault((group, action, errno), {
            "group": group, "why": why, "action": action, "errnoRet": errno,
            "names": [], "conditional": False})
        if n not in g["names"]:
            g["names"].append(n)
        g["conditional"] = g["conditional"] or bool(args)
    return list(groups.values())
