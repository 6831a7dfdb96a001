"""Workload roles (issue 8) proven on real podman containers, each against a control.

Every role image is the same busybox-static image (plus /www and a static
probe binary, bin/tgprobe, built here with gcc -static) labelled with the
role; controls are that image without a label (tier baseline: the engine's
default shape) or labelled privileged (tiergate leaves it untouched). All
containers sit on a podman macvlan network whose peers live in a test netns
(roles_env.py), with tiergate installed with the shipped policy whose
documentation CIDRs are replaced by the test peers' addresses.

A "blocked" result only counts because the control reached the same peer,
wrote the same file or made the same syscall in the same setting.
"""

from __future__ import annotations

import os

import pytest

from roles_env import RoleEnv, refused, role_env_fixture, wget

pytestmark = pytest.mark.podman

ROLES = RoleEnv.ROLES
BASE = {"web": "restricted", "payment-worker": "restricted", "image-processor": "isolated",
        "node-worker": "restricted", "queue-worker": "restricted", "scheduler": "restricted",
        "database": "restricted"}


env = role_env_fixture("test_roles")


# --------------------------------------------------------------------------- policy shape

def test_role_tiers_extend_a_base_and_are_no_weaker(tmp_path):
    """Static: each role extends its base tier, is at least as strict, and compiles."""
    from tiergate.policy.compile import compile_file
    from roles_env import SHIPPED_POLICY

    shipped = compile_file(SHIPPED_POLICY)
    for role in ROLES:
        tier = shipped["tiers"][role]
        assert tier["extends"] == BASE[role], role
        assert tier["strictness"] >= shipped["tiers"][BASE[role]]["strictness"], role
        assert set(tier["capabilities"]) <= set(shipped["tiers"][BASE[role]]["capabilities"]), role
        assert tier["description"], role
    # the documentation ranges are what the operator edits
    assert shipped["tiers"]["web"]["network"]["allow"][0]["cidr"] == "192.0.2.0/24"


# --------------------------------------------------------------------------- web

def test_web(env):
    p = env.peers
    probes = {
        "api 443": wget(f"http://{p.api}:443/"),
        "api v6 443": wget(f"http://[{p.api6}]:443/"),
        "api other port 8080": wget(f"http://{p.api}:8080/"),
        "other peer 443": wget(f"http://{p.other}:443/"),
        "metadata 169.254.169.254": wget(f"http://{p.metadata}/"),
        "raw socket": "/bin/tgprobe raw",
        "packet socket": "/bin/tgprobe packet",
        "mount tmpfs": "mount -t tmpfs none /mnt",
    }
    serve = "httpd -p 80 -h /www && httpd -p 8081 -h /www"
    ip = p.next_ip()
    got = env.serving("web", ip, serve, probes, {"exposed 80": f"http://{ip}:80/",
                                                  "unexposed 8081": f"http://{ip}:8081/"})
    print("\nweb:", got)
    cip = p.next_ip()
    control = env.serving("control-web", cip, serve, probes, {"exposed 80": f"http://{cip}:80/",
                                                               "unexposed 8081": f"http://{cip}:8081/"})
    print("control (tier privileged: untouched):", control)
    assert env.tier_granted("web") == {"web"}
    assert got == {"api 443": True, "api v6 443": True, "api other port 8080": False, "other peer 443": False,
                   "metadata 169.254.169.254": False, "raw socket": False, "packet socket": False,
                   "mount tmpfs": False, "in exposed 80": True, "in unexposed 8081": False}
    # podman's default here has neither CAP_NET_RAW nor CAP_SYS_ADMIN: the control for raw
    # sockets and mounts is the untouched (privileged-tier) image given them
    assert control == dict.fromkeys(got, True) | {"raw socket": False, "packet socket": False, "mount tmpfs": False}
    caps_ctl = env.run("privileged", "/bin/sh", "-c", "/bin/tgprobe raw; /bin/tgprobe packet; "
                       "mount -t tmpfs none /mnt && echo MOUNTED", args=["--cap-add", "NET_RAW,SYS_ADMIN"])
    print("raw/packet/mount control (privileged + NET_RAW,SYS_ADMIN):", caps_ctl.stdout)
    assert "raw ok" in caps_ctl.stdout and "packet ok" in caps_ctl.stdout and "MOUNTED" in caps_ctl.stdout
    # asking for more: NET_RAW (an engine default elsewhere) is clamped away, SYS_ADMIN and
    # SYS_MODULE (mounts, module loading) are refused
    clamped = env.run("web", "/bin/tgprobe", "raw", args=[*env.net_args(), "--cap-add", "NET_RAW"])
    assert clamped.stdout.strip() == "raw errno=EPERM", (clamped.stdout, clamped.stderr[-300:])
    for flags in (["--cap-add", "SYS_ADMIN"], ["--cap-add", "SYS_MODULE"]):
        proc = env.run("web", "true", args=[*env.net_args(), *flags])
        assert refused(proc), (flags, proc.returncode, proc.stderr[-300:])


