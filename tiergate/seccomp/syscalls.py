"""Syscall name checks against libseccomp's tables (policy-compile time only).

A profile may name a syscall that exists on only some of its architectures
(``arch_prctl`` is x86_64-only, ``mmap2`` exists only on 32-bit ABIs): a name
is *known* when libseccomp resolves it to a real number on at least one of
the checked architectures.  By default those are the two native targets,
x86_64 and aarch64, plus their 32-bit compat ABIs (x86, arm), because every
shipped profile lists SCMP_ARCH_X86/SCMP_ARCH_ARM and must be able to allow
their syscalls (``_llseek``, ``socketcall``, ``*_time64``).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyseccomp

from tiergate.core.names import SECCOMP_ARCH_FAMILIES, SECCOMP_ARCHES

NATIVE_TARGETS = tuple(family[0] for family in SECCOMP_ARCH_FAMILIES.values())
DEFAULT_ARCHES = NATIVE_TARGETS + ("SCMP_ARCH_X86", "SCMP_ARCH_ARM")

# The runtime-spec's architectures this libseccomp build knows (pyseccomp.Arch.X86_64 ...).
ARCH_TOKENS = {a: getattr(pyseccomp.Arch, a.removeprefix("SCMP_ARCH_")) for a in SECCOMP_ARCHES
               if hasattr(pyseccomp.Arch, a.removeprefix("SCMP_ARCH_"))}


def syscall_number(name: str, arch: str | int = "native") -> int | None:
    """The syscall's number on ``arch`` (token, pyseccomp.Arch value or "native"), or None."""
    if arch == "native":
        arch_id = pyseccomp.system_arch()
    elif isinstance(arch, str):
        arch_id = ARCH_TOKENS[arch]
    else:
        arch_id = arch
    nr = pyseccomp.resolve_syscall(arch_id, name)
    return nr if nr >= 0 else None


def check_names(names: Iterable[str], arches: Iterable[str] = DEFAULT_ARCHES) -> list[str]:
    """Names (sorted, unique) that resolve on none of ``arches``."""
    arch_list = list(arches)
    unknown = set()
    for name in set(names):
        if not isinstance(name, str) or not name:
            unknown.add(repr(name))
            continue
        if not any(syscall_number(name, a) is not None for a in arch_list):
            unknown.add(name)
    return sorted(unknown)
