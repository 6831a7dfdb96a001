"""The warm helper: a fork server the compiled front hands each start to (issue 20).

A Python process costs a start ~20 M instructions before it does anything, so what engines call
is a small C client, the front (engines/front.c, compiled at install by engines/front.py). It
connects to this helper's unix socket, /run/tiergate/warm/<key>-<release digest> (the key: a
hash of the Python launcher's text, fixed at install; the digest: lib/current's target, read on
every start, so an upgrade never talks to the old release's helper), sends its argv, cwd, umask
and environment (encode_request: NUL-terminated fields) and passes its fds 0, 1, 2; a child of
the helper takes them over and runs the same entry `main` the Python launcher would
(engines/boot.py), only with the modules already imported. The child confines itself as an
in-process start does; the helper keeps the privileges of the launcher that started it.

That child is forked before its start arrives (a spare, _serve): on this 2-CPU VM the fork, the
child's setup and its copy-on-write faults (~3 us a page, ~1,000 a start) cost each start ~3 ms
when done after the connect. The spare waits on the socket, accepts the next connection itself,
checks the peer and its own release, tells the helper (a byte on its report pipe) and serves; the
helper forks the next spare when that start has ended, or at once if another launcher waits. A
spare pre-faults (MADV_POPULATE_WRITE) the pages the helper's first starts wrote (LEARN; they
send them from /proc/self/pagemap when done), so its start writes to pages of its own. A spare
exits when its helper does (the life pipe), declines and exits once its release or socket is
replaced, and a spare that exits unserved ends the helper. No request-dependent state is prepared
ahead: the policy cache, the engine's files and the environment are read by the start itself,
as in-process.

The helper serves only uid 0 in its own mount, pid, network, user, cgroup, IPC and UTS
namespaces and root directory, with its own credentials (SO_PEERCRED, /proc/<pid>/*); it
declines anyone else. A declined start, or one with no helper, runs in the Python launcher's
own process, the same code; with no helper listening and /run writable the front asks the
launcher to start one first (front.SPAWN_ENV; the helper's pid-file lock keeps it to one).
After "A" the child sends frames (frame(): tag, 4-byte length, body): E (the exit status), X
(exec this path, argv, environment) or R (run it as your child and reply its status); the
start's stdin is gone by then, so a child that dies without an E fails the start with one
line. The helper exits after IDLE_EXIT seconds without a request, or within TICK seconds of
its release or socket being replaced (its spare already declines the first start after that).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

SOCKET_DIR = "/run/tiergate/warm"  # root's, 0700; AF_UNIX paths stop at 107 bytes: ours are 52
IDLE_EXIT = 120.0  # seconds without a start: the helper exits (the next start runs in-process and starts one)
TICK = 5.0  # seconds between the helper's checks that its release and socket are still the current ones
REQUEST_TIMEOUT = 5.0  # seconds a connected launcher has to send its request
MAX_REQUEST = 1 << 20
FDS = 3  # the launcher's stdin, stdout, stderr
ACCEPTED, DECLINED = b"A", b"D"
NAMESPACES = ("mnt", "pid", "net", "user", "cgroup", "ipc", "uts")
ENTRY = "tiergate.engines.warm"
KEY_PLACEHOLDER = "@KEY@"

def key_of(text: str) -> str:
    """A launcher's key: the hash of its text with the key left out (install fixes it in the text)."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def socket_prefix(key: str, directory: str = SOCKET_DIR) -> str:
    """The helper's socket is this plus the release digest (lib/current's target's name)."""
    return f"{directory}/{key}-"  # the key's own "-": helpers(key + "-") are this key's alone


def key_in(text: str, directory: str = SOCKET_DIR) -> str | None:
    """The key a launcher's text uses, or None (no warm helper: an older or --no-warm launcher)."""
    start = text.find(f"{directory}/")
    if start < 0:
        return None
    key = text[start + len(directory) + 1:].split("-", 1)[0]
    return key if len(key) == 16 and all(c in "0123456789abcdef" for c in key) else None


def fields(*values: str | bytes) -> bytes:
    """NUL-terminated fields, as front.c writes and reads them (str as the filesystem encodes it)."""
    return b"".join(os.fsencode(v) + b"\0" for v in values)


