"""Run work inside a container's network namespace, in-process (HOT PATH: builtins only).

setns(CLONE_NEWNET) moves only the calling thread: the thread joins the
target namespace, the work opens its sockets there (netlink, libnftables'
context; a socket keeps the namespace it was opened in), and the thread
returns to its own namespace. No helper thread: on a loaded 2-CPU machine a
new thread waited up to 13 ms for a CPU. setns is reached through `_ctypes`
directly (Python 3.11 has no os.setns; the `ctypes` package costs ~3.5 ms to
import, `_ctypes` nearly nothing).
"""

from __future__ import annotations

import _ctypes
import os

CLONE_NEWNET = 0x40000000


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
    # lazy binding: only the symbols a call reaches get resolved (libnftables: -0.5 M instructions)
    handle = _ctypes.dlopen(library, os.RTLD_LAZY)  # type: ignore[arg-type]  # None is valid (ctypes.CDLL(None))
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


def run_in(path: str, work):
    """Call work() with this thread inside the network namespace at `path`, then come back; its result.

    Sockets work() opens stay in that namespace. The caller checks `path` is not
    the host's first (apply.check_not_host). If coming back fails, NetnsError
    says so and the caller fails closed: nothing after it needs the network.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _enter(fd)
        finally:
            os.close(fd)
        try:
            return work()
        except NetnsError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line for the caller
            raise NetnsError(f"{type(exc).__name__}: {exc}") from None
        finally:
            _enter(own)
    finally:
        os.close(own)
