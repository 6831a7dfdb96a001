"""Load each compiled profile with libseccomp in a forked child and probe it.

Needs root only for the control children (unshare(CLONE_NEWUSER) and a raw
clone(CLONE_NEWNS) succeed there); the filtered probes need nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap

import pytest

from seccomp_testlib import (
    AF_INET, AF_UNIX, CLONE_NEWNS, CLONE_NEWUSER, EFAULT, EINVAL, ENOSYS, EPERM, SIGCHLD,
    SOCK_STREAM, errno_of, fork_status, in_child, raw, raw_clone, thread_works,
)
from tiergate.seccomp.profiles import compile_profile, list_profiles

PROFILES = list_profiles()
ROOT = os.geteuid() == 0


def denied_probes() -> dict:
    """Calls every tier must refuse, with harmless arguments."""
    return {
        "unshare_user": errno_of("unshare", CLONE_NEWUSER),
        "mount": errno_of("mount", b"none", b"/nonexistent-tiergate-probe", b"tmpfs", 0, None),
        "keyctl": errno_of("keyctl", 1, None),  # KEYCTL_JOIN_SESSION_KEYRING, anonymous
        "bpf": errno_of("bpf", 9999, None, 0),
        "io_uring_setup": errno_of("io_uring_setup", 1, None),
        "clone3": errno_of("clone3", None, 0),
        "clone_newns": raw_clone(CLONE_NEWNS | SIGCHLD),
        "open_by_handle_at": errno_of("open_by_handle_at", -1, None, 0),
        "perf_event_open": errno_of("perf_event_open", None, 0, -1, -1, 0),
    }


EXPECTED_DENIAL = {
    "unshare_user": EPERM, "mount": EPERM, "keyctl": EPERM, "bpf": EPERM,
    "io_uring_setup": ENOSYS, "clone3": ENOSYS, "clone_newns": EPERM,
    "open_by_handle_at": EPERM, "perf_event_open": EPERM,
}


def allowed_probes() -> dict:
    r, err = raw("getpid")
    return {"getpid": r == os.getpid() and err == 0, "thread": thread_works()}


@pytest.fixture(scope="module")
def control():
    return in_child(denied_probes)


def test_control_child_is_not_denied(control):
    """Without a filter the same calls do not fail with the profiles' errno."""
    if not ROOT:
        pytest.skip("the control child needs root (unshare, clone(CLONE_NEWNS), perf as root)")
    for probe, err in EXPECTED_DENIAL.items():
        assert control[probe] != err, (probe, control[probe])
    assert control["unshare_user"] == 0 and control["keyctl"] == 0 and control["clone_newns"] == 0
    assert control["bpf"] == EINVAL and control["clone3"] == EINVAL and control["io_uring_setup"] == EFAULT


@pytest.mark.parametrize("name", PROFILES)
def test_dangerous_calls_denied_with_profile_errno(name):
    got = in_child(denied_probes, compile_profile(name))
    assert got == EXPECTED_DENIAL


@pytest.mark.parametrize("name", PROFILES)
def test_ordinary_calls_and_threads_work(name):
    assert in_child(allowed_probes, compile_profile(name)) == {"getpid": True, "thread": True}


@pytest.mark.parametrize("name", [n for n in PROFILES if n != "node-worker"])
def test_fork_and_plain_clone_work(name):
    def probe():
        return fork_status(), raw_clone(SIGCHLD)

    assert in_child(probe, compile_profile(name)) == ((0, 7), 0)


def test_extra_deny_is_enforced():
    oci = compile_profile("baseline", extra_deny=["getppid"])
    assert in_child(lambda: errno_of("getppid"), oci) == EPERM
    assert in_child(lambda: errno_of("getppid")) == 0


def test_personality_and_chroot_by_tier():
    def probe():
        out = {"uname26": errno_of("personality", 0x20000), "chroot": errno_of("chroot", b"/")}
        return out

    assert in_child(probe, compile_profile("baseline")) == {"uname26": 0, "chroot": 0}
    assert in_child(probe, compile_profile("restricted")) == {"uname26": ENOSYS, "chroot": EPERM}


def test_ptrace_denied_from_restricted_on():
    probe = lambda: errno_of("process_vm_readv", os.getppid(), None, 0, None, 0, 0)  # noqa: E731
    assert in_child(probe, compile_profile("baseline")) != EPERM
    for name in ("restricted", "isolated", "node-worker"):
        assert in_child(probe, compile_profile(name)) == EPERM


