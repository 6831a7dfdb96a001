"""Helpers for the seccomp tests: OCI schema validation and forked probes."""

from __future__ import annotations

import ctypes
import os
import pickle
import traceback

PR_SET_NO_NEW_PRIVS = 38

EPERM, ENOENT, EINVAL, EFAULT, ENOSYS = 1, 2, 22, 14, 38
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
AF_UNIX, AF_INET = 1, 2
SOCK_STREAM = 1

libc = ctypes.CDLL(None, use_errno=True)


def config_with_seccomp(seccomp: dict) -> dict:
    return {"ociVersion": "1.2.0", "root": {"path": "rootfs"}, "linux": {"seccomp": seccomp}}


def sysno(name: str) -> int:
    from tiergate.seccomp.syscalls import syscall_number

    nr = syscall_number(name)
    assert nr is not None, name
    return nr


def raw(name: str, *args) -> tuple[int, int]:
    """(return value, errno or 0) of a raw syscall."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(sysno(name), *cargs)
    return (r, ctypes.get_errno() if r == -1 else 0)


def errno_of(name: str, *args) -> int:
    return raw(name, *args)[1]


def in_child(probe, oci_seccomp: dict | None = None):
    """Run ``probe()`` in a forked child, under ``oci_seccomp`` if given.

    The child sets no_new_privs, loads the filter built by to_filter() and
    sends back ``probe()``'s (picklable) result, or the exception text.
    """
    flt = None
    if oci_seccomp is not None:
        from tiergate.seccomp.build import to_filter

        flt = to_filter(oci_seccomp)  # built in the parent: libseccomp errors surface here
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            if flt is not None:
                if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
                flt.load()
            out = ("ok", probe())
        except BaseException:
            out = ("error", traceback.format_exc())
        try:
            data = pickle.dumps(out)
            while data:
                data = data[os.write(wfd, data):]
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while True:
        b = os.read(rfd, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(rfd)
    os.waitpid(pid, 0)
    if not chunks:
        raise AssertionError("probe child died without an answer")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise AssertionError("probe child failed:\n" + value)
    return value


def fork_status() -> tuple[int, int]:
    """os.fork() (glibc fork: clone without CLONE_THREAD); (errno or 0, exit code)."""
    try:
        pid = os.fork()
    except OSError as e:
        return (e.errno, -1)
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    return (0, os.waitstatus_to_exitcode(status))


def raw_clone(flags: int) -> int:
    """Raw clone(flags) with a copied stack (fork-like); errno or 0."""
    r, err = raw("clone", flags, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)  # the new process: leave at once
    if r > 0:
        os.waitpid(r, 0)
    return err


def thread_works() -> bool:
    """pthread_create via threading (glibc tries clone3, falls back on ENOSYS)."""
    import threading

    box = []
    try:
        t = threading.Thread(target=lambda: box.append(os.getpid()))
        t.start()
        t.join(5)
    except RuntimeError:
        return False
    return bool(box)


# -- the filter libseccomp builds for runc, evaluated as the kernel does ------------------

AUDIT_ARCH = {"SCMP_ARCH_X86_64": 0xC000003E, "SCMP_ARCH_X86": 0x40000003, "SCMP_ARCH_X32": 0xC000003E,
              "SCMP_ARCH_AARCH64": 0xC00000B7, "SCMP_ARCH_ARM": 0x40000028}
X32_SYSCALL_BIT = 0x40000000


def bpf_program(oci_seccomp: dict) -> list[tuple[int, int, int, int]]:
    """The classic BPF runc would load for ``oci_seccomp`` (every listed architecture): (code, jt, jf, k)."""
    import struct
    import tempfile

    from tiergate.seccomp.build import to_filter

    with tempfile.TemporaryFile() as fh:
        to_filter(oci_seccomp, all_arches=True).export_bpf(fh)
        fh.seek(0)
        data = fh.read()
    return [struct.unpack("<HBBI", data[i:i + 8]) for i in range(0, len(data), 8)]


def bpf_verdict(prog: list[tuple[int, int, int, int]], arch: str, nr: int, args=(0,) * 6) -> int:
    """The SECCOMP_RET_* value ``prog`` returns for one call (struct seccomp_data, as the kernel
    fills it): a small classic-BPF interpreter for what libseccomp emits (ld, and/or/xor/add/sub,
    jumps, ret, tax/txa)."""
    words = [nr & 0xFFFFFFFF, AUDIT_ARCH[arch], 0, 0]  # nr, arch, instruction_pointer (lo, hi)
    for a in (*args, *[0] * (6 - len(args))):
        words += [a & 0xFFFFFFFF, (a >> 32) & 0xFFFFFFFF]  # little-endian 64-bit args
    acc = x = 0
    mem = [0] * 16
    pc = 0
    for _ in range(len(prog) + 1):
        code, jt, jf, k = prog[pc]
        cls, pc = code & 0x07, pc + 1
        if cls == 0x00:  # BPF_LD
            mode = code & 0xE0
            acc = words[k // 4] if mode == 0x20 else k if mode == 0x00 else mem[k] if mode == 0x60 else 64
        elif cls == 0x01:  # BPF_LDX
            x = k if code & 0xE0 == 0x00 else mem[k]
        elif cls == 0x02:  # BPF_ST
            mem[k] = acc
        elif cls == 0x03:  # BPF_STX
            mem[k] = x
        elif cls == 0x04:  # BPF_ALU
            src, op = (x if code & 0x08 else k), code & 0xF0
            if op == 0x50:
                acc &= src
            elif op == 0x40:
                acc |= src
            elif op == 0xA0:
                acc ^= src
            elif op == 0x00:
                acc = (acc + src) & 0xFFFFFFFF
            elif op == 0x10:
                acc = (acc - src) & 0xFFFFFFFF
            else:
                raise AssertionError(f"BPF ALU op {op:#x} is not one libseccomp emits")
        elif cls == 0x05:  # BPF_JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
            else:
                hit = acc == src if op == 0x10 else acc > src if op == 0x20 else acc >= src if op == 0x30 else acc & src
                pc += jt if hit else jf
        elif cls == 0x06:  # BPF_RET
            return acc if code & 0x18 == 0x10 else k
        else:  # BPF_MISC: TAX / TXA
            if code & 0xF8 == 0x00:
                x = acc
            else:
                acc = x
    raise AssertionError("BPF program ran past its length")
