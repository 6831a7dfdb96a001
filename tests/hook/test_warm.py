"""The warm helper's pure parts: the launcher's key, the request and frame codec (front.c's side:
tests/hook/test_front.py), the peer check, and that importing the start path ahead of time
reads no host state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiergate.engines import launcher, warm


def _text(lib: Path) -> str:
    return launcher.script(lib, "tiergate.hook.stages", warm=True)


def test_the_key_is_the_hash_of_the_launchers_own_text_fixed_at_install(tmp_path):
    text = _text(tmp_path / "a" / "lib")
    key = warm.key_in(text)
    assert key and len(key) == 16
    assert warm.key_of(text.replace(key, warm.KEY_PLACEHOLDER)) == key
    assert _text(tmp_path / "a" / "lib") == text  # a reinstall keeps it (and its helper)
    assert warm.key_in(_text(tmp_path / "b" / "lib")) != key  # another install: another helper
    assert warm.key_in(launcher.script(tmp_path / "a" / "lib", "tiergate.hook.stages")) is None
    assert warm.socket_prefix(key) in text and warm.SOCKET_DIR.startswith("/run/")  # the front's spawn check
    assert "os.environ.pop('TIERGATE_WARM_SPAWN', None)" in text.splitlines()[3]  # before anything else
    assert len((warm.socket_prefix(key) + "0" * 16).encode()) < 108  # AF_UNIX's limit


def test_requests_round_trip_and_malformed_ones_are_refused():
    env = {b"PATH": b"/usr/bin", b"X": b"\xff=\x01"}
    data = warm.encode_request(["/bin/tiergate-hook", "precreate", "\udcff"], "/run/x", env, 0o22)
    req = warm.decode_request(data)
    assert (req.argv, req.cwd, req.env, req.umask) == (["/bin/tiergate-hook", "precreate", "\udcff"], "/run/x", env, 0o22)
    body = data[4:]
    assert body == b"18\0/run/x\0" b"3\0/bin/tiergate-hook\0precreate\0\xff\0PATH=/usr/bin\0X=\xff=\x01\0"  # front.c's

    def framed(b: bytes) -> bytes:
        return len(b).to_bytes(4, "little") + b

    first = warm.decode_request(framed(b"0\0/\0" b"1\0a\0" b"K=1\0K=2\0"))
    assert first.env == {b"K": b"1"} and first.argv == ["a"]  # as os.environ: the first of a name
    bad = [data[:-1], data + b"x", data[:3], (10**9).to_bytes(4, "little") + data[4:],
           warm.encode_request([], "/", {}, 0), warm.encode_request(["x"], "relative", {}, 0),
           warm.encode_request(["x"], "/", {}, 0o1000), framed(b"18\0/\0" b"1\0a"),  # not NUL-terminated
           framed(b"18\0/\0" b"2\0a\0"), framed(b"-1\0/\0" b"1\0a\0"), framed(b"18\0/\0" b"x\0a\0"),
           framed(b"18\0/\0" b"1\0a\0NOEQUALS\0"), framed(b"18\0/\0" b"1\0a\0=v\0"), framed(b"18\0/\0"),
           framed("١\0/\0".encode() + b"1\0a\0"), framed(b"")]
    for item in bad:
        with pytest.raises(ValueError):
            warm.decode_request(item)


def test_frames_and_hand_back_bodies_are_what_the_front_reads():
    assert warm.frame(b"E", b"\x03") == b"E\x01\x00\x00\x00\x03"
    body = warm.hand_back_body("/usr/sbin/runc", ["runc", "exec", "\udcff"], {"A": "1", b"B": b"\xfe"})
    assert body == b"/usr/sbin/runc\0" b"3\0runc\0exec\0\xff\0" b"A=1\0B=\xfe\0"
    assert warm.split_fields(body)[0] == b"/usr/sbin/runc"


def test_peer_check_wants_root_and_every_namespace_and_root_dir_its_own():
    own = {**{n: f"{n}:[1]" for n in warm.NAMESPACES}, "root": "1:2", "credentials": "CapEff=3ff", "lsm": "unconfined"}
    assert warm.peer_problem(0, dict(own), own) is None
    assert "uid 1000" in warm.peer_problem(1000, dict(own), own)
    for name in own:
        assert warm.peer_problem(0, {**own, name: "other"}, own), name
    assert warm.identity("self") == warm.identity(os.getpid())
    mine = warm.identity("self")["credentials"]
    assert "CapEff=" in mine and "NoNewPrivs=" in mine and "Seccomp=" in mine, mine


def test_importing_the_start_path_ahead_reads_no_host_state(tmp_path):
    """What the helper imports before any start opens only code (no config, /proc, /etc or
    policy: a fact read at import would go stale in a helper that lives for minutes)."""
    probe = """
