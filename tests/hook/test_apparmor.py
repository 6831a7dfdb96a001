"""AppArmor per tier (issue 7): render, compile with the real parser, cache, decide."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from tiergate.host import apparmor
from tiergate.host.apparmor import AppArmorError, decide, ensure_loaded, host_enabled, profile_name, render

INCLUDE_DIR = "/etc/apparmor.d"


def _parser() -> str | None:
    for cand in ("/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"):
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("apparmor_parser")


PARSER = _parser()
needs_parser = pytest.mark.skipif(
    PARSER is None or not os.path.isfile(os.path.join(INCLUDE_DIR, "tunables", "global")),
    reason="apparmor_parser (and /etc/apparmor.d/tunables/global) is not installed",
)


def tier(name="restricted", caps=("CAP_NET_BIND_SERVICE",), readonly=False, mounts=None, **extra):
    t = {
        "name": name,
        "capabilities": list(caps),
        "readonly_rootfs": readonly,
        "writable_mounts": mounts,
        "network": None,
        "apparmor": "prefer",
        "apparmor_profile": f"tiergate-{name}",
    }
    t.update(extra)
    return t


DOCKER_DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip

TIERS = {
    "restricted": tier(),
    "default-with-net-raw": tier("default", DOCKER_DEFAULT_CAPS),
    "empty-caps": tier("locked", ()),
    "readonly-mounts": tier(
        "ro-web", ("CAP_NET_BIND_SERVICE",), readonly=True,
        mounts=["/data", "/var/lib/app/", "/srv/cache@v2/x+y_z-1.0"], tmpfs={"/var/cache/app": "size=8m"},
        network={"name": "web", "egress": "allowlist", "ingress": "published"},
    ),
    "readonly-no-mounts-raw": tier("ro-raw", ("CAP_NET_RAW",), readonly=True, mounts=None),
    "all-caps": tier("wide", ["CAP_" + c.upper() for c in sorted(apparmor._CAPS)]),
}  # fmt: skip

RAW_DENIES = ("deny network inet raw,", "deny network inet6 raw,", "deny network packet,")


def rule_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("# ")]


def compile_profile(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PARSER, "-Q", "-K", "-I", INCLUDE_DIR, str(path)], capture_output=True, text=True, timeout=120
    )


# --- names -----------------------------------------------------------------


def test_profile_name():
    assert profile_name("restricted") == "tiergate-restricted"
    assert profile_name("web-2") == "tiergate-web-2"
    for bad in ("", "Web", "a b", "x}", "x\n", "x\ny", "a/b", "a,b", "ä", None, 3):
        with pytest.raises(ValueError):
            profile_name(bad)


# --- compile with the real parser ------------------------------------------


@needs_parser
@pytest.mark.parametrize("key", sorted(TIERS))
def test_rendered_profile_compiles(key, tmp_path):
    t = TIERS[key]
    path = tmp_path / f"tiergate-{t['name']}"
    path.write_text(render(t))
    proc = compile_profile(path)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower(), proc.stderr
    names = subprocess.run(
        [PARSER, "-Q", "-K", "-N", "-I", INCLUDE_DIR, str(path)], capture_output=True, text=True
    )
    assert names.stdout.split() == [f"tiergate-{t['name']}"]


@needs_parser
def test_parser_rejects_a_broken_profile(tmp_path):
    """The compile tests mean something: -Q -K does report syntax errors."""
    path = tmp_path / "broken"
    path.write_text(render(TIERS["restricted"]).replace("deny mount,", "deny mount"))
    assert compile_profile(path).returncode != 0


# --- rule content ----------------------------------------------------------


@pytest.mark.parametrize("key", sorted(TIERS))
def test_raw_and_packet_denied_iff_no_net_raw(key):
    t = TIERS[key]
    lines = rule_lines(render(t))
    has_raw = "CAP_NET_RAW" in t["capabilities"]
    for deny in RAW_DENIES:
        assert (deny in lines) is (not has_raw), deny
    assert ("network packet," in lines) is has_raw
    for fam in ("network inet,", "network inet6,", "network unix,"):
        assert fam in lines


@pytest.mark.parametrize("key", sorted(TIERS))
def test_fixed_denies_and_peers(key):
    t = TIERS[key]
    name = f"tiergate-{t['name']}"
    text = render(t)
    lines = rule_lines(text)
    assert text.startswith("#") and "#include <tunables/global>" in lines
    assert f"profile {name} flags=(attach_disconnected,mediate_deleted) {{" in lines
    assert "#include <abstractions/base>" in lines
    for rule in (
        "deny mount,", "deny remount,", "deny umount,", "deny pivot_root,",
        "deny @{PROC}/sys/** w,", "deny @{PROC}/sysrq-trigger rwklx,", "deny @{PROC}/kcore rwklx,",
        "deny @{PROC}/* w,", "deny /sys/** wklx,", "deny /sys/kernel/security/** rwklx,",
        "signal (receive) peer=unconfined,",
        f"signal (send,receive) peer={name},",
        f"ptrace (trace,read,tracedby,readby) peer={name},",
        "deny ptrace (trace,read) peer=unconfined,",
    ):  # fmt: skip
        assert rule in lines, rule
    # signals may only be sent to the own profile; ptrace only with the own profile
    sends = [ln for ln in lines if ln.startswith("signal") and "send" in ln]
    assert sends == [f"signal (send,receive) peer={name},"]
    assert [ln for ln in lines if ln.startswith("ptrace")] == [f"ptrace (trace,read,tracedby,readby) peer={name},"]
    assert "{{" not in text
    assert [ln for ln in lines if ln.startswith("profile ")] == [f"profile {name} flags=(attach_disconnected,mediate_deleted) {{"]


def test_capability_rule_lists_only_the_tier_caps():
    lines = rule_lines(render(tier(caps=["CAP_SETUID", "CAP_CHOWN", "CAP_CHOWN"])))
    assert [ln for ln in lines if ln.startswith("capability")] == ["capability chown setuid,"]
    lines = rule_lines(render(tier(caps=[])))
    assert not [ln for ln in lines if ln.startswith("capability")]


def test_file_rules_follow_readonly_rootfs():
    rw = rule_lines(render(tier()))
    assert "file," in rw
    ro = rule_lines(render(TIERS["readonly-mounts"]))
    assert "file," not in ro
    assert not [ln for ln in ro if ln.startswith("/{,**}") and "w" in ln.split()[-1]]
    for path in ("/data", "/var/lib/app", "/srv/cache@v2/x+y_z-1.0", "/tmp", "/var/tmp", "/run", "/dev/shm"):
        assert f"{path}/{{,**}} rwlk," in ro
    assert "/dev/pts/* rw," in ro


def test_tmpfs_destinations_are_writable_on_a_readonly_rootfs():
    t = tier(readonly=True, mounts=["/data"], tmpfs={"/var/cache/nginx": "size=64m"})
    ro = rule_lines(render(t))
    assert "/var/cache/nginx/{,**} rwlk," in ro and "/data/{,**} rwlk," in ro
    with pytest.raises(ValueError):
        render(tier(readonly=True, tmpfs={"/x y": ""}))


def test_render_is_deterministic():
    a = render(tier(caps=["CAP_KILL", "CAP_CHOWN"], readonly=True, mounts=["/b", "/a"]))
    b = render(tier(caps=["CAP_CHOWN", "CAP_KILL"], readonly=True, mounts=["/a", "/b/"]))
    assert a == b


def test_render_takes_the_cached_policys_lazy_tier(tmp_path):
    """What the hook holds is policy/cache.py's view of the tier: the same profile as the plain dict."""
    from helpers import SHIPPED_POLICY, shipped_policy
    from tiergate.policy import cache

    policy = cache.load_compiled(str(SHIPPED_POLICY), str(tmp_path / "cache"))
    for name in ("baseline", "web"):
        assert render(policy["tiers"][name]) == render(shipped_policy()["tiers"][name])


