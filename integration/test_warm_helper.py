"""The warm helper (tiergate/engines/warm.py) from the user's side: a start it runs is as hardened
as one the hook runs itself, each start is logged once, and every way it cannot serve falls back
to the same in-process start, or fails closed with one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from harness import probe_status, wait_until
from tiergate_fixtures import STATUS_SH, Hooks, podman_argv, tg_control, tg_images, tg_policy, tiergate  # noqa: F401

from tiergate.engines import front, warm

pytestmark = pytest.mark.podman


def helper_pid(key: str, timeout: float = 60, other_than: int | None = None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path, pid, _ in warm.helpers(key + "-"):
            if pid and pid != other_than and os.path.exists(path[:-4]):
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no warm helper for {key} after {timeout} s")


def children(pid: int) -> list[int]:
    """The helper's children: its spare (engines/warm.py keeps one forked ahead) and the starts it serves."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if alive(int(c))]
    except OSError:
        return []


def stdin_of(pid: int) -> int | None:
    """The inode of a process's fd 0 (a served start's is its launcher's stdin)."""
    try:
        return os.stat(f"/proc/{pid}/fd/0").st_ino
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def wh(podman_env, it_dir, tg_images, tg_policy):
    """A private install (its own launcher key, so its own helper), and that key."""
    hooks = Hooks(podman_env, it_dir / f"warm-{os.getpid()}", policy=tg_policy)
    python = front.launcher_of(hooks.bin_dir / "tiergate-hook")
    assert python == str(hooks.bin_dir / "lib" / "tiergate-hook.py"), "a default install's hook is the compiled front"
    key = warm.key_in(Path(python).read_text())
    assert key, "a default install's launcher uses a warm helper"
    yield hooks, key
    warm.stop(key + "-", say=lambda _line: None)


