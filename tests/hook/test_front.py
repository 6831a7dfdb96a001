"""The compiled front (engines/front.c), built with the host's cc for this test (its socket prefix
and run dir in tmp, serving our own uid, a fake Python launcher that prints what it was given),
driven against a stand-in helper that uses the helper's own receiving code (warm._receive)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tiergate.engines import front, launcher, warm

pytestmark = pytest.mark.skipif(front.compiler() is None, reason="no C compiler (cc) on PATH")

DIGEST = "0123456789abcdef"
FAKE = "import json, os, sys\nprint(json.dumps({'argv': sys.argv, 'spawn': os.environ.get('TIERGATE_WARM_SPAWN')}))\n"


class Front:
    def __init__(self, root: Path, run: Path, uid: int | None = None) -> None:
        self.root = root
        (root / "lib").mkdir(parents=True)
        os.symlink(f"releases/{DIGEST}", root / "lib" / "current")
        self.launcher = root / "lib" / "tiergate-hook.py"
        self.launcher.write_text(FAKE)
        self.exe = root / "tiergate-hook"
        self.exe.write_bytes(self.build(os.geteuid() if uid is None else uid, run))
        self.exe.chmod(0o755)
        self.socket = f"{root}/k-{DIGEST}"

    def build(self, uid: int, run: Path) -> bytes:
        return front.build(self.exe, front.header(str(self.root / "lib" / "current"), f"{self.root}/k-", sys.executable,
                                                  str(self.launcher), launcher.MARKER, uid, str(run)),
                           front.compiler() or "cc")

    def run(self, env: dict | None = None, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run([str(self.exe), "precreate", "--log", "x\udcff"], input=stdin, capture_output=True,
                              env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd=self.root, timeout=60, check=False)

    def serve(self, talk) -> tuple[threading.Thread, list]:
        """A stand-in helper: takes one request (warm._receive) and lets `talk(conn, request, fds)` answer."""
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(self.socket)
        listener.listen(1)
        got: list = []

        def serve():
            try:
                conn, _ = listener.accept()
                with conn:
                    request, fds = warm._receive(conn)
                    got.append((request, [os.fstat(fd).st_ino for fd in fds]))
                    try:
                        talk(conn, request, fds)
                    finally:
                        for fd in fds:
                            os.close(fd)
            finally:
                listener.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        return thread, got


@pytest.fixture
def fr(tmp_path):
    return Front(tmp_path / "tg", tmp_path)


def _launched(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_served_the_request_and_the_status_pass_through(fr):
    thread, got = fr.serve(lambda conn, req, fds: conn.sendall(warm.ACCEPTED + warm.frame(b"E", bytes([3]))))
    proc = fr.run({"FOO": "bar"})
    thread.join(10)
    assert proc.returncode == 3 and proc.stdout == b"" and proc.stderr == b""
    request, inodes = got[0]
    assert request.argv == [str(fr.launcher), "precreate", "--log", "x\udcff"]  # as sys.argv would be
    assert request.cwd == str(fr.root) and request.env == {b"PATH": b"/usr/bin:/bin", b"FOO": b"bar"}
    assert request.umask == _umask()
    assert len(inodes) == 3 and inodes[0] != inodes[1]  # its stdin (a pipe) and stdout (another)


def test_absent_helper_runs_the_launcher_asking_it_to_start_one(fr):
    out = _launched(fr.run())
    assert out == {"argv": [str(fr.launcher), "precreate", "--log", "x\udcff"], "spawn": "1"}


def test_absent_helper_and_no_writable_run_dir_runs_the_launcher_alone(tmp_path):
    fr = Front(tmp_path / "tg", tmp_path / "missing")
    assert _launched(fr.run())["spawn"] is None


def test_another_release_is_another_socket(fr):
    os.replace(fr.root / "lib" / "current", fr.root / "lib" / "old")
    os.symlink("releases/fedcba9876543210", fr.root / "lib" / "current")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(fr.socket)  # the old release's helper: never used
    listener.listen(1)
    try:
        assert _launched(fr.run())["spawn"] == "1"
    finally:
        listener.close()


@pytest.mark.parametrize("reply", [warm.DECLINED, b""])
def test_declined_runs_the_launcher_without_the_spawn_marker(fr, reply):
    thread, got = fr.serve(lambda conn, req, fds: conn.sendall(reply))
    out = _launched(fr.run({"TIERGATE_WARM_SPAWN": "1"}))  # the caller's own marker never passes
    thread.join(10)
    assert got and out == {"argv": [str(fr.launcher), "precreate", "--log", "x\udcff"], "spawn": None}


@pytest.mark.parametrize("after", [b"", bytes([0]), warm.frame(b"E", bytes([0]))[:-1], warm.frame(b"Z", b""),
                                   warm.frame(b"X", b"/bin/true\0"), warm.frame(b"E", b"\0\0")])
def test_anything_but_a_frame_after_accepted_fails_closed_with_one_line(fr, after):
    thread, _ = fr.serve(lambda conn, req, fds: conn.sendall(warm.ACCEPTED + after))
    proc = fr.run()
    thread.join(10)
    assert proc.returncode == 1 and proc.stdout == b""  # never the launcher: the start's stdin may be gone
    assert proc.stderr == b"tiergate: error: the warm helper stopped during this start: refused\n"


def test_exec_hands_the_real_runtime_back_with_the_childs_stdin(fr, tmp_path):
    def talk(conn, req, fds):
        r, w = os.pipe()
        os.write(w, b"put back\n")
        os.close(w)
        body = warm.hand_back_body("/bin/sh", ["sh", "-c", 'echo "$FOO"; cat'], {"FOO": "bar"})
        conn.sendmsg([warm.frame(b"X", body)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, sys.byteorder))])
        os.close(r)

    thread, _ = fr.serve(lambda conn, req, fds: (conn.sendall(warm.ACCEPTED), talk(conn, req, fds)))
    proc = fr.run(stdin=b"the engine's\n")
    thread.join(10)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"bar\nput back\n", b"")


def test_run_reports_the_status_or_the_errno_then_exits_with_the_childs_status(fr, tmp_path):
    replies: list = []

    def talk(conn, req, fds):
        conn.sendall(warm.ACCEPTED)
        for path, argv in (("/bin/sh", ["sh", "-c", "echo ran; exit 7"]), (str(tmp_path / "missing"), ["missing"]),
                           ("/bin/sh", ["sh", "-c", "kill -9 $$"])):
            conn.sendall(warm.frame(b"R", warm.hand_back_body(path, argv, {})))
            replies.append(int.from_bytes(conn.recv(4, socket.MSG_WAITALL), "little", signed=True))
        conn.sendall(warm.frame(b"E", bytes([5])))

    thread, _ = fr.serve(talk)
    proc = fr.run()
    thread.join(10)
    assert replies == [7, -(1 << 20) - 2, -9]
    assert (proc.returncode, proc.stdout) == (5, b"ran\n")


def test_another_user_runs_the_launcher_without_connecting(tmp_path):
    fr = Front(tmp_path / "tg", tmp_path, uid=os.geteuid() + 1)
    assert _launched(fr.run())["spawn"] is None  # no socket: it would have asked for a helper had it connected


def test_the_front_names_its_launcher_and_the_same_constants_compile_to_the_same_bytes(fr, tmp_path):
    assert front.launcher_of(fr.exe) == str(fr.launcher)
    assert front.launcher_of(fr.launcher) is None
    assert fr.build(os.geteuid(), tmp_path) == fr.exe.read_bytes()  # install: "unchanged"
    assert fr.build(os.geteuid(), tmp_path / "other") != fr.exe.read_bytes()


def _umask() -> int:
    old = os.umask(0o22)
    os.umask(old)
    return old


def test_install_compiles_the_front_idempotently_and_falls_back_to_python_without_cc(tmp_path, monkeypatch):
    """With cc: BIN/tiergate-hook is the front of BIN/lib/tiergate-hook.py, a reinstall leaves both
    unchanged; without cc: the Python launcher alone, said in one line, the front's launcher gone;
    uninstall removes what install wrote."""
    said: list[str] = []
    bin_dir = tmp_path / "bin"
    exe, py = bin_dir / launcher.HOOK, bin_dir / launcher.HOOK_LAUNCHER
    launcher.install_hook(bin_dir, said.append)
    assert front.launcher_of(exe) == str(py) and warm.key_in(py.read_text())
    assert os.access(exe, os.X_OK) and f"wrote {exe}" in said
    said.clear()
    launcher.install_hook(bin_dir, said.append)
    assert f"unchanged {exe}" in said and f"unchanged {py}" in said, said
    monkeypatch.setattr(front, "compiler", lambda: None)
    said.clear()
    launcher.install_hook(bin_dir, said.append)
    assert [line for line in said if "no C compiler" in line] == [
        f"no C compiler (cc) on PATH: {exe} is the Python launcher, every start in its own process"]
    assert exe.read_text().startswith("#!") and warm.key_in(exe.read_text()) is None and not py.exists()
    launcher.install_hook(bin_dir, said.append, warm=False)  # --no-warm: the same program, said nothing more
    assert front.launcher_of(exe) is None
    launcher.remove_hook(bin_dir, said.append)
    assert not exe.exists() and not (bin_dir / "lib").exists()


def test_run_over_runs_the_runtime_in_the_front_and_raises_its_spawn_errno(fr, tmp_path, monkeypatch):
    """The helper's side (warm.run_over, as the shim's child calls it): R's wait returns the
    runtime's status, or raises the front's spawn errno as an in-process spawn would; X makes the
    front exec."""
    seen: list = []

    def talk(conn, req, fds):
        conn.sendall(warm.ACCEPTED)
        monkeypatch.setattr(warm, "_launcher", conn)
        seen.append(warm.run_over("/bin/sh", ["sh", "-c", "exit 7"], {})())
        try:
            warm.run_over(str(tmp_path / "missing"), ["missing"], {})()
        except OSError as exc:
            seen.append(exc.errno)
        conn.sendall(warm.frame(b"X", warm.hand_back_body("/bin/sh", ["sh", "-c", "echo $X; exit 4"], {"X": "handed"})))

    thread, _ = fr.serve(talk)
    proc = fr.run()
    thread.join(10)
    assert seen == [7, 2] and (proc.returncode, proc.stdout) == (4, b"handed\n")


def test_the_shims_launcher_has_a_warm_helper_of_its_own(tmp_path):
    from tiergate.engines import shim

    def text(warm_: bool) -> str:
        return launcher.script(tmp_path / "lib", "tiergate.shim.runtime", "conf='/c'", warm=warm_, note=shim.SHIM)

    key = warm.key_in(text(True))
    hook = warm.key_in(launcher.script(tmp_path / "lib", "tiergate.hook.stages", warm=True))
    assert key and key != hook and warm.key_of(text(True).replace(key, warm.KEY_PLACEHOLDER)) == key
    assert warm.key_in(text(False)) is None