# --- hostile values --------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "web}"}, {"name": "web\n"}, {"name": "web\n  capability sys_admin,\n"},
        {"name": "Web"}, {"name": ""}, {"name": None},
        {"writable_mounts": ["/tmp/a b"]}, {"writable_mounts": ['/tmp/"x"']},
        {"writable_mounts": ["/tmp/x'"]}, {"writable_mounts": ["/tmp/x,\n  file,"]},
        {"writable_mounts": ["/tmp/x\n"]}, {"writable_mounts": ["/tmp/{a,b}"]},
        {"writable_mounts": ["/tmp/**"]}, {"writable_mounts": ["/tmp/x#y"]},
        {"writable_mounts": ["relative"]}, {"writable_mounts": ["/"]},
        {"writable_mounts": ["/a/../etc"]}, {"writable_mounts": ["/a//b"]},
        {"writable_mounts": ["/a/./b"]}, {"writable_mounts": [3]},
        {"writable_mounts": "/data"},
        {"capabilities": ["CAP_BOGUS"]}, {"capabilities": ["chown"]},
        {"capabilities": ["cap_chown"]}, {"capabilities": ["CAP_CHOWN,\n  file"]},
        {"capabilities": "CAP_CHOWN"}, {"readonly_rootfs": "yes"}, {"network": "any"},
        {"tmpfs": {"/run/x\n  file,": ""}}, {"tmpfs": "/run"},
    ],
)  # fmt: skip
def test_hostile_values_are_refused(bad):
    t = tier(readonly=True, mounts=["/data"])
    t.update(bad)
    with pytest.raises(ValueError):
        render(t)