# --------------------------------------------------------------------------- payment-worker

# rootfs paths root may write without CAP_DAC_OVERRIDE (root-owned 0755 and 1777 dirs), then
# everything podman mounts writable even under root.readonly
WRITE_PATHS = ("/www/new", "/var/tmp/new", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
               "/run/.containerenv", "/dev/shm/new", "/dev/mqueue/new")
WRITE_SH = "; ".join(f'if touch {path} 2>/tmp/e; then echo "W {path} ok"; else echo "W {path} $(cat /tmp/e)"; fi'
                     for path in ("/tmp/new", *WRITE_PATHS))


def writes(env, image: str) -> dict[str, str]:
    proc = env.run(image, "/bin/sh", "-c", WRITE_SH, args=env.net_args())
    out = {line.split()[1]: line.split(None, 2)[2] for line in proc.stdout.splitlines() if line.startswith("W ")}
    assert len(out) == len(WRITE_PATHS) + 1, (proc.stdout, proc.stderr)
    return out


def test_payment_worker(env):
    p = env.peers
    probes = {"psp 443": wget(f"http://{p.psp}:443/"), "api 443": wget(f"http://{p.api}:443/"),
              "metadata": wget(f"http://{p.metadata}/")}
    got = env.script("payment-worker", probes, args=env.net_args())
    control = env.script("privileged", probes, args=env.net_args())
    print("\npayment-worker:", got, "\ncontrol:", control)
    assert env.tier_granted("payment-worker") == {"payment-worker"}
    assert control == dict.fromkeys(probes, True)
    assert got == {"psp 443": True, "api 443": False, "metadata": False}
    # writes: the same capabilities without the read-only rules (tier restricted) can write everywhere
    wrote, ctl = writes(env, "payment-worker"), writes(env, "restricted")
    print("writes:", wrote, "\ncontrol (restricted):", ctl)
    assert ctl == dict.fromkeys(ctl, "ok")
    assert wrote["/tmp/new"] == "ok"  # the policy's named small tmpfs
    for path in WRITE_PATHS:
        assert "Read-only file system" in wrote[path], (path, wrote[path])
    # the named tmpfs is small and noexec
    proc = env.run("payment-worker", "/bin/sh", "-c",
                   "grep ' /tmp ' /proc/mounts; cp /bin/busybox /tmp/bb && /tmp/bb true && echo EXEC",
                   args=env.net_args())
    assert "noexec" in proc.stdout and "size=16384k" in proc.stdout and "EXEC" not in proc.stdout, proc.stdout


def test_payment_worker_dev_not_writable(env):
    proc = env.run("payment-worker", "/bin/sh", "-c", "echo x > /dev/null && echo NULL-OK; touch /dev/x",
                   args=env.net_args())
    assert "NULL-OK" in proc.stdout
    assert "Read-only file system" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- image-processor

def test_image_processor(env):
    p = env.peers
    whats = ["inet", "inet6", "netlink", "unix", "uring"]
    got = env.probe_binary("image-processor", whats, args=env.net_args())
    control = env.probe_binary("unlabelled", whats, args=env.net_args())
    uring_ctl = env.probe_binary("privileged", ["uring"], args=["--security-opt", "seccomp=unconfined"])
    print("\nimage-processor:", got, "\ncontrol:", control, "\nio_uring control (unconfined):", uring_ctl)
    assert env.tier_granted("image-processor") == {"image-processor"}
    assert got["unix"] == "ok"
    assert got["inet"] == got["inet6"] == got["netlink"] == "errno=EPERM"
    assert got["uring"] in ("errno=ENOSYS", "errno=EPERM")
    assert control["inet"] == control["inet6"] == control["netlink"] == control["unix"] == "ok"
    assert uring_ctl["uring"] == "ok"
    # busybox: writes work; nc and wget fail at socket() itself (not a timeout at the firewall)
    cmd = (f"echo data > /www/out.bin && echo data > /tmp/out.bin && echo WROTE; nc {p.api} 443 </dev/null; echo NC=$?; "
           f"timeout 3 wget -q -O - http://{p.api}:443/; echo WGET=$?")
    proc = env.run("image-processor", "/bin/sh", "-c", cmd, args=env.net_args())
    ctl = env.run("unlabelled", "/bin/sh", "-c", cmd, args=env.net_args())
    print("busybox:", proc.stdout, proc.stderr, "\ncontrol:", ctl.stdout)
    assert "WROTE" in proc.stdout and "NC=1" in proc.stdout and "WGET=1" in proc.stdout
    assert proc.stderr.count("Operation not permitted") >= 2, proc.stderr
    assert "WROTE" in ctl.stdout and "NC=0" in ctl.stdout and "WGET=0" in ctl.stdout