def split_fields(body: bytes) -> list[bytes]:
    """The fields of a body fields() wrote; ValueError unless it ends with a NUL."""
    if not body.endswith(b"\0"):
        raise ValueError("a field is not NUL-terminated")
    return body[:-1].split(b"\0")


def _number(field: bytes, limit: int) -> int:
    if not (field.isdigit() and field.isascii() and len(field) <= 10 and int(field) <= limit):
        raise ValueError(f"not a number up to {limit}: {field[:20]!r}")
    return int(field)


def encode_request(argv: list[str], cwd: str, env: dict[bytes, bytes], umask: int) -> bytes:
    """What front.c sends: a 4-byte little-endian length, then the fields umask (decimal), cwd,
    argc (decimal), argv..., and the environment's "K=V" entries to the end."""
    body = fields(str(umask), cwd, str(len(argv)), *argv, *(k + b"=" + v for k, v in env.items()))
    return len(body).to_bytes(4, "little") + body


class Request:
    __slots__ = ("argv", "cwd", "env", "umask")

    def __init__(self, argv: list[str], cwd: str, env: dict[bytes, bytes], umask: int) -> None:
        self.argv, self.cwd, self.env, self.umask = argv, cwd, env, umask


def request_length(head: bytes) -> int:
    """The body's length from the first 4 bytes; ValueError past MAX_REQUEST."""
    n = int.from_bytes(head[:4], "little")
    if len(head) < 4 or n > MAX_REQUEST:
        raise ValueError("bad request length")
    return n


def decode_request(data: bytes) -> Request:
    """The request in `data` (length and body, nothing more); ValueError when it is anything else.
    argv and cwd decode as sys.argv does (os.fsdecode); the environment stays bytes, the first of
    a name wins (as in os.environ)."""
    if len(data) < 4 or len(data) - 4 != request_length(data):
        raise ValueError("truncated request")
    parts = split_fields(data[4:])
    if len(parts) < 4:
        raise ValueError("a request is umask, cwd, argc, argv..., environ...")
    umask = _number(parts[0], 0o777)
    cwd = os.fsdecode(parts[1])
    argc = _number(parts[2], len(parts) - 3)
    if not argc:
        raise ValueError("argv is empty")
    if not cwd.startswith("/"):
        raise ValueError("cwd is not an absolute path")
    env: dict[bytes, bytes] = {}
    for entry in parts[3 + argc:]:
        key, eq, value = entry.partition(b"=")
        if not eq or not key:
            raise ValueError(f"not an environment entry: {entry[:20]!r}")
        env.setdefault(key, value)
    return Request([os.fsdecode(a) for a in parts[3:3 + argc]], cwd, env, umask)


CREDENTIALS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")  # /proc/<pid>/status


def peer_problem(uid: int, peer: dict[str, str], own: dict[str, str]) -> str | None:
    """Why a connected peer may not be served (None: it may): root, every namespace and the root
    directory ("root": device and inode) its own, so the child sees what it would see; and its
    credentials ("credentials": capability sets, no_new_privs, seccomp; "lsm": its LSM label) the
    same as the helper's, so no start runs with more privilege than the hook that asked for it
    (a helper started by a fully privileged hook never serves a root process that was confined)."""
    if uid != 0:
        return f"uid {uid} is not root"
    for name, value in own.items():
        if peer.get(name) != value:
            return f"another {name} namespace" if name in NAMESPACES else f"another {name}"
    return None


def identity(pid: int | str) -> dict[str, str]:
    """The namespaces and root directory of a process (pid or "self"), as peer_problem compares them."""
    out = {}
    for name in NAMESPACES:
        try:
            out[name] = os.readlink(f"/proc/{pid}/ns/{name}")
        except OSError:
            out[name] = ""
    try:
        st = os.stat(f"/proc/{pid}/root")
        out["root"] = f"{st.st_dev}:{st.st_ino}"
    except OSError:
        out["root"] = ""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            lines = fh.read().decode("ascii", "replace").splitlines()
        found = dict(line.partition(":")[::2] for line in lines if line.startswith(CREDENTIALS))
        out["credentials"] = " ".join(f"{k}={found.get(k, '?').strip()}" for k in CREDENTIALS)
    except OSError:
        out["credentials"] = ""
    try:
        with open(f"/proc/{pid}/attr/current", "rb") as fh:
            out["lsm"] = fh.read().decode("utf-8", "replace").strip("\0\n")
    except OSError:
        out["lsm"] = ""
    return out


