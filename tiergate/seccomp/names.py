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

NATIVE_TARGETS = ("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64")
DEFAULT_ARCHES = NATIVE_TARGETS + ("SCMP_ARCH_X86", "SCMP_ARCH_ARM")

ARCH_TOKENS = {
    "SCMP_ARCH_X86": pyseccomp.Arch.X86,
    "SCMP_ARCH_X86_64": pyseccomp.Arch.X86_64,
    "SCMP_ARCH_X32": pyseccomp.Arch.X32,
    "SCMP_ARCH_ARM": pyseccomp.Arch.ARM,
    "SCMP_ARCH_AARCH64": pyseccomp.Arch.AARCH64,
    "SCMP_ARCH_MIPS": pyseccomp.Arch.MIPS,
    "SCMP_ARCH_MIPS64": pyseccomp.Arch.MIPS64,
    "SCMP_ARCH_MIPS64N32": pyseccomp.Arch.MIPS64N32,
    "SCMP_ARCH_MIPSEL": pyseccomp.Arch.MIPSEL,
    "SCMP_ARCH_MIPSEL64": pyseccomp.Arch.MIPSEL64,
    "SCMP_ARCH_MIPSEL64N32": pyseccomp.Arch.MIPSEL64N32,
    "SCMP_ARCH_PPC": pyseccomp.Arch.PPC,
    "SCMP_ARCH_PPC64": pyseccomp.Arch.PPC64,
    "SCMP_ARCH_PPC64LE": pyseccomp.Arch.PPC64LE,
    "SCMP_ARCH_S390": pyseccomp.Arch.S390,
    "SCMP_ARCH_S390X": pyseccomp.Arch.S390X,
    "SCMP_ARCH_PARISC": pyseccomp.Arch.PARISC,
    "SCMP_ARCH_PARISC64": pyseccomp.Arch.PARISC64,
    "SCMP_ARCH_RISCV64": pyseccomp.Arch.RISCV64,
}


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