# --------------------------------------------------------------------------- node-worker

def test_node_worker(env):
    def one(image: str, what: str) -> str:
        return env.probe_binary(image, [what])[what]

    got = {w: one("node-worker", w) for w in ("thread", "fork")}
    control = {w: one("unlabelled", w) for w in ("thread", "fork")}
    sh_fork = env.run("node-worker", "/bin/sh", "-c", "true & wait; echo FORKED")
    sh_ctl = env.run("unlabelled", "/bin/sh", "-c", "true & wait; echo FORKED")
    print("\nnode-worker:", got, sh_fork.returncode, sh_fork.stderr.strip(), "\ncontrol:", control,
          sh_ctl.stdout.strip())
    assert env.tier_granted("node-worker") == {"node-worker"}
    assert got == {"thread": "ok", "fork": "errno=EPERM"}
    assert control == {"thread": "ok", "fork": "ok"}
    assert "FORKED" not in sh_fork.stdout and "can't fork" in sh_fork.stderr
    assert "FORKED" in sh_ctl.stdout


# --------------------------------------------------------------------------- queue-worker

def test_queue_worker(env):
    p = env.peers
    probes = {"broker 5672": wget(f"http://{p.broker}:5672/"), "broker other port 443": wget(f"http://{p.broker}:443/"),
              "api 443": wget(f"http://{p.api}:443/"), "metadata": wget(f"http://{p.metadata}/")}
    got = env.script("queue-worker", probes, args=env.net_args())
    control = env.script("privileged", probes, args=env.net_args())
    print("\nqueue-worker:", got, "\ncontrol:", control)
    assert env.tier_granted("queue-worker") == {"queue-worker"}
    assert control == dict.fromkeys(probes, True)
    assert got == dict.fromkeys(probes, False) | {"broker 5672": True}

    me = str(os.getpid())
    ps = env.run("queue-worker", "ps", "-o", "pid,comm", args=env.net_args())
    pids = [line.split()[0] for line in ps.stdout.splitlines()[1:]]
    print("ps in queue-worker:", ps.stdout)
    assert ps.returncode == 0 and pids == ["1"], ps.stdout  # only ps itself, as pid 1
    host_ps = env.run("privileged", "ps", "-o", "pid,comm", args=["--pid", "host"])
    assert me in [line.split()[0] for line in host_ps.stdout.splitlines()[1:]]  # control: host pids visible
    proc = env.run("queue-worker", "true", args=[*env.net_args(), "--pid", "host"])
    assert refused(proc), proc.stderr[-300:]


# --------------------------------------------------------------------------- scheduler

def test_scheduler(env):
    p = env.peers
    probes = {"api 443": wget(f"http://{p.api}:443/"), "api 80": wget(f"http://{p.api}:80/"),
              "broker 5672": wget(f"http://{p.broker}:5672/"), "psp 443": wget(f"http://{p.psp}:443/"),
              "api v6": wget(f"http://[{p.api6}]:443/"), "metadata": wget(f"http://{p.metadata}/"),
              "loopback": wget("http://127.0.0.1:8080/")}
    prologue = "httpd -p 127.0.0.1:8080 -h /www"
    got = env.script("scheduler", probes, args=env.net_args(), prologue=prologue)
    control = env.script("privileged", probes, args=env.net_args(), prologue=prologue)
    print("\nscheduler:", got, "\ncontrol:", control)
    assert env.tier_granted("scheduler") == {"scheduler"}
    assert control == dict.fromkeys(probes, True)
    assert got == dict.fromkeys(probes, False) | {"loopback": True}


# --------------------------------------------------------------------------- database

def test_database(env):
    p = env.peers
    probes = {"api 443": wget(f"http://{p.api}:443/"), "api 80": wget(f"http://{p.api}:80/"),
              "metadata": wget(f"http://{p.metadata}/")}
    serve = "httpd -p 5432 -h /www && httpd -p 8081 -h /www"
    ip, cip = p.next_ip(), p.next_ip()
    got = env.serving("database", ip, serve, probes,
                      {"5432 (EXPOSE)": f"http://{ip}:5432/", "8081": f"http://{ip}:8081/"})
    control = env.serving("control-db", cip, serve, probes,
                          {"5432 (EXPOSE)": f"http://{cip}:5432/", "8081": f"http://{cip}:8081/"})
    print("\ndatabase:", got, "\ncontrol:", control)
    assert env.tier_granted("database") == {"database"}
    assert control == dict.fromkeys(control, True)
    assert got == dict.fromkeys(got, False) | {"in 5432 (EXPOSE)": True}