def start(hooks: Hooks, image: str, prefix: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(probe status from inside, the start's precreate record): exactly one record per start."""
    mark = hooks.mark()
    proc = harness.run_cmd([*prefix, *podman_argv(hooks.podman, hooks.hooks_dir, "run", "--rm", image, "sh", "-c",
                                                  STATUS_SH)], env=hooks.podman.env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = [r for r in hooks.records()[mark:] if r.get("stage") == "precreate"]
    assert len(records) == 1, records
    return probe_status(proc.stdout), records[0]


def test_a_warm_start_is_as_hardened_as_one_in_process_and_logged_once(wh, tg_images, tg_control):
    hooks, key = wh
    image = tg_images["restricted"]
    warm.stop(key + "-", say=lambda _line: None)
    absent, rec = start(hooks, image)  # no helper: the hook runs it, and starts one
    assert "warm" not in rec and rec["outcome"] == "allowed", rec
    pid = helper_pid(key)
    spare = wait_until(lambda: (c := children(pid)) and len(c) == 1 and c[0], timeout=30, what="the helper's spare")
    served, rec = start(hooks, image)
    assert rec.get("warm") == pid and (rec["tier"], rec["outcome"]) == ("restricted", "allowed"), rec
    assert not alive(spare), "the spare that was waiting took the start and is done"
    wait_until(lambda: (c := children(pid)) and len(c) == 1 and c[0] != spare, timeout=30, what="one new spare")
    # another mount namespace: the helper declines (it would see other files), the hook runs it
    declined, rec = start(hooks, image, prefix=("unshare", "-m"))
    assert "warm" not in rec and rec["outcome"] == "allowed", rec
    assert served == absent == declined
    control = tg_control.status(image)
    assert served["NoNewPrivs"] == "1" and control["NoNewPrivs"] == "0", (served, control)
    assert int(served["CapEff"], 16) & ~int(control["CapEff"], 16) == 0 and served["CapEff"] != control["CapEff"]
    assert served["Seccomp"] == "2"
    assert alive(pid)


def test_a_root_caller_with_fewer_privileges_is_not_served_with_the_helpers(wh, tg_images):
    """Same namespaces, but a smaller capability bounding set (a confined root): the helper, started
    by a fully privileged hook, declines, and the start runs in-process with the caller's own."""
    hooks, key = wh
    image = tg_images["baseline"]
    start(hooks, image)  # a helper runs (this start may have started it)
    pid = helper_pid(key)
    _, rec = start(hooks, image)
    assert rec.get("warm") == pid, rec  # control: the same start, fully privileged, is served
    _, rec = start(hooks, image, prefix=("setpriv", "--bounding-set", "-sys_module", "--"))
    assert "warm" not in rec and rec["outcome"] == "allowed", rec


def test_a_helper_in_another_mount_namespace_leaves_the_socket_to_the_hosts_hooks(wh, tg_images):
    """A hook run in a private mount namespace (`unshare -m`) may start the helper (when /proc/1 is
    not readable to compare namespaces); the first host hook it declines makes it exit, so the
    host's hooks get their own helper."""
    hooks, key = wh
    warm.stop(key + "-", say=lambda _line: None)
    _, rec = start(hooks, tg_images["baseline"], prefix=("unshare", "-m"))
    assert "warm" not in rec and rec["outcome"] == "allowed", rec
    time.sleep(2)  # a helper takes its pid file within ~0.1 s of starting
    other = [pid for _, pid, _ in warm.helpers(key + "-") if pid]
    if other:
        assert helper_pid(key) == other[0]  # it listens
        _, rec = start(hooks, tg_images["baseline"])  # declined: runs in-process, the helper exits
        assert "warm" not in rec and rec["outcome"] == "allowed", rec
        deadline = time.monotonic() + 10
        while alive(other[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(other[0])
    _, rec = start(hooks, tg_images["baseline"])  # no helper: the host's hook starts one
    pid = helper_pid(key, other_than=other[0] if other else None)
    _, rec = start(hooks, tg_images["baseline"])
    assert rec.get("warm") == pid, rec


def _request(path: str, argv: list[str], preexec=None) -> subprocess.CompletedProcess:
    """Connect to the helper's socket from a child (as another uid with preexec) and send a request
    for argv with the child's own stdio; prints the helper's reply bytes."""
    code = (f"import os, socket, sys\nsys.path[:0] = {sys.path!r}\nfrom tiergate.engines import warm\n"
            f"s = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\n"
            f"d = warm.encode_request({argv!r}, '/', {{}}, 0o22)\nout = b''\ntry:\n"
            "    s.sendmsg([d], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(__import__('array').array('i', [0, 1, 2])))])\n"
            "    while True:\n        b = s.recv(1)\n        if not b: break\n        out += b\n"
            "except (BrokenPipeError, ConnectionResetError):\n    out += b'<closed>'\n"
            "os.write(2, repr(out).encode())\n")
    return subprocess.run([*(preexec or []), sys.executable, "-I", "-c", code], capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_only_root_is_served(wh, tg_images):
    hooks, key = wh
    pid = helper_pid(key, timeout=0.1) if warm.helpers(key + "-") else None
    if pid is None:
        start(hooks, tg_images["baseline"])
        pid = helper_pid(key)
    path = next(p for p, q, _ in warm.helpers(key + "-") if q == pid)[:-4]
    launcher = str(hooks.bin_dir / "tiergate-hook")
    # control: root is served (a usage error: the child ran main with our stdio, status 2)
    root = _request(path, [launcher, "--no-such-stage"])
    assert root.stderr.endswith(b"usage: tiergate-hook {precreate|createRuntime|prestart} [--policy FILE] "
                                b"[--cache-dir DIR] [--log FILE]\nb'AE\\x01\\x00\\x00\\x00\\x02'"), root.stderr  # its stderr: ours
    # uid 65534, allowed through the root-only directory by CAP_DAC_OVERRIDE: declined unread
    # (the close may reach it as a broken pipe or a reset: anything but "A" is a refusal)
    harness.require_binary("setpriv")
    nobody = _request(path, [launcher, "--no-such-stage"],
                      ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "--inh-caps=+dac_override", "--ambient-caps=+dac_override"])
    assert nobody.stderr in (b"b'D'", b"b'D<closed>'", b"b'<closed>'"), nobody.stderr


def test_a_start_whose_helper_child_dies_fails_with_one_line(wh, tg_images):
    hooks, key = wh
    if not warm.helpers(key + "-"):
        start(hooks, tg_images["baseline"])
    pid = helper_pid(key)
    argv = [str(hooks.bin_dir / "tiergate-hook"), "precreate", "--policy", str(hooks.dir), "--log", str(hooks.log)]
    spare = wait_until(lambda: (c := children(pid)) and len(c) == 1 and c[0], timeout=30, what="the helper's spare")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={}, cwd="/")
    try:  # the spare takes it and reads the spec from our pipe, which we hold open: it waits, mid-request
        ours = os.fstat(proc.stdin.fileno()).st_ino
        wait_until(lambda: stdin_of(spare) == ours, timeout=30, what="the spare serving our start")
        os.kill(spare, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1 and out == b"", (proc.returncode, out)
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiergate: ") and "warm helper" in lines[0], lines
    assert alive(pid)  # the helper itself serves on


def test_an_upgrade_never_talks_to_the_old_helper_and_uninstall_stops_the_helper(wh, tg_images):
    hooks, key = wh
    if not warm.helpers(key + "-"):
        start(hooks, tg_images["baseline"])
    old = helper_pid(key)
    lib = hooks.bin_dir / "lib"
    current = os.path.realpath(lib / "current")
    new = lib / "releases" / "0000000000000001"
    shutil.copytree(current, new, symlinks=True)  # what an install of a new version does: a new release...
    os.symlink("releases/0000000000000001", lib / ".current-new")
    os.replace(lib / ".current-new", lib / "current")  # ...and current switched with one rename
    try:
        _, rec = start(hooks, tg_images["baseline"])
        assert "warm" not in rec and rec["outcome"] == "allowed", rec  # never the old release's helper
        fresh = helper_pid(key, other_than=old)
        assert any(p.endswith("-0000000000000001.pid") and q == fresh for p, q, _ in warm.helpers(key + "-"))
        _, rec = start(hooks, tg_images["baseline"])
        assert rec.get("warm") == fresh, rec
        deadline = time.monotonic() + 3 * warm.TICK
        while alive(old) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(old), "the old release's helper stays after its release was replaced"
    finally:
        os.symlink(os.path.relpath(current, lib), lib / ".current-new")
        os.replace(lib / ".current-new", lib / "current")
        shutil.rmtree(new)
    # the restored release has no helper (its old one left): this start starts one; the fresh
    # helper may still be there until its next check (TICK), and uninstall stops both
    start(hooks, tg_images["baseline"])
    pid = helper_pid(key, other_than=fresh)
    out = tiergate("uninstall", "--engine", "podman", "--hooks-dir", hooks.hooks_dir, "--bin-dir", hooks.bin_dir).stdout
    assert f"stopped the warm helper {pid}" in out, out
    assert not alive(pid) and not warm.helpers(key + "-")
    left = os.listdir(warm.SOCKET_DIR) if os.path.isdir(warm.SOCKET_DIR) else []  # gone once empty
    assert not [n for n in left if n.startswith(key)]