# --- decide ----------------------------------------------------------------


def test_decide_off():
    assert decide(tier(apparmor="off"), True) == (None, "apparmor off for tier restricted")
    assert decide(tier(apparmor="off"), False) == (None, "apparmor off for tier restricted")


def test_decide_without_apparmor():
    assert decide(tier(apparmor="prefer"), False) == (
        None,
        "apparmor unavailable: tier restricted runs without its profile",
    )
    with pytest.raises(AppArmorError) as exc:
        decide(tier(apparmor="require"), False)
    assert str(exc.value) == "tier restricted requires AppArmor, which this host's kernel does not offer"
    assert "\n" not in str(exc.value)


def test_decide_with_apparmor_loads_the_profile():
    loaded = []

    def load(t):
        loaded.append(t["name"])
        return profile_name(t["name"])

    for mode in ("prefer", "require"):
        prof, note = decide(tier(apparmor=mode), True, load=load)
        assert prof == "tiergate-restricted" and "tiergate-restricted" in note
    assert loaded == ["restricted", "restricted"]


def test_decide_when_loading_fails():
    def load(t):
        raise AppArmorError("apparmor_parser could not load tiergate-restricted: boom")

    prof, note = decide(tier(apparmor="prefer"), True, load=load)
    assert prof is None and "boom" in note and "runs without" in note
    with pytest.raises(AppArmorError):
        decide(tier(apparmor="require"), True, load=load)


@pytest.mark.parametrize("mode", [None, "on", "REQUIRE", ""])
def test_decide_refuses_unknown_modes(mode):
    with pytest.raises(ValueError):
        decide(tier(apparmor=mode), False)


# --- host_enabled ----------------------------------------------------------


@pytest.mark.parametrize(
    "flag, securityfs, expected",
    [("Y", True, True), ("N", True, False), ("Y", False, False), (None, False, False)],
)
def test_host_enabled(tmp_path, flag, securityfs, expected):
    if flag is not None:
        (tmp_path / "module/apparmor/parameters").mkdir(parents=True)
        (tmp_path / "module/apparmor/parameters/enabled").write_text(flag + "\n")
    if securityfs:
        (tmp_path / "kernel/security/apparmor").mkdir(parents=True)
    assert host_enabled(str(tmp_path)) is expected


