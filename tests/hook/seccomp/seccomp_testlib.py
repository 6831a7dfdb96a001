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
