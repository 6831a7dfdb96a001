"""`tiergate doctor` and tiergate/cli/probes.py probes, against fixture files (no root needed)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tiergate.cli import main as cli, probes as host
from tiergate.cli import doctor
from tiergate.core.names import configs_dir
from tiergate.engines import front

MOUNTS_HYBRID = ("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
                 "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\nproc /proc proc rw 0 0\n")


@pytest.mark.parametrize("text,mode", [
    (MOUNTS_HYBRID, "hybrid"), ("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", "unified"),
    ("cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n", "legacy"), ("proc /proc proc rw 0 0\n", "none")])
def test_cgroup_mode(text, mode, tmp_path):
    assert host.cgroup_mode(text) == mode
    (tmp_path / "m").write_text(text)
    c = host.check_cgroups(str(tmp_path / "m"))
    assert c.status == {"unified": "ok", "hybrid": "warn", "legacy": "warn", "none": "fail"}[mode]


def test_seccomp_check(tmp_path):
    st = tmp_path / "status"
    st.write_text("Name:\tx\nSeccomp:\t0\n")
    av = tmp_path / "avail"
    av.write_text("kill_process errno log allow\n")
    assert host.check_seccomp(str(st), str(av), load=lambda: 0).status == "ok"
    assert host.check_seccomp(str(st), str(av), load=lambda: 7).status == "fail"
    av.write_text("kill_process errno allow\n")
    assert host.check_seccomp(str(st), str(av), load=lambda: 0).status == "warn"
    st.write_text("Name:\tx\n")
    c = host.check_seccomp(str(st), str(av), load=lambda: 0)
    assert c.status == "fail" and "CONFIG_SECCOMP" in c.detail


def test_seccomp_real_probe_in_a_child():
    # unprivileged is fine: libseccomp sets no_new_privs in the child first
    assert host._load_probe_filter() == 0
    assert os.getpgid(0) > 0  # the parent is untouched


def test_apparmor_check(tmp_path):
    assert host.check_apparmor(str(tmp_path)).status == "warn"
    assert host.check_apparmor(str(tmp_path), required=True).status == "fail"
    assert host.check_apparmor(str(tmp_path), preferred=False).status == "ok"
    (tmp_path / "module/apparmor/parameters").mkdir(parents=True)
    (tmp_path / "module/apparmor/parameters/enabled").write_text("Y\n")
    (tmp_path / "kernel/security/apparmor").mkdir(parents=True)
    assert host.check_apparmor(str(tmp_path), required=True).status == "ok"


def test_userns_and_landlock(tmp_path):
    (tmp_path / "sys/user").mkdir(parents=True)
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/user/max_user_namespaces").write_text("0\n")
    assert host.check_userns(str(tmp_path)).status == "warn"
    (tmp_path / "sys/user/max_user_namespaces").write_text("1000\n")
    (tmp_path / "sys/kernel/unprivileged_userns_clone").write_text("0\n")
    c = host.check_userns(str(tmp_path))
    assert c.status == "ok" and "1000" in c.detail and "disabled" in c.detail
    assert host.check_userns(str(tmp_path / "nope")).status == "warn"
    assert host.check_landlock(str(tmp_path), abi=lambda: 4).status == "ok"
    assert "disabled at boot" in host.check_landlock(str(tmp_path), abi=lambda: -95).detail
    assert "ENOSYS" in host.check_landlock(str(tmp_path), abi=lambda: -38).detail
    assert host.landlock_abi() != 0  # a real answer either way


def test_engines():
    found = {"podman": "/usr/bin/podman"}
    [c] = host.check_engines(found, version=lambda argv: "podman version 9.9")
    assert c.name == "engine podman" and c.detail == "podman version 9.9 (/usr/bin/podman)"
    assert host.check_engines({})[0].status == "warn"
    assert host._version([sys.executable, "--version"]).startswith("Python 3")
    assert host._version(["/nonexistent/x", "--version"]).startswith("cannot run")


def _hook(d, exe, stages=("precreate",)):
    d.mkdir(parents=True, exist_ok=True)
    (d / "99-tiergate-precreate.json").write_text(json.dumps(
        {"version": "1.0.0", "hook": {"path": str(exe), "args": ["tiergate-hook", "precreate"]},
         "when": {"always": True}, "stages": list(stages)}))


def _script(path, first_line, mode=0o755):
    path.write_text(first_line + "\nprint('hi')\n")
    path.chmod(mode)
    return path


def test_launcher_interpreter(tmp_path):
    real = os.path.realpath(sys.executable)
    assert host.launcher_interpreter(str(_script(tmp_path / "a", f"#!{real} -IS")))[0] == "ok"
    shim = _script(tmp_path / "python-shim", "#!/bin/sh")
    assert host.launcher_interpreter(str(_script(tmp_path / "b", f"#!{shim}")))[0] == "warn"
    assert host.launcher_interpreter(str(_script(tmp_path / "c", "#!/nonexistent/python3")))[0] == "fail"
    assert host.launcher_interpreter(str(_script(tmp_path / "d", "#!python3")))[0] == "fail"
    assert host.launcher_interpreter(str(_script(tmp_path / "e", "#!/usr/bin/env python3")))[0] == "warn"
    assert host.launcher_interpreter(str(_script(tmp_path / "f", f"#!{real}", 0o644)))[0] == "fail"
    assert host.launcher_interpreter(real)[0] == "ok"  # a native binary
    assert host.launcher_interpreter(str(tmp_path / "missing"))[0] == "fail"


def test_podman_registration(tmp_path):
    real = os.path.realpath(sys.executable)
    d = tmp_path / "hooks.d"
    c = host.check_podman_registration([str(d)], "test")
    assert c.status == "warn" and "not registered" in c.detail
    exe = _script(tmp_path / "tiergate-hook", f"#!{real} -IS")
    _hook(d, exe)
    (d / "other.json").write_text('{"version": "1.0.0", "hook": {"path": "/bin/true"}, "stages": ["prestart"]}')
    (d / "broken.json").write_text("{")
    c = host.check_podman_registration([str(d)], "test")
    assert c.status == "ok" and "(precreate)" in c.detail and real in c.detail
    # a launcher written by `tiergate install` whose package symlinks dangle
    exe.write_text(f"#!{real} -IS\n# written by tiergate install\nimport sys\n"
                   f"sys.path.insert(0, {str(tmp_path / 'lib')!r})\n")
    c = host.check_podman_registration([str(d)], "test")
    assert c.status == "fail" and "install again" in c.detail
    _hook(d, tmp_path / "gone")
    assert host.check_podman_registration([str(d)], "test").status == "fail"
    _hook(d, _script(tmp_path / "tiergate-verify", f"#!{real}"), stages=("prestart",))
    assert host.check_podman_registration([str(d)], "test").status == "warn"  # prestart alone hardens nothing


def test_real_install_is_registered(tmp_path):
    from tiergate.engines import podman

    podman.install(tmp_path / "hooks", tmp_path / "bin", [], False, say=lambda *a: None)
    c = host.check_podman_registration([str(tmp_path / "hooks")], "test")
    assert c.status == "ok", c.detail
    assert os.path.realpath(sys.executable) in c.detail
    current = tmp_path / "bin" / "lib" / "current"  # the release the launcher pins, gone
    current.unlink()
    current.symlink_to("releases/gone")
    c = host.check_podman_registration([str(tmp_path / "hooks")], "test")
    assert c.status == "fail" and f"{current}/tiergate/hook is missing" in c.detail, c.detail


def test_hooks_dirs_from_containers_conf(tmp_path):
    a, b = tmp_path / "a.conf", tmp_path / "b.conf"
    a.write_text('[engine]\nhooks_dir = ["/x/hooks"]\n')
    b.write_text('[engine]\nruntime = "runc"\n')
    assert host.podman_hooks_dirs((str(a), str(b)), env={}) == (["/x/hooks"], f"hooks_dir in {a}")
    assert host.podman_hooks_dirs((str(b),), env={})[0] == list(host.PODMAN_DEFAULT_HOOKS_DIRS)
    assert host.podman_hooks_dirs((str(b),), env={"CONTAINERS_CONF": str(a)})[0] == ["/x/hooks"]


def test_docker_registration(tmp_path):
    f = tmp_path / "daemon.json"
    assert host.check_docker_registration(str(f)).status == "warn"
    f.write_text("{")
    assert host.check_docker_registration(str(f)).status == "fail"
    f.write_text(json.dumps({"runtimes": {"tiergate": {"path": sys.executable}}, "default-runtime": "tiergate"}))
    c = host.check_docker_registration(str(f))
    assert c.status == "ok" and "--runtime {runc,io.containerd.runc.v2,io.containerd.runtime.v1.linux} still bypasses" in c.detail
    f.write_text(json.dumps({"runtimes": {"tiergate": {"path": sys.executable}}}))
    c = host.check_docker_registration(str(f))
    assert c.status == "warn" and "--runtime tiergate" in c.detail
    f.write_text(json.dumps({"runtimes": {"tiergate": {"path": "/nonexistent/tiergate-runtime"}}}))
    c = host.check_docker_registration(str(f))
    assert c.status == "fail" and "/nonexistent/tiergate-runtime is MISSING" in c.detail


def test_nftables_missing(tmp_path):
    c = host.check_nftables(str(tmp_path / "nft"), needed=True)
    assert c.status == "fail" and "not found" in c.detail
    assert host.check_nftables(str(tmp_path / "nft"), needed=False).status == "warn"


def test_policy_check(tmp_path):
    c, compiled = host.check_policy()
    assert c.status == "ok" and compiled["tiers"]
    bad = tmp_path / "p.toml"
    bad.write_text("version = 1\n[tiers.x]\nstrictness = 'no'\n")
    c, compiled = host.check_policy(str(bad))
    assert c.status == "fail" and compiled is None and str(bad) in c.detail


def _fake_gather(statuses):
    return lambda policy, dirs, **_: [host.Check(f"c{i}", s, f"detail {i}") for i, s in enumerate(statuses)]


@pytest.mark.parametrize("statuses,rc", [(["ok", "warn"], 0), (["ok", "fail", "warn"], 1)])
def test_doctor_exit_and_output(monkeypatch, capsys, statuses, rc):
    monkeypatch.setattr(host, "gather", _fake_gather(statuses))
    assert cli.main(["doctor"]) == rc
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert "\033[" not in out
    assert ("cannot enforce" in out) == (rc == 1)
    assert cli.main(["doctor", "--json"]) == rc
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is (rc == 0) and [c["status"] for c in doc["checks"]] == statuses


def test_doctor_colours_only_on_a_tty():
    checks = [host.Check("a", "ok", "x"), host.Check("b", "fail", "y")]
    assert "\033[31mfail\033[0m" in doctor.render(checks, colour=True)
    assert "\033[" not in doctor.render(checks, colour=False)


@pytest.mark.skipif(not shutil.which("podman") and not os.path.exists("/usr/sbin/nft"), reason="bare host")
def test_gather_runs_here(monkeypatch, tmp_path):
    checks = host.gather(None, [str(tmp_path)])
    names = [c.name for c in checks]
    assert names[:6] == ["seccomp", "nftables", "apparmor", "user namespaces", "landlock", "cgroups"]
    assert "policy" in names and "podman hook" in names
    assert all(c.status in ("ok", "warn", "fail") and c.detail for c in checks)


def test_podman_engine_side(tmp_path):
    """From podman's own account (the runtime `podman info` reports, the confs it merged): red when
    our hook sits only where podman does not read; warn for the hook alone; ok for hook + runtime."""
    from tiergate.engines import podman, podman_runtime

    read, stray = tmp_path / "read", tmp_path / "etc-hooks"
    conf = tmp_path / "containers.conf"
    conf.write_text(f'[engine]\nhooks_dir = ["{read}"]\n')
    crun = {"host": {"ociRuntime": {"name": "crun", "path": "/usr/bin/crun"}}}
    quiet = {"say": lambda *a: None}

    def check(info):
        return host.check_podman_engine((info, [str(conf)], ""), stray_dirs=(str(stray),))

    assert check(crun).status == "warn"  # nothing registered
    podman.install(stray, tmp_path / "bin", [], False, **quiet)
    c = check(crun)
    assert c.status == "fail" and "NOT read by podman" in c.detail and str(stray) in c.detail
    podman.install(read, tmp_path / "bin", [], False, **quiet)
    c = check(crun)
    assert c.status == "warn" and "podman exec is not hardened" in c.detail
    exe = podman_runtime.install(tmp_path / "conf.d", tmp_path / "bin", default=True, **quiet)
    ours = {"host": {"ociRuntime": {"name": "tiergate", "path": str(exe)}}}
    c = check(ours)
    assert c.status == "ok" and "exec hardened" in c.detail
    (tmp_path / "bin" / "tiergate-hook").unlink()  # podman would skip the hook: a broken install is red
    assert check(ours).status == "fail"
    assert host.check_podman_engine((None, [], "podman info failed: x")).status == "warn"


def test_hook_json_has_a_timeout(tmp_path):
    from tiergate.engines import podman

    doc = json.loads(podman.hook_json(tmp_path / "x", "precreate", []))
    assert doc["hook"]["timeout"] == podman.HOOK_TIMEOUT and 0 < podman.HOOK_TIMEOUT <= 30


def test_hooks_dirs_read_follows_podman(tmp_path):
    from tiergate.engines import podman

    assert podman.hooks_dirs_read([])[0] == ["/usr/share/containers/oci/hooks.d"]  # not /etc/containers/oci/hooks.d
    a, d = tmp_path / "a.conf", tmp_path / "a.conf.d"
    a.write_text('[engine]\nhooks_dir = ["/x"]\n')
    d.mkdir()
    (d / "50-b.conf").write_text('[engine]\nhooks_dir = ["/y", "/z"]\n')
    (d / "99-tiergate.conf").write_text('[engine]\nhooks_dir = ["/ours"]\n')
    confs = [str(a), str(d / "50-b.conf"), str(d / "99-tiergate.conf")]
    assert podman.hooks_dirs_read(confs)[0] == ["/ours"]
    assert podman.hooks_dirs_read(confs, skip="99-tiergate.conf") == (["/y", "/z"], f"hooks_dir in {d / '50-b.conf'}")
    assert podman.containers_confs(env={"CONTAINERS_CONF": str(a)}) == [str(a)]


def test_two_hooks_dirs_share_a_program_until_the_last_uninstall(tmp_path):
    """Uninstalling one hooks dir keeps the program another still runs; doctor names a missing program."""
    from tiergate.engines import podman

    quiet = {"say": lambda *a: None}
    h1, h2, bin_dir = tmp_path / "h1", tmp_path / "h2", tmp_path / "bin"
    podman.install(h1, bin_dir, [], False, **quiet)
    podman.install(h2, bin_dir, [], False, **quiet)
    podman.uninstall([h1], bin_dir, **quiet)
    assert (bin_dir / "tiergate-hook").exists() and not (h1 / podman.HOOK_FILES["precreate"]).exists()
    assert host.check_podman_registration([str(h2)], "test").status == "ok"
    podman.uninstall([h2], bin_dir, **quiet)
    assert not bin_dir.exists()  # the last one out removes everything install made
    # a registration whose program is gone (removed by hand, or by an older uninstall): fail, said plainly
    podman.install(h2, bin_dir, [], False, **quiet)
    (bin_dir / "tiergate-hook").unlink()
    c = host.check_podman_registration([str(h2)], "test")
    assert c.status == "fail" and "MISSING" in c.detail and "no tiergate hook" in c.detail


def _registered(tmp_path, policy, cache_dir, log):
    hooks = tmp_path / "hooks.d"
    hooks.mkdir(exist_ok=True)
    (hooks / "tiergate.json").write_text(json.dumps({"version": "1.0.0", "stages": ["precreate"], "when": {"always": True},
        "hook": {"path": "/opt/tiergate/tiergate-hook", "args": ["tiergate-hook", "precreate", "--policy", str(policy),
                 f"--cache-dir={cache_dir}", "--log", str(log)]}}))
    return str(hooks)


def _by_name(checks):
    return {c.name: c for c in checks}


def test_doctor_checks_what_the_registered_hook_uses(tmp_path, monkeypatch):
    """A broken save of the hook's policy turns doctor red with file:line and what starts do meanwhile,
    though the CLI's own policy is fine."""
    from tiergate.policy import cache

    policy = tmp_path / "etc" / "policy.toml"
    policy.parent.mkdir()
    shutil.copy(cache.policy_path(), policy)
    cache_dir, log = tmp_path / "cache", tmp_path / "log" / "d.jsonl"
    hooks = _registered(tmp_path, policy, cache_dir, log)
    assert host.registrations([hooks], str(tmp_path / "no-daemon.json")) == [
        (f"{hooks}/tiergate.json", {"policy": str(policy), "cache_dir": str(cache_dir), "log": str(log),
                                    "launcher": "/opt/tiergate/tiergate-hook"})]
    (where, settings), = host.registrations([hooks], str(tmp_path / "no-daemon.json"))
    settings.pop("launcher")
    assert [c.status for c in host.check_used_state(where, settings)] == ["ok", "ok", "ok"]
    cache.load_compiled(str(policy), str(cache_dir))
    policy.write_text("version = 1\n[tiers.a\n")
    c = _by_name(host.check_used_state(where, settings))
    assert c["policy in use"].status == "fail"
    assert f"{policy}:2: invalid TOML" in c["policy in use"].detail and "last good policy" in c["policy in use"].detail
    policy.chmod(0o666)
    c = _by_name(host.check_used_state(where, settings))
    assert c["policy in use"].status == "fail" and "writable by group or others" in c["policy in use"].detail
    policy.chmod(0o644)
    cache_dir.chmod(0o777)
    c = _by_name(host.check_used_state(where, settings))
    assert c["policy cache"].status == "fail" and "every start is refused" in c["policy cache"].detail


