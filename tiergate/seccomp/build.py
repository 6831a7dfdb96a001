"""Build a libseccomp filter from an OCI ``linux.seccomp`` object.

Used by tests and ``tiergate doctor`` to prove what a runtime would load:
the translation follows runc (libseccomp-golang): ERRNO without errnoRet is
EPERM, MASKED_EQ takes value as the mask and valueTwo as the datum, names
unknown on an architecture are skipped.
"""

from __future__ import annotations

import errno as _errno

import pyseccomp

from tiergate.core.names import SECCOMP_OPERATORS
from tiergate.seccomp.syscalls import ARCH_TOKENS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_OPS = {op: getattr(pyseccomp, op.removeprefix("SCMP_CMP_")) for op in SECCOMP_OPERATORS}  # EQ, MASKED_EQ ...


class SeccompBuildError(ValueError):
    """The OCI seccomp object cannot be turned into a libseccomp filter."""


def action_value(action: str, errno_ret: int | None = None) -> int:
    """libseccomp action constant for an OCI action name."""
    if action == "SCMP_ACT_ALLOW":
        return pyseccomp.ALLOW
    if action == "SCMP_ACT_ERRNO":
        return pyseccomp.ERRNO(_errno.EPERM if errno_ret is None else errno_ret)
    if action == "SCMP_ACT_TRACE":
        return pyseccomp.TRACE(_errno.EPERM if errno_ret is None else errno_ret)
    if action == "SCMP_ACT_LOG":
        return pyseccomp.LOG
    if action == "SCMP_ACT_TRAP":
        return pyseccomp.TRAP
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return pyseccomp.KILL_THREAD
    if action == "SCMP_ACT_KILL_PROCESS":
        return pyseccomp.KILL_PROCESS
    if action == "SCMP_ACT_NOTIFY":
        return pyseccomp.NOTIFY
    raise SeccompBuildError(f"unsupported seccomp action {action!r}")


def _arch_ids(oci: dict[str, Any], all_arches: bool) -> list[int]:
    if not all_arches:
        return []
    ids = []
    for token in oci.get("architectures") or []:
        if token not in ARCH_TOKENS:
            raise SeccompBuildError(f"unsupported seccomp architecture {token!r}")
        ids.append(ARCH_TOKENS[token])
    return ids


def to_filter(oci_seccomp: dict[str, Any], all_arches: bool = False) -> pyseccomp.SyscallFilter:
    """A SyscallFilter equivalent to ``oci_seccomp``.

    By default it holds the native architecture only (what a test on this
    host loads).  ``all_arches=True`` also adds every listed architecture, as
    runc does, so rule conflicts on any ABI show up.  Raises OSError (from
    libseccomp) or SeccompBuildError when the runtime would fail too.
    """
    default = action_value(oci_seccomp["defaultAction"], oci_seccomp.get("defaultErrnoRet"))
    flt = pyseccomp.SyscallFilter(default)
    native = pyseccomp.system_arch()
    for arch in _arch_ids(oci_seccomp, all_arches):
        if arch != native and not flt.exist_arch(arch):
            flt.add_arch(arch)
    for rule in oci_seccomp.get("syscalls") or []:
        action = action_value(rule["action"], rule.get("errnoRet"))
        if action == default:
            continue  # libseccomp refuses rules that repeat the default action
        args = []
        for a in rule.get("args") or []:
            op = _OPS.get(a["op"])
            if op is None:
                raise SeccompBuildError(f"unsupported seccomp operator {a['op']!r}")
            args.append(pyseccomp.Arg(a["index"], op, a["value"], a.get("valueTwo", 0)))
        for name in rule["names"]:
            nr = pyseccomp.resolve_syscall(native, name)
            # Skip names libseccomp does not know at all (-1, runc skips them
            # too) and, for a native-only filter, names of other ABIs (< 0).
            if nr == -1 or (nr < 0 and not all_arches):
                continue
            flt.add_rule(action, name, *args)
    return flt