def socket_probe():
    out = {}
    for fam in (AF_UNIX, AF_INET):
        r, err = raw("socket", fam, SOCK_STREAM, 0)
        if r >= 0:
            os.close(r)
        out[fam] = err
    return out


def test_control_can_open_inet_socket():
    assert in_child(socket_probe) == {AF_UNIX: 0, AF_INET: 0}


@pytest.mark.parametrize("name", ["isolated", "image-processor"])
def test_only_unix_sockets(name):
    assert in_child(socket_probe, compile_profile(name)) == {AF_UNIX: 0, AF_INET: EPERM}


@pytest.mark.parametrize("name", ["baseline", "restricted", "node-worker", "scheduler"])
def test_network_tiers_keep_inet(name):
    assert in_child(socket_probe, compile_profile(name)) == {AF_UNIX: 0, AF_INET: 0}


def test_isolated_denies_mknod(tmp_path):
    fifo = str(tmp_path / "fifo").encode()

    def probe():
        return errno_of("mknodat", -100, fifo, 0o10600, 0)  # AT_FDCWD, S_IFIFO

    assert in_child(probe, compile_profile("isolated")) == EPERM
    assert in_child(probe, compile_profile("restricted")) == 0


def test_node_worker_threads_but_no_fork_python():
    def probe():
        return {"fork": fork_status()[0], "clone": raw_clone(SIGCHLD), "thread": thread_works()}

    assert in_child(probe, compile_profile("node-worker")) == {"fork": EPERM, "clone": EPERM, "thread": True}


C_PROGRAM = textwrap.dedent(r"""
    #include <errno.h>
    #include <pthread.h>
    #include <stdio.h>
    #include <string.h>
    #include <sys/wait.h>
    #include <unistd.h>

    static void *worker(void *arg) { *(int *)arg = 42; return NULL; }

    int main(void) {
        int value = 0;
        pthread_t t;
        int rc = pthread_create(&t, NULL, worker, &value);
        if (rc == 0) pthread_join(t, NULL);
        printf("thread rc=%d value=%d\n", rc, value);
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid(pid, NULL, 0);
        printf("fork pid=%d errno=%d\n", pid > 0 ? 1 : (int)pid, pid < 0 ? errno : 0);
        fflush(stdout);
        return 0;
    }
""")


@pytest.fixture(scope="module")
def c_probe():
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the static pthread/fork probe")
    d = tempfile.mkdtemp(prefix="tiergate-seccomp-")
    src, exe = os.path.join(d, "probe.c"), os.path.join(d, "probe")
    with open(src, "w") as f:
        f.write(C_PROGRAM)
    res = subprocess.run([gcc, "-static", "-O1", "-pthread", "-o", exe, src], capture_output=True, text=True)
    if res.returncode != 0:  # no static libc: a dynamic binary proves the same
        subprocess.run([gcc, "-O1", "-pthread", "-o", exe, src], check=True, capture_output=True)
    yield exe
    shutil.rmtree(d, ignore_errors=True)


def run_under(exe: str, oci: dict | None) -> str:
    """Exec ``exe`` in a forked child after loading ``oci``; its stdout."""
    rfd, wfd = os.pipe()

    def probe():
        os.dup2(wfd, 1)
        os.execv(exe, [exe])

    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            in_child_exec(probe, oci)
        finally:
            os._exit(127)
    os.close(wfd)
    out = b""
    while chunk := os.read(rfd, 4096):
        out += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    return out.decode()


def in_child_exec(probe, oci):
    import ctypes

    from seccomp_testlib import PR_SET_NO_NEW_PRIVS, libc
    from tiergate.seccomp.build import to_filter

    if oci is not None:
        flt = to_filter(oci)
        assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, ctypes.get_errno()
        flt.load()
    probe()


def test_node_worker_c_program(c_probe):
    assert run_under(c_probe, None) == "thread rc=0 value=42\nfork pid=1 errno=0\n"
    assert run_under(c_probe, compile_profile("restricted")) == "thread rc=0 value=42\nfork pid=1 errno=0\n"
    assert run_under(c_probe, compile_profile("node-worker")) == f"thread rc=0 value=42\nfork pid=-1 errno={EPERM}\n"
