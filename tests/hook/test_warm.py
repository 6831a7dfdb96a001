"""The warm helper's pure parts: the launcher's key, the request and frame codec (front.c's side:
tests/hook/test_front.py), the peer check, and that importing the start path ahead of time
reads no host state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
