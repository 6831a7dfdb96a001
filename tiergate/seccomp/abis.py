"""Which of its family's ABIs this host's kernel runs (policy-compile time: one forked probe).

Every architecture a filter lists is another copy of it that runc has libseccomp
build on every create and every exec, and the cost grows faster than the filter
(libseccomp 2.5.4, a tier's filter: x86_64 alone 7.3 M instructions, with x86 22.5 M,
with x86 and x32 34.8 M; containerd's RuntimeDefault, which lists all three, 29.0 M).
An ABI the kernel cannot run is dead weight there: most x86_64 kernels build x32
out or boot with it off (Debian: syscall.x32=n), and then every x32 call fails
with ENOSYS whatever the filter says. Left out of the filter, an x32 call meets
libseccomp's bad-arch action instead and the caller is killed: it never ran
before either, and nothing else changes (tests/hook/seccomp/test_seccomp_cost.py
compares both filters' BPF on every other ABI). i386 (int 0x80) is kept: kernels
with IA32 emulation run it, and a probe would need machine code.
"""

from __future__ import annotations

import os

X32 = "SCMP_ARCH_X32"
X32_SYSCALL_BIT = 0x40000000
GETPID_X86_64 = 39  # x32 numbers its common syscalls as x86_64 does, plus X32_SYSCALL_BIT


def x32_runs() -> bool:
    """Does an x32 getpid() run here? Probed in a forked child: a filter around this
    process may kill it (then nothing started from here can make x32 calls either).
    When no child can be made, the answer is yes: keeping x32 in the filter only costs."""
    import ctypes

    syscall = ctypes.CDLL(None, use_errno=True).syscall
    try:
        pid = os.fork()
    except OSError:
        return True
    if pid == 0:
        try:
            os._exit(0 if syscall(ctypes.c_long(X32_SYSCALL_BIT | GETPID_X86_64)) > 0 else 1)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def runnable(arches: tuple[str, ...]) -> tuple[str, ...]:
    """``arches`` without the ABIs this kernel cannot run (only x32 is probed)."""
    if X32 in arches and not x32_runs():
        return tuple(a for a in arches if a != X32)
    return arches