# --- ensure_loaded with a fake parser --------------------------------------


def fake_parser(tmp_path, *, exit_code=0, lists=True):
    """A parser stand-in: records its argv, and "loads" by listing the profile."""
    calls = tmp_path / "calls.log"
    profiles = tmp_path / "profiles"
    profiles.touch()
    script = tmp_path / "apparmor_parser"
    lines = ["#!/bin/sh", f'echo "$@" >> "{calls}"']
    if exit_code:
        lines += ['echo "" >&2', 'echo "AppArmor parser error for x at line 3: boom" >&2',
                  'echo "second line" >&2', f"exit {exit_code}"]  # fmt: skip
    elif lists:
        lines += [f"""sed -n 's/^profile \\([^ ]*\\) .*/\\1 (enforce)/p' "$3" >> "{profiles}" """]
    script.write_text("\n".join(lines) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), calls, profiles


def ncalls(calls):
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_ensure_loaded_caches_by_content(tmp_path):
    parser, calls, profiles = fake_parser(tmp_path)
    cache = tmp_path / "cache"
    t = tier("web")
    kw = {"parser": parser, "profiles_path": str(profiles)}

    assert ensure_loaded(t, str(cache), **kw) == "tiergate-web"
    assert ncalls(calls) == 1
    argv = calls.read_text().split()
    assert argv[:2] == ["-r", "-W"]
    text_file = argv[2]
    assert os.path.dirname(text_file) == str(cache)
    assert os.path.basename(text_file).startswith("tiergate-web.")
    assert len(os.path.basename(text_file).split(".")[1]) == 12
    assert open(text_file).read() == render(t)
    digest = os.path.basename(text_file).split(".")[1]
    assert (cache / "tiergate-web.loaded").read_text().strip() == digest

    # unchanged profile: not reloaded
    assert ensure_loaded(t, str(cache), **kw) == "tiergate-web"
    assert ensure_loaded(dict(t), str(cache), **kw) == "tiergate-web"
    assert ncalls(calls) == 1

    # changed content: reloaded, the old text pruned
    t2 = tier("web", caps=["CAP_NET_BIND_SERVICE", "CAP_CHOWN"])
    assert ensure_loaded(t2, str(cache), **kw) == "tiergate-web"
    assert ncalls(calls) == 2
    new_file = calls.read_text().splitlines()[1].split()[2]
    assert new_file != text_file and not os.path.exists(text_file)
    assert ensure_loaded(t2, str(cache), **kw) == "tiergate-web"
    assert ncalls(calls) == 2

    # kernel lost it (reboot): the marker alone does not skip the load
    profiles.write_text("")
    assert ensure_loaded(t2, str(cache), **kw) == "tiergate-web"
    assert ncalls(calls) == 3


def test_ensure_loaded_reports_parser_failure_in_one_line(tmp_path):
    parser, calls, profiles = fake_parser(tmp_path, exit_code=1)
    cache = tmp_path / "cache"
    with pytest.raises(AppArmorError) as exc:
        ensure_loaded(tier("web"), str(cache), parser=parser, profiles_path=str(profiles))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "tiergate-web" in msg and "boom" in msg and "second line" not in msg
    assert not (cache / "tiergate-web.loaded").exists()
    # a retry runs the parser again
    with pytest.raises(AppArmorError):
        ensure_loaded(tier("web"), str(cache), parser=parser, profiles_path=str(profiles))
    assert ncalls(calls) == 2


def test_ensure_loaded_checks_the_kernel_lists_it(tmp_path):
    parser, calls, profiles = fake_parser(tmp_path, lists=False)
    with pytest.raises(AppArmorError, match="does not list it"):
        ensure_loaded(tier("web"), str(tmp_path / "cache"), parser=parser, profiles_path=str(profiles))
    assert ncalls(calls) == 1
    assert not (tmp_path / "cache" / "tiergate-web.loaded").exists()