# -- the helper ------------------------------------------------------------------------

# What a start may import, beyond what the entry imports at its top: the whole packages of the
# start path (their imports read no host state: checked by tests/hook/test_warm.py) and the lazy
# standard-library and dependency imports in them.
PREIMPORT_PACKAGES = ("tiergate.hook", "tiergate.shim", "tiergate.core", "tiergate.policy", "tiergate.oci", "tiergate.host",
                      "tiergate.sources", "tiergate.network", "tiergate.seccomp", "tiergate.telemetry")
# Policy-compile time only, and pyseccomp's import runs ldconfig (a host fact): left to a start that compiles.
PREIMPORT_SKIP = ("tiergate.seccomp.build", "tiergate.seccomp.syscalls")
PREIMPORT_MODULES = ("json", "subprocess", "socket", "ipaddress", "hashlib", "tempfile", "fcntl", "select", "mmap",
                     "struct", "ctypes", "_prctl", "nftables")  # not pyseccomp: its import runs ldconfig


def start_path_modules(code: dict) -> list[str]:
    """The start path's modules: in the release's code file, or (no code file) in the tree."""
    if code:
        return [n for n in sorted(code) if n.startswith(PREIMPORT_PACKAGES) and n not in PREIMPORT_SKIP]
    import pkgutil

    import tiergate

    return [m.name for m in pkgutil.walk_packages(tiergate.__path__, "tiergate.")
            if m.name.startswith(PREIMPORT_PACKAGES) and m.name not in PREIMPORT_SKIP]


def preimport(names: list[str]) -> None:
    """Import these modules and PREIMPORT_MODULES, and load libnftables (a network start's dlopen,
    ~2 ms); one that fails is left to the start (which says why it cannot)."""
    for name in (*names, *PREIMPORT_MODULES):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001  a start imports it itself (and says why it cannot)
            pass
    try:
        from tiergate.network.apply import libnftables

        libnftables()
    except Exception:  # noqa: BLE001  no libnftables here: a network start fails closed on its own
        pass


def _own_dir(directory: str) -> bool:
    """Make SOCKET_DIR (0700, its parent 0755); True when it is a root-only directory, not a link."""
    import stat

    try:
        os.makedirs(os.path.dirname(directory), 0o755, exist_ok=True)
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    for path, private in ((os.path.dirname(directory), False), (directory, True)):
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & (0o077 if private else 0o022):
            return False
    return True