import json, os, sys
seen = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir", "subprocess.Popen", "os.system", "os.exec", "socket.connect"):
        seen.append([event, str(args[0]) if args else ""])
sys.addaudithook(hook)
from tiergate.engines import warm
warm.preimport(warm.start_path_modules({}))
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    roots = tuple({os.path.realpath(p) for p in sys.path if p} | {str(Path(warm.__file__).resolve().parents[2])})
    host = [(event, path) for event, path in json.loads(out.stdout)
            if not (event in ("open", "os.listdir", "os.scandir")
                    and (os.path.realpath(path).startswith(roots) or path.startswith(roots)
                         or path.endswith((".py", ".pyc", ".so", ".json")) and "python3" in path))]
    assert not host, host


def test_the_helper_loads_libnftables_before_it_forks():
    """A network start's dlopen of libnftables (~2 ms) is the helper's, once: its children
    inherit the mapping (where the host has the library, as CI's has)."""
    probe = "from tiergate.engines import warm; warm.preimport([]); print(open('/proc/self/maps').read())"
    maps = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "libnftables.so" in maps
    assert "libnftables.so" not in subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                                                  capture_output=True, text=True, timeout=60, check=True).stdout


def test_doctor_says_which_program_the_hook_is_and_whether_its_helper_runs(tmp_path):
    from tiergate.cli import probes
    from tiergate.engines import front

    plain = tmp_path / "plain"
    plain.write_text(launcher.script(tmp_path / "lib", "tiergate.hook.stages"))
    assert "the Python launcher, no warm helper" in probes.check_warm(str(plain)).detail
    py = tmp_path / "lib" / "tiergate-hook.py"
    py.parent.mkdir()
    py.write_text(_text(tmp_path / "lib"))  # a key no helper runs for
    assert "the Python launcher" in probes.check_warm(str(py)).detail  # not behind a front: it starts no helper
    if front.compiler() is None:
        return
    hook = tmp_path / "tiergate-hook"
    key = warm.key_in(py.read_text())
    hook.write_bytes(front.build(hook, front.header(str(tmp_path / "lib" / "current"), warm.socket_prefix(key or ""),
                                                    sys.executable, str(py), launcher.MARKER), front.compiler() or "cc"))
    check = probes.check_warm(str(hook))
    assert check.status == probes.OK and f"compiled front of {py}" in check.detail, check.detail
    assert "not running" in check.detail and warm.SOCKET_DIR in check.detail


def test_stop_leaves_no_empty_helper_directory_and_keeps_one_in_use(tmp_path):
    """Uninstall's undo: the socket directory (and its parent) go once no helper is left in them."""
    run = tmp_path / "run" / "tiergate"
    sockets = run / "warm"
    sockets.mkdir(parents=True)
    (sockets / "k2-r").write_text("")  # another install's helper socket: kept, and its directory
    warm.stop("k1-", directory=str(sockets), say=lambda _line: None)
    assert sockets.is_dir()
    (sockets / "k2-r").unlink()
    warm.stop("k1-", directory=str(sockets), say=lambda _line: None)
    assert not run.exists() and (tmp_path / "run").is_dir()


# -- the helper itself, driven with a stand-in entry: its spare, its reports, its exits -----------

STANDIN = """import array, ctypes, os, sys
from tiergate.engines import warm
PAGE = os.sysconf("SC_PAGESIZE")
BUF = bytearray(b"x" * 66 * PAGE)  # written by the helper at import: shared with its children until they write
def main(**kwargs):
    if sys.argv[2:] == ["hold"]:  # a start in flight until the test closes its stdin
        print(os.getpid(), flush=True)
        sys.stdin.read()
    if sys.argv[2:] == ["pages"]:  # how many of BUF's 64 whole pages are this process's own already; then write them
        first = -(-ctypes.addressof(ctypes.c_char.from_buffer(BUF)) // PAGE)
        own = set(array.array("Q", warm._written()))
        print(os.getpid(), sum(p in own for p in range(first, first + 64)), BUF.count(b"x") == len(BUF), flush=True)
        BUF[PAGE:65 * PAGE:PAGE] = b"y" * 64
    else:
        print(os.getpid(), sys.argv[1], flush=True)
    return int(sys.argv[1])
"""
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the helper serves only root, from a root-owned directory")


def _until(predicate, timeout: float = 30.0, what: str = "it"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)
    return value


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