def test_doctor_fails_journal_without_journald(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERGATE_JOURNAL_SOCKET", str(tmp_path / "none"))
    c = _by_name(host.check_used_state("x", {"log": "journal", "cache_dir": str(tmp_path / "c")}))
    assert c["decision log"].status == "fail" and "no journald socket" in c["decision log"].detail


def test_audit_network_log_check(tmp_path):
    knob = tmp_path / "nf_log_all_netns"
    knob.write_text("0\n")
    c = host.check_audit_network_log(["web"], str(knob))
    assert c.status == "warn" and "count would-be drops per rule" in c.detail and "web" in c.detail
    knob.write_text("1\n")
    assert host.check_audit_network_log(["web"], str(knob)).status == "ok"


def test_release_check_says_when_an_upgrade_waits_for_install(tmp_path, monkeypatch):
    from tiergate.engines import launcher, podman

    podman.install(tmp_path / "hooks", tmp_path / "bin", [], False, say=lambda *a: None)
    exe = str(tmp_path / "bin" / "tiergate-hook")
    assert host.check_release(exe).status == "ok"
    monkeypatch.setattr(launcher, "release_digest", lambda dirs: "0123456789abcdef")  # `pip install -U` since
    c = host.check_release(exe)
    assert c.status == "warn" and "installed package is 0123456789abcdef" in c.detail
    assert host.check_release(str(tmp_path / "elsewhere" / "tiergate-hook")) is None


def test_doctor_json_says_what_this_tiergate_knows(monkeypatch, capsys):
    """Like `runc features`: the names the product enforces, not a copy (the shim's front, the
    policy compiler and the spec validator are asked, not the table)."""
    from tiergate.core.spec import validate
    from tiergate.engines import shim
    from tiergate.oci.errors import SpecError
    from tiergate.policy.compile import compile_file

    monkeypatch.setattr(host, "gather", _fake_gather(["ok"]))
    assert cli.main(["doctor", "--json"]) == 0
    known = json.loads(capsys.readouterr().out)["known"]
    assert "CAP_SYS_ADMIN" in known["capabilities"] and len(known["capabilities"]) >= 41
    assert set(known["shim_subcommands"]["enforced"]) == set(shim.ENFORCED) >= {"create", "run", "restore", "exec"}
    assert known["label_key"] == compile_file(Path(configs_dir()) / "policy.toml")["label_key"]
    for ns in known["namespaces"]:  # every known namespace passes the validator, an unknown one does not
        validate({"linux": {"namespaces": [{"type": ns}]}})
    with pytest.raises(SpecError):
        validate({"linux": {"namespaces": [{"type": "bogus"}]}})
    for action in known["seccomp"]["actions"]:
        validate({"linux": {"seccomp": {"defaultAction": action}}})
    with pytest.raises(SpecError):
        validate({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_BOGUS"}}})


def test_doctor_reads_containerd_and_podman_runtime_registrations(tmp_path):
    """Each registered shim: the policy, cache and log its own settings file names, and its launchers."""
    from tiergate.engines import containerd, podman_runtime
    from tiergate.policy import cache

    quiet = {"say": lambda *a: None}
    policy = tmp_path / "etc" / "policy.toml"
    policy.parent.mkdir()
    shutil.copy(cache.policy_path(), policy)
    ctr_conf, conf_d = tmp_path / "containerd" / "config.toml", tmp_path / "conf.d"
    ctr_exe = containerd.install(ctr_conf, tmp_path / "bin-ctr", policy=str(policy), cache_dir=str(tmp_path / "c1"),
                                 log=str(tmp_path / "l1" / "d.jsonl"), runtime="/bin/true", **quiet)
    pod_exe = podman_runtime.install(conf_d, tmp_path / "bin-pod", policy=str(tmp_path / "etc" / "broken.toml"),
                                     cache_dir=str(tmp_path / "c2"), runtime="/bin/true", **quiet)
    (tmp_path / "etc" / "broken.toml").write_text("version = 1\n[tiers.a\n")
    confs = [str(conf_d / podman_runtime.DROP_IN)]
    regs = dict(host.registrations([], str(tmp_path / "none.json"), containerd_configs=[str(ctr_conf)],
                                   podman_confs=confs))
    assert regs[f"{ctr_conf} runtime tiergate"]["policy"] == str(policy)
    py = str(tmp_path / "bin-ctr" / "lib" / "tiergate-runtime.py")
    assert front.launcher_of(ctr_exe) == (py if front.compiler() else None)  # with cc the shim is the compiled front
    assert regs[f"{ctr_conf} runtime tiergate"]["launchers"] == [str(ctr_exe), py]
    assert regs[f"{ctr_conf} runtime tiergate"]["warm"] == (str(ctr_exe) if front.compiler() else py)
    assert regs[f"{confs[0]} runtime tiergate"]["cache_dir"] == str(tmp_path / "c2")
    assert str(pod_exe) in regs[f"{confs[0]} runtime tiergate"]["launchers"]
    checks = host.gather(None, [str(tmp_path / "no-hooks")], containerd_configs=[str(ctr_conf)], podman_confs=confs)
    launchers = [c for c in checks if c.name == "launcher"]
    assert [c.status for c in launchers] == ["ok", "ok"], launchers
    used = [c for c in checks if c.name == "policy in use"]
    (ok,) = [c for c in used if str(ctr_conf) in c.detail]
    (bad,) = [c for c in used if confs[0] in c.detail]
    assert ok.status == "ok" and bad.status == "fail" and "broken.toml:2: invalid TOML" in bad.detail
    (tmp_path / "bin-ctr" / "lib" / "tiergate-runtime.py").unlink()  # what containerd would run is gone: red
    checks = host.gather(None, [str(tmp_path / "no-hooks")], containerd_configs=[str(ctr_conf)], podman_confs=[])
    (launcher,) = [c for c in checks if c.name == "launcher"]
    assert launcher.status == "fail" and "tiergate-runtime.py is MISSING" in launcher.detail