def _lock(path: str) -> int | None:
    """The pid file, locked for as long as this helper lives (emptied); None when another helper has it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not a file its last holder just removed
            os.ftruncate(fd, 0)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def main(release: str, link: str, sock: str, entry: str, kwargs: dict, idle: float = IDLE_EXIT) -> int:
    """Serve starts for the launcher whose socket prefix is `sock`, from `release`, until idle."""
    import gc
    import signal
    import socket

    path = sock + os.path.basename(release)
    init = identity(1)["mnt"]  # "" when /proc/1 is not ours to read
    if init and identity("self")["mnt"] != init:
        return 0  # a hook in a private mount namespace: its helper would decline every other hook
    if not _own_dir(os.path.dirname(path)):
        return 0
    lock = _lock(path + ".pid")
    if lock is None:
        return 0  # another helper serves this key
    listener, bound = None, -1
    gc.enable()
    os.write(lock, f"{os.getpid()}\n{sys.argv[0]}\n".encode())  # ready once the socket exists
    try:
        code = getattr(next((f for f in sys.meta_path if hasattr(f, "code")), None), "code", {})
        preimport(start_path_modules(code))
        __import__(entry)
        try:
            os.unlink(path)  # a dead helper's: we hold the lock
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(64)
        listener.setblocking(False)  # only spares accept, when poll says a launcher waits (_spare)
        bound = os.stat(path).st_ino
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # spares and children are reaped by the kernel
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        gc.collect()
        gc.freeze()  # what the children share stays shared
        _serve(listener, lock, entry, kwargs, idle, lambda: _current(path, bound, link, release))
    finally:
        if listener is not None:
            listener.close()
            try:
                if os.stat(path).st_ino == bound:
                    os.unlink(path)
            except OSError:
                pass
        try:
            if os.fstat(lock).st_ino == os.stat(path + ".pid").st_ino:
                os.unlink(path + ".pid")
        except OSError:
            pass
    return 0


def _current(path: str, bound: int, link: str, release: str) -> bool:
    try:
        return os.stat(path).st_ino == bound and os.path.realpath(link) == release
    except OSError:
        return False


# What a spare tells its helper, a byte each on its report pipe (EOF: it exited without serving).
TOOK = b"t"  # a peer passed the check: this process serves it now, the helper forks the next spare
TURNED = b"d"  # it declined a peer (not root, or a failed check) and waits on as the spare
ELSEWHERE = b"e"  # it declined a root peer in other namespaces (_serve's "elsewhere" rule)
STALE = b"s"  # the release or socket was replaced: it declined the peer and exits
LEARN = 4  # starts whose written pages the helper learns (_written), for its spares to pre-fault


class _Spares:
    """What the helper hands each spare it forks: the socket, what to drop, whom to serve, what to run,
    the life pipe (its write end closes when the helper exits, however: the spare then exits) and
    the pages starts wrote (learned from the first LEARN starts)."""

    def __init__(self, listener, lock: int, entry: str, kwargs: dict, current) -> None:
        self.listener, self.lock, self.entry, self.kwargs, self.current = listener, lock, entry, kwargs, current
        self.own = identity("self")
        self.life = os.pipe()
        self.pages: set[int] = set()
        self.runs: list[list[int]] = []  # the pages as [first, count] runs, in order (_prefault)
        self.learned = 0

    def fork(self, learn: bool) -> tuple[int, int, bool]:
        """(pid, the read end of its report pipe, `learn`: whether its start sends the pages it wrote)."""
        report = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(report[0])
                _spare(self, report[1], learn)
            finally:
                os._exit(1)  # never the helper's own cleanup in a spare (a SIGTERM just before the fork)
        os.close(report[1])
        return pid, report[0], learn

    def learn(self, data: bytes | bytearray) -> None:
        """Add the pages a served start wrote (_written; one killed mid-way sent a part, or nothing)."""
        import array

        self.pages.update(array.array("Q", data[:len(data) - len(data) % 8]))
        self.learned += 1
        self.runs = []
        for page in sorted(self.pages):
            if self.runs and sum(self.runs[-1]) == page:
                self.runs[-1][1] += 1
            else:
                self.runs.append([page, 1])


def _serve(listener, lock: int, entry: str, kwargs: dict, idle: float, current) -> None:
    """Keep one spare (_spare) forked ahead, waiting on the socket: the fork, and everything a start
    needs that no request decides, happen between starts, not during one. The next spare is forked
    once the start its predecessor took has ended (its report pipe closes), or at once when another
    launcher waits meanwhile (the socket is readable), so its setup does not compete for the CPU
    with a start it would slow. The helper never accepts; it reads its spare's reports (the idle
    clock, the "elsewhere" rule), the pages its first starts wrote, and checks every TICK that its
    release and socket are still current. A spare that exits unserved (killed, or its release
    replaced) ends the helper rather than forking in a loop: the next start runs in-process and
    starts one."""
    import select
    import time

    spares = _Spares(listener, lock, entry, kwargs, current)
    spare = None  # (pid, the read end of its report pipe, whether its start sends the pages it wrote)
    serving: dict[int, bytearray | None] = {}  # report pipes of starts in flight: the pages they send, or None
    waiting = False  # a launcher waits and no spare is there to take it
    last = time.monotonic()
    served = 0
    try:
        while True:
            if spare is None and (waiting or not serving):  # at most LEARN starts at once send their pages
                spare = spares.fork(learn=spares.learned + sum(v is not None for v in serving.values()) < LEARN)
            watch = select.poll()
            for fd in (*serving, spare[1] if spare else listener.fileno()):
                watch.register(fd, select.POLLIN)
            ready = {fd for fd, _ in watch.poll(min(TICK, idle) * 1000)}
            waiting = spare is None and listener.fileno() in ready
            for fd in ready & serving.keys():
                more = os.read(fd, 1 << 16)
                pages = serving[fd]
                if more and pages is not None:
                    pages += more
                elif not more:  # that start has ended
                    del serving[fd]
                    os.close(fd)
                    if pages is not None:
                        spares.learn(pages)
            if spare is None or spare[1] not in ready:
                if not ready and (time.monotonic() - last >= idle or not current()):
                    return
                continue
            said = os.read(spare[1], 1)
            last = time.monotonic()
            if said == TOOK:
                served += 1
                serving[spare[1]] = bytearray() if spare[2] else None
                spare = None
            elif not said or said == STALE or said == ELSEWHERE and not served:
                return  # ELSEWHERE first: started by a hook in other namespaces (`unshare`?): leave the socket to theirs
    finally:
        for fd in (*spares.life, *serving):
            os.close(fd)
        if spare is not None:
            _retire(*spare[:2])


def _retire(pid: int, report: int, wait: float = 1.0) -> None:
    """The helper is leaving, so is its spare (the life pipe closed): wait until it has gone, or has
    taken a start it accepted just before (that one runs to its end, as any served start); a spare
    still there after `wait` is killed (it answered no "A" yet: its start runs in-process)."""
    import select
    import signal
    import time

    deadline = time.monotonic() + wait
    try:
        while select.select([report], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if os.read(report, 1) in (b"", TOOK):
                return
        os.kill(pid, signal.SIGKILL)  # its report pipe is open: it is alive, this pid is still its own
    except OSError:
        pass
    finally:
        os.close(report)


def _spare(spares: _Spares, report: int, learn: bool) -> None:
    """The spare, forked before its start: drop what the helper alone keeps (its lock, the life pipe's
    write end), set the start's signal dispositions, no cyclic GC, look up what the start runs, take
    the copy-on-write faults starts took (_prefault), then take the next connection itself and check
    the peer (_check); it tells the helper before it reads the request (a launcher that waits
    meanwhile gets the next spare at once), and keeps its report pipe open until it exits (the
    start has ended: the helper forks the next spare). It exits when the helper does."""
    import gc
    import select
    import signal

    listener, life = spares.listener, spares.life[0]
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the start's own waitpid and subprocess work
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(spares.lock)
        os.close(spares.life[1])
        gc.disable()  # as engines/boot.py: one start frees by reference counting
        from tiergate.engines.boot import status_of
        from tiergate.telemetry import record

        record.SERVED["warm"] = os.getppid()  # the decision record says who ran the start
        main = __import__(spares.entry, fromlist=["main"]).main
        watch = select.poll()
        watch.register(listener, select.POLLIN)
        watch.register(life, select.POLLIN)
        if not watch.poll(0):  # no launcher waits yet (a burst of starts is served first)
            try:
                _prefault(spares.runs)
            except (OSError, AttributeError, ValueError):  # only a speed-up: the start takes its faults itself
                pass
        while True:
            if any(fd == life for fd, _ in watch.poll()):
                os._exit(0)  # the helper is gone
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, ConnectionAbortedError):
                continue  # that launcher gave up
            why = _check(conn, spares.own, spares.current)
            if why is None:
                break
            try:
                conn.sendall(DECLINED)
            except OSError:
                pass
            conn.close()
            os.write(report, why)
            if why == STALE:
                os._exit(0)
        os.write(report, TOOK)  # the report pipe stays open until this process exits: the start has ended
        listener.close()
        os.close(life)
    except BaseException:  # noqa: BLE001  nothing of a start was read: its launcher runs it itself
        os._exit(1)
    global _report
    _report = report if learn else -1
    kwargs = spares.kwargs
    _child(conn, lambda: status_of(main(**kwargs)))


def _check(conn, own: dict, current) -> bytes | None:
    """None when this spare may serve the peer on `conn`; else why not: STALE (its release or socket
    was replaced since the spare was forked: never serve from an old release), ELSEWHERE (a root
    peer in other namespaces or with other credentials: peer_problem) or TURNED (anyone else)."""
    import socket
    import struct

    try:
        conn.settimeout(REQUEST_TIMEOUT)
        if not current():
            return STALE
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if peer_problem(uid, identity(pid), own) is None:
            return None
        return ELSEWHERE if uid == 0 else TURNED
    except OSError:
        return TURNED


def _receive(conn) -> tuple[Request, list[int]]:
    import array
    import socket

    data, anc, flags, _ = conn.recvmsg(65536, socket.CMSG_SPACE(FDS * 4 * 2))
    fds = array.array("i")
    for level, kind, cdata in anc:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    try:
        if flags & socket.MSG_CTRUNC or len(data) < 4:
            raise ValueError("truncated request")
        want = 4 + request_length(data)
        while len(data) < want:
            more = conn.recv(want - len(data))
            if not more:
                raise ValueError("truncated request")
            data += more
        return decode_request(data), list(fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _child(conn, run) -> None:
    """The spare that took a start: receive the request and fds, become the launcher's process (fds,
    cwd, umask, environment, argv), say "A", run the entry (`run`: its main, as engines/boot.py
    does), close its stdio, send the status."""
    import time

    status = 1
    try:
        request, fds = _receive(conn)
        if len(fds) != FDS:
            raise ValueError("not the launcher's three fds")
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request.cwd)
        os.umask(request.umask)
        os.environb.clear()
        os.environb.update(request.env)
        time.tzset()
        sys.argv = list(request.argv)
        global _launcher
        _launcher = conn
        conn.settimeout(None)
        conn.sendall(ACCEPTED)
    except BaseException:  # nothing was read from the start's stdin yet: the launcher runs it itself
        try:
            conn.sendall(DECLINED)
        finally:
            os._exit(1)
    try:
        status = run()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001  main catches its own; one line, never a traceback
        print(f"tiergate: error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        status = status or 1
    try:
        _let_go()
        conn.sendall(frame(b"E", bytes([status & 0xFF])))
    finally:
        _end()


def _let_go() -> None:
    """The engine reads the start's stdout until EOF: the child's copies of its stdio go first."""
    null = os.open(os.devnull, os.O_RDWR)
    for target in range(FDS):
        os.dup2(null, target)


def frame(tag: bytes, body: bytes) -> bytes:
    """A child's message to the front after "A": tag, 4-byte little-endian length, body."""
    return tag + len(body).to_bytes(4, "little") + body


