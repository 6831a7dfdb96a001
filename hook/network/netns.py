"""Run work inside a container's network namespace, in-process (HOT PATH: builtins only).

setns(CLONE_NEWNET) changes only the calling thread, so the work runs in a
short-lived thread that joins the target namespace first: sockets it opens
(netlink, libnftables' context) belong to that namespace, and the caller's
own thread never leaves the host's. setns is reached through `_ctypes`
directly (Python 3.11 has no os.setns; the `ctypes` package costs ~3.5 ms to
import, `_ctypes` nearly nothing).
"""

from __future__ import annotations

import _ctypes
import _thread
import os

CLONE_NEWNET = 0x40000000
TIMEOUT = 10.0


class NetnsError(Exception):
    """Entering the namespace or the work inside it failed (one line)."""


class _Int(_ctypes._SimpleCData):
    _type_ = "i"


class _Ptr(_ctypes._SimpleCData):
    _type_ = "P"


class _Str(_ctypes._SimpleCData):
    _type_ = "z"


C_TYPES = {"int": _Int, "void*": _Ptr, "char*": _Str}


class _Func(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


def c_function(library: str | None, name: str, restype: str = "int", argtypes: tuple[str, ...] = ()):
    """A C function of `library` (None: the process's own symbols); types named as in C_TYPES."""
    handle = _ctypes.dlopen(library, os.RTLD_NOW)
    func = _Func(_ctypes.dlsym(handle, name))
    func.restype = C_TYPES[restype]
    if argtypes:
        func.argtypes = tuple(C_TYPES[t] for t in argtypes)
    return func


_setns = None


def _enter(fd: int) -> None:
    global _setns
    if _setns is None:
        _setns = c_function(None, "setns")
    if _setns(fd, CLONE_NEWNET) != 0:
        err = _ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


def run_in(path: str, work, timeout: float = TIMEOUT):
    """Call work() in a thread that has joined the network namespace at `path`; its result or its error.

    The caller checks `path` is not the host's namespace first (apply.check_not_host).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    done = _thread.allocate_lock()
    done.acquire()
    box: list = [None, None]

    def body() -> None:
        try:
            _enter(fd)
            box[0] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box[1] = exc
        finally:
            done.release()

    try:
        _thread.start_new_thread(body, ())
        if not done.acquire(True, timeout):
            raise NetnsError(f"work in {path} timed out after {timeout:g}s")
    finally:
        os.close(fd)
    if box[1] is not None:
        exc = box[1]
        raise exc if isinstance(exc, NetnsError) else NetnsError(f"{type(exc).__name__}: {exc}")
    return box[0]
