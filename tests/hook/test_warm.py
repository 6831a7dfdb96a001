"""The warm helper's pure parts: the launcher's key, the request framing (the launcher's own
client code against the helper's receiving code), the peer check, and that importing the
start path ahead of time reads no host state."""

from __future__ import annotations

import json
import marshal
import os
import posix
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import types
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
    assert warm.socket_prefix(key) in text and warm.SOCKET_DIR.startswith("/run/")  # the client's spawn check
    assert len((warm.socket_prefix(key) + "0" * 16).encode()) < 108  # AF_UNIX's limit


def test_the_socket_is_named_by_the_release_the_link_points_to(tmp_path):
    """The launcher reads lib/current on every start: a new release is a new socket name."""
    assert f"posix.readlink({str(tmp_path / 'lib' / 'current')!r})" in _text(tmp_path / "lib")
    text = _text(tmp_path / "lib")
    key = warm.key_in(text)
    ns = _client_namespace()
    (tmp_path / "lib").mkdir()
    os.symlink("releases/0123456789abcdef", tmp_path / "lib" / "current")
    sockdir = tmp_path / "s"
    sockdir.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sockdir / f"{key}-0123456789abcdef"))
    listener.listen(1)
    result = []

    def accept_and_decline():
        conn = listener.accept()[0]
        result.append(conn)
        conn.close()

    server = threading.Thread(target=accept_and_decline)
    server.start()
    assert ns["_warm"](os.readlink(tmp_path / "lib" / "current"), f"{sockdir}/{key}-", b"") is False
    server.join(5)
    assert result, "the client did not connect to <prefix><digest>"
    os.replace(tmp_path / "lib" / "current", tmp_path / "lib" / "old")
    os.symlink("releases/fedcba9876543210", tmp_path / "lib" / "current")
    # no helper for the new release: "start one" (True), never the old one's socket
    assert ns["_warm"](os.readlink(tmp_path / "lib" / "current"), f"{sockdir}/{key}-", b"") is True
    listener.close()


def test_requests_round_trip_and_malformed_ones_are_refused():
    env = {b"PATH": b"/usr/bin", b"X": b"\xff\x00"}
    data = warm.encode_request(["/bin/tiergate-hook", "precreate", "\udcff"], "/run/x", env, 0o22)
    req = warm.decode_request(data)
    assert (req.argv, req.cwd, req.env, req.umask) == (["/bin/tiergate-hook", "precreate", "\udcff"], "/run/x", env, 0o22)
    bad = [data[:-1], data + b"x", data[:3], (10**9).to_bytes(4, "little") + data[4:],
           warm.encode_request([], "/", {}, 0), warm.encode_request(["x"], "relative", {}, 0),
           warm.encode_request(["x"], "/", {"K": "V"}, 0), warm.encode_request(["x"], "/", {}, 0o1000),
           len(b"junk").to_bytes(4, "little") + b"junk"]
    for item in bad:
        with pytest.raises(ValueError):
            warm.decode_request(item)


def test_peer_check_wants_root_and_every_namespace_and_root_dir_its_own():
    own = {**{n: f"{n}:[1]" for n in warm.NAMESPACES}, "root": "1:2", "credentials": "CapEff=3ff", "lsm": "unconfined"}
    assert warm.peer_problem(0, dict(own), own) is None
    assert "uid 1000" in warm.peer_problem(1000, dict(own), own)
    for name in own:
        assert warm.peer_problem(0, {**own, name: "other"}, own), name
    assert warm.identity("self") == warm.identity(os.getpid())
    mine = warm.identity("self")["credentials"]
    assert "CapEff=" in mine and "NoNewPrivs=" in mine and "Seccomp=" in mine, mine


class _Exit(Exception):
    pass


def _client_namespace(written: list | None = None) -> dict:
    """The launcher's client code (warm.CLIENT, as install compiles it into each release), with a posix that says root,
    records what it writes to fd 2 and raises instead of exiting."""
    fake = types.SimpleNamespace(**{n: getattr(posix, n) for n in dir(posix) if not n.startswith("__")})
    fake.geteuid = lambda: 0
    fake.access = lambda path, mode: True

    def _exit(code):
        raise _Exit(code)

    fake._exit = _exit
    fake.write = lambda fd, data: (written if written is not None else []).append((fd, data))
    ns = {"posix": fake, "sys": sys}
    tree = Path(tempfile.mkdtemp())
    try:
        launcher.write_code(tree, tree)  # as install compiles it into every release
        exec(marshal.loads((tree / launcher.CLIENT_CODE).read_bytes()), ns)  # noqa: S102
    finally:
        shutil.rmtree(tree)
    return ns


def _serve_once(path: str, replies: list[bytes], got: list) -> threading.Thread:
    """A helper stand-in using the helper's own receiving code: take the request, send replies."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            request, fds = warm._receive(conn)
            got.append((request, [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]))
            for fd in fds:
                os.close(fd)
            for reply in replies:
                conn.sendall(reply)
        listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


@pytest.mark.parametrize("replies,outcome", [([b"A", bytes([3])], 3), ([b"A", bytes([0])], 0),
                                             ([b"D"], False), ([], False), ([b"A"], "refused")])
def test_the_launchers_client_against_the_helpers_receiver(tmp_path, replies, outcome):
    (tmp_path / "lib").mkdir()
    os.symlink("releases/0123456789abcdef", tmp_path / "lib" / "current")
    written: list = []
    ns = _client_namespace(written)
    got: list = []
    thread = _serve_once(str(tmp_path / "k-0123456789abcdef"), replies, got)
    fds = launcher_fds()
    try:
        result = ns["_warm"](os.readlink(tmp_path / "lib" / "current"), f"{tmp_path}/k-", fds)
    except _Exit as exc:
        result = exc.args[0]
    thread.join(5)
    request, passed = got[0]
    assert request.argv == sys.argv and request.cwd == os.getcwd() and request.env == dict(os.environb)
    assert request.umask == _umask()
    assert passed == [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)]  # our stdin, stdout, stderr
    if outcome == "refused":  # accepted, then no status: the start fails with one line, never guesses
        assert result == 1 and len(written) == 1 and written[0][0] == 2
        assert written[0][1].startswith(b"tiergate: ") and written[0][1].count(b"\n") == 1
    else:
        assert result == outcome and not written


def launcher_fds() -> bytes:
    text = _text(Path("/nonexistent/lib"))
    line = next(ln for ln in text.splitlines() if "_helper = _warm(" in ln)
    return eval(line[line.rindex(", b'") + 2:line.rindex(") is True")])  # noqa: S307  our own literal


def _umask() -> int:
    old = os.umask(0o22)
    os.umask(old)
    return old


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


def test_doctor_says_whether_the_launchers_helper_runs(tmp_path):
    from tiergate.cli import probes

    plain = tmp_path / "plain"
    plain.write_text(launcher.script(tmp_path / "lib", "tiergate.hook.stages"))
    assert "none" in probes.check_warm(str(plain)).detail
    hook = tmp_path / "hook"
    hook.write_text(_text(tmp_path / "lib"))  # a key no helper runs for
    check = probes.check_warm(str(hook))
    assert check.status == probes.OK and "not running" in check.detail and warm.SOCKET_DIR in check.detail


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
