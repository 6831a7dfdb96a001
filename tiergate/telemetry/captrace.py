"""Capabilities a process really used: the kernel's `capability:cap_capable` tracepoint, for `tiergate collect`.

Every capability check the kernel makes (capable(), ns_capable(), ...) fires
the tracepoint with the task's pid, the capability and the result (0 granted,
-EPERM refused). It exists since Linux 6.15 (here: 6.18); where it is missing
`collect` says so and `suggest` falls back to the syscall -> capability map.

Exactness: a granted check is a use the kernel made of the capability, observed,
not inferred. It includes checks the kernel makes silently, whose refusal the
program would not notice (e.g. CAP_SYS_ADMIN in memory-overcommit accounting):
those only ever name a capability the container was given. Checks made by the
runtime's init before it execs the workload (comm `runc:[...]`) are left out.
Refused checks are not recorded (in audit mode a refusal means the caller did
not grant the capability, so the workload did not get to use it).

Host footprint: tracefs is mounted in a private mount namespace of the
collector (the host's mount table is untouched) and the events go to a tracing
instance of its own, `tiergate-collect-<pid>`, removed on exit (the global
trace buffer and other tracers are untouched).
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PREFIX = r"^\s*(.*?)-(\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s+\S+\s+[\d.]+: "
LINE = re.compile(PREFIX + r"cap_capable:.*?\bcap (\d+), ret 0\b")
STACK = re.compile(PREFIX + r"<stack trace>")
# Kernel code that checks a capability with credentials other than the task's, or only to pick a
# behaviour, not to permit the call (innermost caller of the check first).
NOT_THE_TASKS = ("__vm_enough_memory",)  # overcommit: root may use the reserve; refusal changes nothing


def own_use(frames: list[str]) -> bool:
    """Was this check made with the task's own credentials to permit what it asked?

    Overlayfs acts with its mounter's credentials (ovl_override_creds) except in
    ovl_permission's first generic_permission() on the overlay inode: a check whose
    innermost ovl_* caller is reached other than straight through generic_permission
    was made for the mount, not by the container.
    """
    names = [f.split("+", 1)[0] for f in frames]
    if any(n in NOT_THE_TASKS for n in names):
        return False
    for i, n in enumerate(names):
        if n.startswith("ovl_"):
            return n == "ovl_permission" and i > 0 and names[i - 1] == "generic_permission"
    return True
# Granted checks, not by the runtime in the container's cgroup (runc, /proc/self/exe re-exec "exe",
# runc:[0:PARENT] ... runc:[2:INIT]): the kernel filters on the comm at the time of the check (the
# comm printed is read later and may already be the exec'd program's).
FILTER = 'ret == 0 && !(comm ~ "runc*") && comm != "exe"'


class Unavailable(Exception):
    """The tracepoint cannot be used here (one line why)."""


class CapTrace:
    """A tracing instance with `capability:cap_capable` on (granted checks only), read without blocking."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.instance = self.mnt = None
        self.fd = -1
        if libc.unshare(CLONE_NEWNS) != 0:
            raise Unavailable(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise Unavailable(f"making mounts private: {os.strerror(ctypes.get_errno())}")
        self.mnt = tempfile.mkdtemp(prefix="tiergate-tracefs-")
        if libc.mount(b"tracefs", self.mnt.encode(), b"tracefs", 0, None) != 0:
            err = os.strerror(ctypes.get_errno())
            os.rmdir(self.mnt)
            raise Unavailable(f"mounting tracefs: {err}")
        self._umount = libc.umount2
        if not os.path.isdir(f"{self.mnt}/events/capability/cap_capable"):
            self.close()
            raise Unavailable("this kernel has no capability:cap_capable tracepoint (Linux >= 6.15)")
        try:
            self.instance = f"{self.mnt}/instances/tiergate-collect-{os.getpid()}"
            os.mkdir(self.instance)
            event = f"{self.instance}/events/capability/cap_capable"
            _write(f"{event}/filter", FILTER)
            _write(f"{self.instance}/options/stacktrace", "1")
            _write(f"{event}/enable", "1")
            self.fd = os.open(f"{self.instance}/trace_pipe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.close()
            raise Unavailable(f"tracing instance: {exc.strerror}") from None
        self.rest = b""
        self.pending: dict[int, tuple[str, int, int]] = {}  # pid -> its check, until its stack arrives
        self.owner: tuple[str, int, int] | None = None
        self.frames: list[str] | None = None
        self.skipped = 0

    def read(self) -> list[tuple[str, int, int]]:
        """(comm, pid, capability number) of the checks since the last read made with the task's own credentials."""
        chunks = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            chunks.append(data)
        data = self.rest + b"".join(chunks)
        lines = data.split(b"\n")
        self.rest = lines.pop()
        out: list[tuple[str, int, int]] = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if line.startswith(" => "):
                if self.frames is not None:
                    self.frames.append(line[4:].strip())
                continue
            self._settle(out)
            if m := LINE.match(line):
                if len(self.pending) > 4096:  # stacks lost (buffer overrun): start afresh
                    self.pending.clear()
                self.pending[int(m.group(2))] = (m.group(1).strip(), int(m.group(2)), int(m.group(3)))
            elif m := STACK.match(line):
                self.owner, self.frames = self.pending.pop(int(m.group(2)), None), []
        return out

    def _settle(self, out: list) -> None:
        """The stack just read is complete: keep its check if the task's own credentials made it."""
        if self.frames is not None and self.owner is not None:
            if own_use(self.frames):
                out.append(self.owner)
            else:
                self.skipped += 1
        self.owner = self.frames = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.instance:
            try:
                _write(f"{self.instance}/events/capability/cap_capable/enable", "0")
            except OSError:
                pass
            try:
                os.rmdir(self.instance)
            except OSError:
                pass
            self.instance = None
        if self.mnt:
            self._umount(self.mnt.encode(), 2)  # MNT_DETACH
            try:
                os.rmdir(self.mnt)
            except OSError:
                pass
            self.mnt = None


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)