def test_ensure_loaded_missing_parser(tmp_path):
    with pytest.raises(AppArmorError, match="apparmor_parser"):
        ensure_loaded(
            tier("web"), str(tmp_path / "cache"),
            parser=str(tmp_path / "nope"), profiles_path=str(tmp_path / "profiles"),
        )  # fmt: skip


def test_ensure_loaded_refuses_hostile_tier_before_touching_disk(tmp_path):
    parser, calls, profiles = fake_parser(tmp_path)
    with pytest.raises(ValueError):
        ensure_loaded(tier("x}"), str(tmp_path / "cache"), parser=parser, profiles_path=str(profiles))
    assert ncalls(calls) == 0 and not (tmp_path / "cache").exists()


def test_default_parser_path_is_absolute():
    if PARSER is None:
        pytest.skip("apparmor_parser is not installed")
    assert apparmor._find_parser() in apparmor.PARSER_CANDIDATES


def test_import_is_cheap():
    """Importing the module pulls in none of the heavier modules (hot path)."""
    code = (
        "import sys; import tiergate.core.errors; before = set(sys.modules); "
        "import tiergate.host.apparmor; "
        "heavy = ('subprocess', 'hashlib', 'fcntl', 'importlib.resources', 'attr', 'cattrs'); "
        "print(sorted(m for m in heavy if m in sys.modules and m not in before))"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- real load and enforcement (only where the kernel has AppArmor) --------

PROBE = r"""
import errno, json, socket, sys
results = {}
def attempt(key, fn):
    try:
        fn()
        results[key] = "allowed"
    except OSError as e:
        results[key] = errno.errorcode.get(e.errno, str(e.errno))
attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close())
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
attempt("proc_sys", lambda: open("/proc/sys/kernel/hostname", "a").close())
attempt("securityfs", lambda: open("/sys/kernel/security/apparmor/profiles").close())
attempt("rootfs_write", lambda: open(sys.argv[1], "a").close())
attempt("mount_write", lambda: open(sys.argv[2], "a").close())
print(json.dumps(results))
"""


def _confined(profile):
    def preexec():
        for attr in ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"):
            try:
                with open(attr, "w") as f:
                    f.write(f"exec {profile}")
                return
            except OSError:
                continue
        raise OSError("cannot set the exec profile")

    return preexec


def test_loaded_profile_is_enforced(tmp_path):
    if not host_enabled():
        print("AppArmor is not enabled in this kernel")
        pytest.skip("AppArmor is not enabled in this kernel")
    if PARSER is None:
        pytest.skip("apparmor_parser is not installed")
    if os.geteuid() != 0:
        pytest.skip("loading AppArmor profiles needs root")
    # a directory outside the default writable paths (/tmp is one of them)
    base = tmp_path
    if str(tmp_path).startswith(("/tmp/", "/var/tmp/", "/run/")):
        base = pathlib.Path(tempfile.mkdtemp(prefix="tiergate-aa-", dir="/var/lib"))
    try:
        (base / "rw").mkdir()
        t = tier("aatest-" + str(os.getpid()), caps=[], readonly=True, mounts=[str(base / "rw")])
        name = ensure_loaded(t, str(tmp_path / "cache"))
        assert name == profile_name(t["name"])
        try:
            out = subprocess.run(
                [sys.executable, "-I", "-S", "-c", PROBE, str(base / "ro-file"), str(base / "rw" / "f")],
                preexec_fn=_confined(name), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            res = json.loads(out.stdout)
            assert res["raw"] == "EACCES"
            assert res["udp"] == "allowed"
            assert res["proc_sys"] == "EACCES"
            assert res["securityfs"] == "EACCES"
            assert res["rootfs_write"] == "EACCES"
            assert res["mount_write"] == "allowed"
        finally:
            path = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(name + ".")
                    and len(p.name) == len(name) + 13][0]  # fmt: skip
            subprocess.run([PARSER, "-R", str(path)], capture_output=True)
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)
