"""Rootless podman, end to end (issue 21), as a test user this test makes and removes.

The user (unique name, subuid/subgid ranges from useradd) gets a copy of the project in a
temp dir it can read (tiergate's packages plus attrs, cattrs, typing_extensions, pyseccomp),
run with /usr/bin/python3: `tiergate install --engine podman` with no paths, as the user.
Podman runs as that user with HOME and XDG_RUNTIME_DIR in its home, `--network none`
(/dev/net/tun is closed to users here, so slirp4netns cannot start) and this host's
`--cgroup-manager cgroupfs`; the CONTROL names `--runtime runc` (Debian's crun refuses hybrid
cgroups), the runs through tiergate name no runtime and no hooks dir.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import harness
from harness import caps_from_hex, file_tree, probe_status, run_cmd
from tiergate_fixtures import LABEL, REPO, STATUS_SH

pytestmark = pytest.mark.podman

PYTHON = "/usr/bin/python3"
RESTRICTED_CAPS = {"CAP_NET_BIND_SERVICE"}
DEPS = ("attr", "attrs", "cattr", "cattrs", "typing_extensions.py", "pyseccomp.py")
STATUS_AND_NPROC = STATUS_SH + "; echo nproc=$(ulimit -u)"
# Bounded: at most FORKS background sleeps, each counted with a builtin; busybox sh exits (rc 2) at
# the first fork that fails, so the last n= is how many it made. They die with the container's init.
FORKS = 400
FORK_BOMB = ("ulimit -H -u 100000 2>/dev/null && echo raised || echo kept; "
             f"i=0; while [ $i -lt {FORKS} ]; do sleep 60 & i=$((i+1)); echo n=$i; done; echo all")


class User:
    """A throwaway user with subordinate ids; commands run as it with an environment of its own."""

    def __init__(self, base: Path, name: str):
        self.name = name
        run_cmd(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, timeout=30)
        pw = pwd.getpwnam(name)
        self.uid, self.home = pw.pw_uid, Path(pw.pw_dir)
        if not any(line.startswith(f"{name}:") for line in Path("/etc/subuid").read_text().splitlines()):
            harness._unavailable("useradd gave the test user no subordinate ids (SUB_UID_* in login.defs)")
        self.run_dir = self.home / ".run"
        self.run_dir.mkdir(mode=0o700)
        os.chown(self.run_dir, pw.pw_uid, pw.pw_gid)
        self.pkg = base / "pkg"
        self.env = {"HOME": str(self.home), "USER": name, "XDG_RUNTIME_DIR": str(self.run_dir),
                    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": f"{self.pkg}:{base / 'site'}"}

    def run(self, *argv: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = [f"{k}={v}" for k, v in self.env.items()]
        return run_cmd(["runuser", "-u", self.name, "--", "env", "-i", *env, *argv], check=check,
                       timeout=timeout, cwd="/")

    def tiergate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(PYTHON, "-m", "tiergate.cli.main", *args, check=check)

    def podman(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run("podman", "--cgroup-manager", "cgroupfs", *args, check=check, timeout=timeout)

    def remove(self) -> None:
        try:
            self.podman("rm", "--all", "--force", "--time", "0", timeout=120)
            self.podman("system", "reset", "--force", timeout=120)
        finally:
            for entry in Path("/proc").iterdir():  # the user's podman pause process and conmons: ours by uid
                try:
                    if entry.name.isdigit() and entry.stat().st_uid == self.uid:
                        harness.stop_pid(int(entry.name), timeout=5)
                except (OSError, TimeoutError):
                    pass
            run_cmd(["userdel", "--remove", self.name], timeout=60)
            for f in ("/etc/subuid", "/etc/subgid"):  # userdel removes them too; make sure
                lines = Path(f).read_text().splitlines(keepends=True)
                kept = [line for line in lines if not line.startswith(f"{self.name}:")]
                if kept != lines:
                    Path(f).write_text("".join(kept))


def _copy_project(base: Path) -> None:
    """tiergate's packages and the compiler's dependencies, where the user can read them."""
    import attrs

    site = Path(attrs.__file__).resolve().parent.parent
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "tiergate", base / "pkg" / "tiergate", ignore=ignore)
    (base / "site").mkdir()
    for dep in DEPS:
        src = site / dep
        if src.is_dir():
            shutil.copytree(src, base / "site" / dep, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, base / "site" / dep)
    run_cmd(["chmod", "-R", "a+rX", str(base)], check=True, timeout=30)


@pytest.fixture(scope="module")
def user(busybox_rootfs):
    harness.require_root()
    harness.require_binary("podman")
    harness.require_binary("runc")
    harness.require_binary("newuidmap")
    base = Path(tempfile.mkdtemp(prefix="tg-rootless-", dir="/tmp"))
    base.chmod(0o755)
    u = User(base, f"tgrl{os.getpid() % 100000}{uuid.uuid4().hex[:4]}")
    try:
        _copy_project(base)
        tar = base / "rootfs.tar"
        shutil.copy2(busybox_rootfs.tar, tar)
        tar.chmod(0o644)
        u.images = {}
        for tier in ("restricted", "baseline", "isolated"):
            ref = f"localhost/tg-rootless-{tier}"
            u.podman("import", "--quiet", *harness._change_flags({LABEL: tier}, (), ("/bin/sh",)), str(tar), ref,
                     check=True)
            u.images[tier] = ref
        yield u
    finally:
        u.remove()
        harness.remove_tree(base)


def status(proc) -> dict[str, str]:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    out = probe_status(proc.stdout)
    out["nproc"] = proc.stdout.split("nproc=")[-1].strip()
    return out


def owned_tree(home: Path, skip: tuple[str, ...]) -> dict:
    """The home's files (podman's own storage and run dirs left out)."""
    return {k: v for k, v in file_tree(home).items() if not k.startswith(skip)}


PODMAN_OWN = (".local/share/containers", ".run", ".cache/containers", ".config/containers/podman")


def test_rootless_install_hardens_logs_and_caches(user):
    ctl = {t: status(user.podman("run", "--rm", "--network", "none", "--runtime", "runc", ref, "sh", "-c",
                                 STATUS_AND_NPROC)) for t, ref in user.images.items()}
    for s in ctl.values():  # CONTROL, before the install: podman's defaults
        assert s["NoNewPrivs"] == "0" and caps_from_hex(s["CapEff"]) > RESTRICTED_CAPS
    doctor = {c["name"]: c for c in json.loads(user.tiergate("doctor", "--json", check=False).stdout)["checks"]}
    assert "rootless" in doctor["cgroups"]["detail"]

    before = owned_tree(user.home, PODMAN_OWN)
    out = user.tiergate("install", "--engine", "podman").stdout
    home = str(user.home)
    assert f"wrote {home}/.config/containers/containers.conf.d/99-tiergate.conf" in out, out
    assert f"wrote {home}/.config/containers/oci/hooks.d/99-tiergate-precreate.json" in out, out
    assert "/usr/" not in out.replace("/usr/bin/python3", "")  # nothing outside the home
    hook = json.loads((user.home / ".config/containers/oci/hooks.d/99-tiergate-precreate.json").read_text())
    log = user.home / ".local/state/tiergate/decisions.jsonl"
    cache_dir = user.home / ".cache/tiergate"
    assert hook["hook"]["args"][-4:] == ["--log", str(log), "--cache-dir", str(cache_dir)]
    doctor = {c["name"]: c for c in json.loads(user.tiergate("doctor", "--json", check=False).stdout)["checks"]}
    assert doctor["podman engine"]["status"] == "ok", doctor["podman engine"]

    # restricted and baseline start hardened: no --runtime, no --hooks-dir
    r = status(user.podman("run", "--rm", "--network", "none", user.images["restricted"], "sh", "-c", STATUS_AND_NPROC))
    assert caps_from_hex(r["CapEff"]) == caps_from_hex(r["CapBnd"]) == RESTRICTED_CAPS
    assert r["NoNewPrivs"] == "1" and r["Seccomp"] == "2"
    from tiergate_fixtures import compiled_policy

    assert r["nproc"] == str(compiled_policy()["tiers"]["restricted"]["pids_limit"])  # pids_limit, as RLIMIT_NPROC
    b = status(user.podman("run", "--rm", "--network", "none", user.images["baseline"], "sh", "-c", STATUS_AND_NPROC))
    assert b["NoNewPrivs"] == "1" and b["Seccomp"] == "2" and caps_from_hex(b["CapEff"]) <= caps_from_hex(ctl["baseline"]["CapEff"])

    # each start's decision is in the user's log, owned by the user; the cache too, never world-writable
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    tiers = [(x.get("stage"), x.get("tier"), x.get("outcome")) for x in recs]
    assert ("precreate", "restricted", "allowed") in tiers and ("precreate", "baseline", "allowed") in tiers, tiers
    assert ("create", "restricted", "allowed") in tiers, tiers  # the runtime decided too
    entries = list(cache_dir.iterdir())
    assert entries, "no compiled policy cached"
    for p in (log, log.parent, cache_dir, *entries):
        st = p.stat()
        assert st.st_uid == user.uid and not st.st_mode & 0o002, (p, oct(st.st_mode), st.st_uid)

    # the next start reuses the cache: a compile always re-stores it (a new inode)
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in entries}
    t = time.monotonic()
    status(user.podman("run", "--rm", "--network", "none", user.images["restricted"], "sh", "-c", STATUS_AND_NPROC))
    took = time.monotonic() - t
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in entries} == stamp
    t = time.monotonic()
    status(user.podman("run", "--rm", "--network", "none", "--runtime", "runc", user.images["restricted"], "sh", "-c",
                       STATUS_AND_NPROC))
    print(f"\nrootless restricted start, warm cache: {took * 1000:.0f} ms through tiergate (hook + runtime), "
          f"{(time.monotonic() - t) * 1000:.0f} ms on runc with the hook only")

    # an annotation the caller sets is a request, not authority (rootless too): no privileged from it
    a = status(user.podman("run", "--rm", "--network", "none", "--annotation", f"{LABEL}=privileged",
                           user.images["restricted"], "sh", "-c", STATUS_AND_NPROC))
    assert caps_from_hex(a["CapEff"]) <= caps_from_hex(ctl["baseline"]["CapEff"]) and a["NoNewPrivs"] == "1"

    # the pids limit holds without cgroups: isolated (pids_limit 256) cannot fork FORKS processes, nor lift it
    limit = compiled_policy()["tiers"]["isolated"]["pids_limit"]
    assert limit < FORKS
    bomb = user.podman("run", "--rm", "--network", "none", user.images["isolated"], "sh", "-c", FORK_BOMB)
    made = int(bomb.stdout.split("n=")[-1].split()[0]) if "n=" in bomb.stdout else 0
    assert "kept" in bomb.stdout and "all" not in bomb.stdout and 0 < made < limit, (bomb.stdout[-200:], bomb.stderr)
    ctl_bomb = user.podman("run", "--rm", "--network", "none", "--runtime", "runc", "--hooks-dir", str(user.home / "none"),
                           user.images["isolated"], "sh", "-c", FORK_BOMB)
    assert ctl_bomb.stdout.rstrip().endswith("all"), ctl_bomb.stdout[-200:]  # CONTROL: no tiergate, no limit
    print(f"\nisolated (pids_limit {limit} as RLIMIT_NPROC) made {made} of {FORKS} processes; the control all")

    # exec goes through the runtime too
    cid = user.podman("run", "-d", "--network", "none", user.images["restricted"], "sleep", "120",
                      check=True).stdout.strip().splitlines()[-1]
    e = status(user.podman("exec", cid, "sh", "-c", STATUS_AND_NPROC))
    assert caps_from_hex(e["CapEff"]) == RESTRICTED_CAPS and e["NoNewPrivs"] == "1"
    p = user.podman("exec", "--privileged", cid, "true")
    assert p.returncode != 0 and "tiergate: refused" in p.stderr, p.stderr
    user.podman("rm", "--force", "--time", "0", cid)

    user.tiergate("uninstall", "--engine", "podman")
    after = owned_tree(user.home, PODMAN_OWN + (".cache/tiergate", ".local/state/tiergate"))
    # what stays: the decision log and the cache (data, like /var/log), and the dirs above them
    leftover = {k for k in after if k not in before}
    assert leftover <= {".cache", ".local", ".local/state"}, leftover
    assert {k: v for k, v in after.items() if k in before} == {k: v for k, v in before.items() if k in after}
    assert not (user.home / ".config/containers/containers.conf.d").exists()
    assert not (user.home / ".local/libexec").exists()