class Helper:
    """warm.main in a process of its own (as the launcher runs it), serving the stand-in entry."""

    def __init__(self, root: Path, idle: float = 60.0) -> None:
        (root / "releases" / "r1").mkdir(parents=True)
        (root / "releases" / "r2").mkdir()
        (root / "standin_entry.py").write_text(STANDIN)
        self.root, self.link = root, root / "current"
        os.symlink("releases/r1", self.link)
        self.prefix = f"{root}/run/warm/k-"
        self.path = self.prefix + "r1"
        code = (f"import sys\nsys.path[:0] = {[str(root), *sys.path]!r}\nfrom tiergate.engines import warm\n"
                f"sys.exit(warm.main({str(root / 'releases' / 'r1')!r}, {str(self.link)!r}, {self.prefix!r}, "
                f"'standin_entry', {{}}, idle={idle!r}))\n")
        self.served: set[int] = set()  # the pids that ran a start (the stand-in prints its own)
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        _until(lambda: os.path.exists(self.path) or self.proc.poll() is not None, 120, "helper socket")
        assert self.proc.poll() is None, "the helper exited before it listened"

    def spare(self) -> int:
        """The helper's one waiting child, once there is exactly one and no start it served is left."""
        return _until(lambda: (c := _children(self.pid)) and len(c) == 1 and c[0] not in self.served and c[0],
                      what="single spare")

    def ask(self, status: int = 0, prefix: tuple[str, ...] = (), *args: str) -> tuple[bytes, str]:
        """A launcher's request (the stand-in returns `status`) from a process of its own: (the helper's
        reply bytes, what the start printed on its stdout)."""
        proc = subprocess.run(self.client(status, prefix, *args), capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        if proc.stdout:
            self.served.add(int(proc.stdout.split()[0]))
        return proc.stderr, proc.stdout.decode()

    def client(self, status: int, prefix: tuple[str, ...], *args: str) -> list[str]:
        client = (f"import array, os, socket, sys\nsys.path[:0] = {sys.path!r}\nfrom tiergate.engines import warm\n"
                  f"s = socket.socket(socket.AF_UNIX)\ns.connect({self.path!r})\n"
                  f"d = warm.encode_request(['standin', '{status}', *{args!r}], '/', {{}}, 0o22)\nout = b''\ntry:\n"
                  "    s.sendmsg([d], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(array.array('i', [0, 1, 2])))])\n"
                  "    while b := s.recv(64):\n        out += b\n"
                  "except OSError:\n    out += b'<closed>'\nos.write(2, out)\n")
        return [*prefix, sys.executable, "-I", "-c", client]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def helper(tmp_path):
    h = Helper(tmp_path)
    yield h
    spares = _children(h.pid)
    h.stop()
    for pid in spares:
        _until(lambda pid=pid: _gone(pid), what=f"exit of the spare {pid}")


SERVED = warm.ACCEPTED + warm.frame(b"E", bytes([3]))


@as_root
def test_a_spare_waits_ahead_takes_the_start_and_the_next_is_forked(helper):
    """The start runs in the process forked before it arrived; a new spare replaces it; only one ever waits."""
    seen = []
    for _ in range(3):
        spare = helper.spare()
        assert spare not in seen
        reply, out = helper.ask(3)
        assert reply == SERVED, reply
        assert out.split() == [str(spare), "3"], (out, spare)  # run by the spare itself
        seen.append(spare)
        nxt = helper.spare()  # the served one exited; one new spare waits
        assert nxt not in seen and not _gone(nxt)
    assert all(_gone(pid) for pid in seen)  # reaped: no zombies


@as_root
def test_declined_peers_leave_the_spare_waiting(helper):
    """Not root, or root with fewer privileges than the helper: declined by the spare, which waits on
    (the launcher runs such a start in-process). A close with the request unread may reach the
    client as a reset: anything without "A" is a refusal."""
    assert helper.ask(3)[0] == SERVED  # first a start served: a root peer declined later keeps the helper
    spare = helper.spare()
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",  # through the 0700 dir: DAC override
              "--inh-caps=+dac_override", "--ambient-caps=+dac_override")
    fewer = ("setpriv", "--bounding-set", "-sys_module", "--")
    for prefix in (nobody, fewer):
        reply, out = helper.ask(3, prefix)
        assert reply in (warm.DECLINED, b"<closed>", warm.DECLINED + b"<closed>") and not out, (prefix, reply)
    assert _children(helper.pid) == [spare]  # declines do not use up the spare
    assert helper.ask(3) == (SERVED, f"{spare} 3\n")  # control: root with the helper's credentials