def hand_back_body(path: str, argv: list[str], env: dict) -> bytes:
    """An X or R frame's body (front.c's hand_back): path, argc, argv..., the environment's "K=V"."""
    return fields(path, str(len(argv)), *argv, *(os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()))


# In a child: its connection to the front, which runs the real runtime for it (hand_over), and its
# report pipe to the helper while the helper learns the pages starts write (-1: not this one).
_launcher = None
_report = -1
MADV_POPULATE_WRITE = 23  # Linux 5.14


def _end() -> NoReturn:
    """A served start's end, its stdio released: send the helper the pages it wrote (when asked), exit."""
    try:
        if _report >= 0:
            os.write(_report, _written())
    finally:
        os._exit(0)


def _writable() -> list[tuple[int, int]]:
    """This process's private writable mappings, as (first page, end page)."""
    size = os.sysconf("SC_PAGESIZE")
    out = []
    with open("/proc/self/maps", "rb") as fh:
        for line in fh:
            span, mode = line.split(None, 2)[:2]
            if mode == b"rw-p":
                lo, hi = span.split(b"-")
                out.append((int(lo, 16) // size, int(hi, 16) // size))
    return out


def _written() -> bytes:
    """The pages this process wrote (or had its spare pre-fault) in the memory it shares with the
    helper, as 8-byte page numbers: those of its private writable mappings that pagemap shows
    present and mapped by it alone (bits 63 and 56: a page still shared with the helper is not)."""
    import array

    want = 1 << 63 | 1 << 56
    pages = array.array("Q")
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for lo, hi in _writable():
            entries = array.array("Q", os.pread(fd, (hi - lo) * 8, lo * 8))
            pages.extend(lo + i for i, e in enumerate(entries) if e & want == want)
    finally:
        os.close(fd)
    return pages.tobytes()


def _prefault(runs: list[list[int]]) -> None:
    """Take now, in the spare, the copy-on-write faults its start would take (~3 us each here; a
    start writes ~1,000 pages the helper shares with it): MADV_POPULATE_WRITE the learned runs of
    pages, clipped to this process's private writable mappings. It changes no byte; a kernel
    without it (before 5.14) refuses it."""
    import ctypes

    if not runs:
        return
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    size = os.sysconf("SC_PAGESIZE")
    maps = _writable()  # in address order, as are the runs
    m = 0
    for first, count in runs:
        while m < len(maps) and maps[m][1] <= first:
            m += 1
        for lo, hi in maps[m:]:
            if lo >= first + count:
                break
            lo, hi = max(lo, first), min(hi, first + count)
            if madvise(lo * size, (hi - lo) * size, MADV_POPULATE_WRITE):
                return  # EINVAL: no such advice here


def handing() -> bool:
    """True in a child serving a start: the real runtime must be run by the front (hand_over)."""
    return _launcher is not None


def hand_over(path: str, argv: list[str], env: dict) -> NoReturn:
    """Have the front exec `path argv env` (X); this child then exits. A runtime must be the child
    of the process the engine started (containerd-shim and conmon are subreapers that wait for it),
    never of the helper's. This child's fd 0 goes with it: the start's stdin, or what the start
    put back on fd 0."""
    _send(b"X", path, argv, env)
    _let_go()
    _end()


def run_over(path: str, argv: list[str], env: dict) -> Callable[[], int]:
    """Have the front run `path argv env` as its own child (R), as hand_over does; a function that
    waits for its exit status, so this child can work meanwhile."""
    _send(b"R", path, argv, env)

    def wait() -> int:
        assert _launcher is not None
        reply = b""
        while len(reply) < 4:
            more = _launcher.recv(4 - len(reply))
            if not more:
                raise OSError("the front stopped while it ran the runtime")
            reply += more
        status = int.from_bytes(reply, "little", signed=True)
        if status <= -(1 << 20):
            errno = -(1 << 20) - status
            raise OSError(errno, os.strerror(errno))
        return status

    return wait


def _send(tag: bytes, path: str, argv: list[str], env: dict) -> None:
    import socket
    import struct

    assert _launcher is not None
    sys.stdout.flush()
    sys.stderr.flush()
    body = frame(tag, hand_back_body(path, argv, env))
    sent = _launcher.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 0))])
    _launcher.sendall(body[sent:])