@as_root
def test_a_root_peer_elsewhere_first_ends_the_helper_and_later_does_not(tmp_path):
    first = Helper(tmp_path / "first")
    try:
        spare = first.spare()
        assert first.ask(3, ("unshare", "-m"))[0] in (warm.DECLINED, b"<closed>", warm.DECLINED + b"<closed>")
        assert first.proc.wait(timeout=30) == 0  # it leaves the socket to a helper of their own
        _until(lambda: _gone(spare), what="exit of its spare")
    finally:
        first.stop()
    later = Helper(tmp_path / "later")
    try:
        assert later.ask(3)[0] == SERVED
        assert later.ask(3, ("unshare", "-m"))[0] in (warm.DECLINED, b"<closed>", warm.DECLINED + b"<closed>")
        assert later.proc.poll() is None and later.ask(3)[0] == SERVED
    finally:
        later.stop()


@as_root
def test_a_spare_from_a_replaced_release_never_serves(helper):
    """Switched `current` (an upgrade): the waiting spare declines the next start at once (its
    launcher runs it in-process and starts a helper of the new release) and its helper leaves."""
    assert helper.ask(3)[0] == SERVED  # control
    spare = helper.spare()
    os.symlink("releases/r2", helper.root / "new")
    os.replace(helper.root / "new", helper.link)
    reply, out = helper.ask(3)
    assert reply in (warm.DECLINED, b"<closed>", warm.DECLINED + b"<closed>") and not out, (reply, out)
    assert helper.proc.wait(timeout=30) == 0
    _until(lambda: _gone(spare), what="exit of the old release's spare")
    assert not os.path.exists(helper.path) and not os.path.exists(helper.path + ".pid")


@as_root
@pytest.mark.parametrize("how", ["idle", "stop", "SIGKILL of the helper", "SIGKILL of the spare"])
def test_no_spare_outlives_its_helper(tmp_path, how):
    h = Helper(tmp_path, idle=1.0 if how == "idle" else 60.0)
    spare = 0
    try:
        assert h.ask(3)[0] == SERVED
        spare = h.spare()
        if how == "stop":
            assert warm.stop("k-", directory=str(tmp_path / "run" / "warm"), say=lambda _l: None) == [h.pid]
        elif how == "SIGKILL of the helper":
            os.kill(h.pid, signal.SIGKILL)
        elif how == "SIGKILL of the spare":  # a spare that exits unserved: the helper leaves, forks no other
            os.kill(spare, signal.SIGKILL)
        h.proc.wait(timeout=30)
        _until(lambda: _gone(spare), timeout=10, what=f"exit of the spare after {how}")
        assert not [pid for pid in _children(h.pid) if not _gone(pid)]
    finally:
        h.stop()
        if not _gone(spare):  # the test failed: leave no process behind
            os.kill(spare, signal.SIGKILL)


@as_root
def test_spares_take_ahead_the_copy_on_write_faults_the_first_starts_took(helper):
    """The helper learns which pages its first LEARN starts wrote (the stand-in writes 64 pages the
    helper filled); a spare forked after that has them as its own before its start (pre-faulted,
    unchanged: the start still reads what the helper wrote)."""
    counts = []
    for _ in range(warm.LEARN + 4):
        reply, out = helper.ask(3, (), "pages")
        assert reply == SERVED, reply
        _, ahead, same = out.split()
        assert same == "True", out  # pre-faulting changed no byte
        counts.append(int(ahead))
        if counts[-1] == 64:
            break
    assert counts[0] == 0 and counts[-1] == 64, counts  # nothing learned yet, then all of them


@as_root
def test_the_next_spare_waits_for_the_start_unless_a_launcher_does(helper):
    """While a start is in flight the helper forks no spare beside it (its setup would compete for
    the CPU); a launcher that connects meanwhile gets one at once and is served."""
    assert helper.ask(3)[0] == SERVED
    spare = helper.spare()
    held = subprocess.Popen(helper.client(3, (), "hold"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert held.stdout.readline().split() == [str(spare).encode()]  # the spare took it, and holds it
        time.sleep(0.5)  # room for a fork that should not happen
        assert _children(helper.pid) == [spare]
        reply, out = helper.ask(3)  # meanwhile: served by a spare forked for it
        assert reply == SERVED and int(out.split()[0]) != spare, (reply, out)
    finally:
        held.stdin.close()
        held.wait(timeout=60)
    rest, err = held.stdout.read(), held.stderr.read()
    assert rest.split() == [str(spare).encode(), b"3"] and err == SERVED, (rest, err)
    assert helper.spare() not in (spare, *helper.served)