# -- for install, uninstall and doctor -------------------------------------------------

def helpers(key: str = "", directory: str = SOCKET_DIR) -> list[tuple[str, int | None, str]]:
    """(pid file, pid of the live helper holding it or None, its launcher) for each helper whose
    name starts with `key` ("": every helper)."""
    import fcntl

    out = []
    try:
        names = sorted(n for n in os.listdir(directory) if n.startswith(key) and n.endswith(".pid"))
    except OSError:
        return []
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            text = os.read(fd, 4096).decode(errors="replace").split("\n")
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                pid = None  # nobody holds it: a helper that died without cleaning up
            except BlockingIOError:
                pid = int(text[0]) if text[0].isdigit() else None
        finally:
            os.close(fd)
        out.append((path, pid, text[1] if len(text) > 1 else ""))
    return out


def stop(key: str, directory: str = SOCKET_DIR, say=print, under: str | None = None, wait: float = 5.0) -> list[int]:
    """Stop this key's helpers (all with key "", those started by a launcher below `under` if
    given): SIGTERM to the pid in their locked pid file, then their sockets and pid files go;
    in-flight starts finish in their own children. The pids stopped."""
    import signal
    import time

    stopped = []
    for path, pid, launcher in helpers(key, directory):
        if under is not None and not launcher.startswith(under.rstrip("/") + "/"):
            continue
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
                say(f"stopped the warm helper {pid} ({path[:-4]})")
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(p == path and q for p, q, _ in helpers(key, directory)):
                time.sleep(0.02)
        for leftover in (path[:-4], path):
            try:
                os.unlink(leftover)
            except OSError:
                pass
    for made in (directory, os.path.dirname(directory)):  # the helpers' directories, once empty (_own_dir made them)
        try:
            os.rmdir(made)
        except OSError:
            break
    return stopped
