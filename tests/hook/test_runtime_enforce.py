"""The shim's create and exec paths, with a stand-in real runtime (os.execv captured)."""

from __future__ import annotations

import json
import os

import pytest

from tiergate.shim import runtime

RESTRICTED = "io.tiergate.tier=restricted"


class Execd(Exception):
    pass


@pytest.fixture
def env(tmp_path, monkeypatch):
    calls = []

    def execv(path, argv):
        calls.append(argv)
        raise Execd()

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setenv("TIERGATE_RUNTIME", "/bin/true")
    monkeypatch.delenv(runtime.LOOP_ENV, raising=False)
    conf = tmp_path / "conf"
    conf.write_text(f"log={tmp_path / 'decisions.jsonl'}\ncache_dir={tmp_path / 'cache'}\n")
    yield {"calls": calls, "conf": str(conf), "log": tmp_path / "decisions.jsonl", "tmp": tmp_path}
    os.environ.pop(runtime.LOOP_ENV, None)


def _bundle(tmp_path, annotations=None, caps=("CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN")):
    b = tmp_path / "bundle"
    b.mkdir()
    spec = {"ociVersion": "1.0.2", "root": {"path": str(tmp_path / "rootfs")},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")}},
            "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]}}
    if annotations:
        spec["annotations"] = annotations
    (b / "config.json").write_text(json.dumps(spec))
    os.chmod(b / "config.json", 0o640)
    return b


def _main(env, argv):
    try:
        return runtime.main(argv, conf=env["conf"])
    except Execd:
        return "exec"


def test_create_hardens_then_execs_original_argv(env):
    b = _bundle(env["tmp"], {"io.tiergate.tier": "restricted"}, caps=("CAP_KILL", "CAP_NET_BIND_SERVICE"))
    argv = ["--root", "/r", "--log", str(b / "log.json"), "--log-format", "json", "create", "--bundle", str(b), "id1"]
    assert _main(env, argv) == "exec"
    assert env["calls"] == [["/bin/true", *argv]]
    spec = json.loads((b / "config.json").read_text())
    assert spec["process"]["capabilities"]["effective"] == ["CAP_NET_BIND_SERVICE"]
    assert spec["process"]["noNewPrivileges"] is True and spec["annotations"]["io.tiergate.tier"] == "restricted"
    assert oct((b / "config.json").stat().st_mode & 0o777) == "0o640"
    rec = json.loads(env["log"].read_text().splitlines()[-1])
    assert rec["stage"] == "create" and rec["outcome"] == "allowed" and rec["container"] == "id1"


def test_create_uses_cwd_without_bundle_flag(env, monkeypatch):
    b = _bundle(env["tmp"], {"io.tiergate.tier": "restricted"}, caps=("CAP_KILL",))
    monkeypatch.chdir(b)
    assert _main(env, ["run", "id2"]) == "exec"
    assert json.loads((b / "config.json").read_text())["process"]["capabilities"]["effective"] == []


def test_refusal_goes_to_log_and_stderr(env, capsys):
    b = _bundle(env["tmp"], {"io.tiergate.tier": "restricted"})  # CAP_SYS_ADMIN asked: restricted refuses
    before = (b / "config.json").read_text()
    log = b / "log.json"
    rc = _main(env, ["--log", str(log), "--log-format", "json", "create", "--bundle", str(b), "id3"])
    assert rc == 1 and env["calls"] == []
    line = json.loads(log.read_text())
    assert line["level"] == "error" and line["msg"].startswith("tiergate: refused: tier restricted refuses")
    assert "CAP_SYS_ADMIN" in capsys.readouterr().err
    assert (b / "config.json").read_text() == before


def test_unknown_image_follows_policy(env):
    b = _bundle(env["tmp"])
    assert _main(env, ["create", "--bundle", str(b), "id4"]) == 1  # shipped policy: on_unknown_image = refuse


def test_symlinked_config_refused(env):
    b = _bundle(env["tmp"], {"io.tiergate.tier": "restricted"})
    (b / "config.json").rename(env["tmp"] / "elsewhere.json")
    (b / "config.json").symlink_to(env["tmp"] / "elsewhere.json")
    assert _main(env, ["create", "--bundle", str(b), "id5"]) == 1


def test_pass_through_touches_nothing(env):
    assert _main(env, ["--root", "/r", "kill", "id", "9"]) == "exec"
    assert env["calls"] == [["/bin/true", "--root", "/r", "kill", "id", "9"]]
    assert not env["log"].exists()


def _state(env, tier="restricted", cid="c1"):
    root = env["tmp"] / "root"
    (root / cid).mkdir(parents=True)
    labels = [f"io.tiergate.tier={tier}", "bundle=/nonexistent"] if tier else ["bundle=/nonexistent"]
    (root / cid / "state.json").write_text(json.dumps({"id": cid, "config": {"labels": labels}}))
    return str(root)


def _process(env, caps):
    p = env["tmp"] / "process.json"
    p.write_text(json.dumps({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                             "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")}}))
    return p


def test_exec_process_file_hardened(env):
    root = _state(env)
    p = _process(env, ["CAP_KILL", "CAP_NET_BIND_SERVICE"])
    argv = ["--root", root, "exec", "--process", str(p), "--detach", "c1"]
    assert _main(env, argv) == "exec"
    assert env["calls"][0][1:] == argv
    proc = json.loads(p.read_text())
    assert proc["capabilities"]["effective"] == ["CAP_NET_BIND_SERVICE"] and proc["noNewPrivileges"] is True


def test_exec_process_file_rewritten_in_place(env):
    """The file the engine wrote is the one hardened (same inode, mode, nothing left beside it);
    one with a second name is never written through: the exec fails closed, the runtime never runs."""
    root = _state(env)
    p = _process(env, ["CAP_KILL", "CAP_NET_BIND_SERVICE"])
    p.chmod(0o600)
    before = p.stat()
    assert _main(env, ["--root", root, "exec", "--process", str(p), "c1"]) == "exec"
    after = p.stat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert json.loads(p.read_text())["capabilities"]["effective"] == ["CAP_NET_BIND_SERVICE"]
    assert sorted(x.name for x in p.parent.iterdir() if x.name.startswith((".process", "process"))) == ["process.json"]
    env["calls"].clear()
    p = _process(env, ["CAP_KILL"])
    os.link(p, env["tmp"] / "elsewhere.json")
    assert _main(env, ["--root", root, "exec", "--process", str(p), "c1"]) == 1
    assert env["calls"] == []
    assert json.loads((env["tmp"] / "elsewhere.json").read_text())["capabilities"]["effective"] == ["CAP_KILL"]


def test_exec_privileged_refused_by_restricted(env):
    root = _state(env)
    p = _process(env, ["CAP_SYS_ADMIN", "CAP_KILL"])
    assert _main(env, ["--root", root, "exec", "--process", str(p), "c1"]) == 1
    assert json.loads(p.read_text())["capabilities"]["effective"] == ["CAP_SYS_ADMIN", "CAP_KILL"]


def test_exec_privileged_clamped_by_baseline(env):
    root = _state(env, "baseline")
    p = _process(env, ["CAP_SYS_ADMIN", "CAP_KILL"])
    assert _main(env, ["--root", root, "exec", "--process", str(p), "c1"]) == "exec"
    assert json.loads(p.read_text())["capabilities"]["effective"] == ["CAP_KILL"]


def test_exec_cap_flags_stripped_and_nnp_added(env):
    root = _state(env, "baseline")
    argv = ["--root", root, "exec", "--cap", "CAP_KILL", "-c", "CAP_NET_ADMIN", "--apparmor", "unconfined", "c1", "sh",
            "--cap", "CAP_NET_ADMIN"]
    assert _main(env, argv) == "exec"
    assert env["calls"][0][1:] == ["--root", root, "exec", "--no-new-privs", "--cap", "CAP_KILL", "c1", "sh",
                                   "--cap", "CAP_NET_ADMIN"]


def test_exec_cap_flags_beside_a_process_file_are_dropped(env):
    """runc ignores --cap beside --process: the file is what runs (hardened), the flags never reach the runtime."""
    root = _state(env, "baseline")
    p = _process(env, ["CAP_KILL"])
    argv = ["--root", root, "exec", "--process", str(p), "--cap", "CAP_SYS_ADMIN", "-c", "CAP_KILL", "c1"]
    assert _main(env, argv) == "exec"
    assert env["calls"][0][1:] == ["--root", root, "exec", "--process", str(p), "c1"]
    proc = json.loads(p.read_text())
    assert proc["capabilities"]["bounding"] == ["CAP_KILL"] and proc["noNewPrivileges"] is True


def test_exec_cap_flag_refused_by_restricted(env):
    root = _state(env)
    assert _main(env, ["--root", root, "exec", "--cap", "CAP_SYS_ADMIN", "c1", "sh"]) == 1


def test_exec_privileged_tier_untouched(env):
    root = _state(env, "privileged")
    argv = ["--root", root, "exec", "--cap", "CAP_SYS_ADMIN", "c1", "sh"]
    assert _main(env, argv) == "exec" and env["calls"][0][1:] == argv


def test_exec_unknown_container_refused(env):
    assert _main(env, ["--root", str(env["tmp"] / "none"), "exec", "../../etc", "sh"]) == 1


def test_create_that_cannot_program_the_namespace_deletes_the_container(env, monkeypatch):
    """A namespace the shim must program after `create` (docker's kind: fresh, filled by a prestart
    hook) that it cannot enter: the real runtime's container is deleted and create fails, one line."""
    calls = env["tmp"] / "calls"
    fake = env["tmp"] / "fake-runtime"
    # create: writes its own pid (gone once it exits) as the container's init pid
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                    'for a in "$@"; do [ "$prev" = --pid-file ] && echo $$ > "$a"; prev="$a"; done\nexit 0\n')
    fake.chmod(0o755)
    monkeypatch.setenv("TIERGATE_RUNTIME", str(fake))
    b = _bundle(env["tmp"], {"io.tiergate.tier": "restricted"}, caps=("CAP_KILL",))
    spec = json.loads((b / "config.json").read_text())
    spec["hooks"] = {"prestart": [{"path": "/bin/true"}]}  # an interface may be moved in: not empty
    (b / "config.json").write_text(json.dumps(spec))
    log = b / "log.json"
    argv = ["--root", "/r", "--log", str(log), "--log-format", "json", "create", "--bundle", str(b),
            "--pid-file", str(b / "init.pid"), "id9"]
    assert _main(env, argv) == 1
    assert env["calls"] == []  # never exec'd: the shim ran create as a child
    ran = calls.read_text().splitlines()
    assert ran[0].startswith("--root /r --log") and " create " in ran[0]
    assert ran[1] == "--root /r --log " + str(log) + " --log-format json delete --force id9"
    err = json.loads(log.read_text().splitlines()[-1])
    assert err["level"] == "error" and err["msg"].startswith("tiergate: error: cannot close cloud metadata")
    rec = json.loads(env["log"].read_text().splitlines()[-1])
    assert rec["outcome"] == "error" and "createRuntime" not in json.dumps(json.loads((b / "config.json").read_text()).get("hooks"))


# -- update (docker update, podman update): the tier's pids limit holds after create -------

@pytest.mark.parametrize("limit, outcome", [(-1, 1), (100000, 1), (100, "exec"), (0, "exec")])
def test_update_resources_file_refused_above_restricted(env, limit, outcome):
    """restricted refuses (on_escalation = refuse) an update that lifts pids.max; within the limit passes."""
    root = _state(env)
    res = env["tmp"] / "res.json"
    res.write_text(json.dumps({"pids": {"limit": limit}, "memory": {"limit": 1 << 30}}))
    assert _main(env, ["--root", root, "update", "--resources", str(res), "c1"]) == outcome
    assert json.loads(res.read_text())["pids"]["limit"] == limit


@pytest.mark.parametrize("limit", [-1, 100000])
def test_update_clamped_by_a_clamping_tier(env, limit):
    """A tier with on_escalation = clamp: the resources file is rewritten to the tier's limit, and
    cgroup v2 `unified` pids.* keys are dropped."""
    policy = env["tmp"] / "policy.toml"
    policy.write_text('version = 1\ndefault_tier = "capped"\ndefault_ceiling = "capped"\n'
                      '[tiers.capped]\non_escalation = "clamp"\npids_limit = 64\n')
    with open(env["conf"], "a") as fh:
        fh.write(f"policy={policy}\n")
    root = _state(env, "capped")
    res = env["tmp"] / "res.json"
    res.write_text(json.dumps({"pids": {"limit": limit}, "unified": {"pids.max": "max", "memory.high": "max"}}))
    assert _main(env, ["--root", root, "update", "-r", str(res), "c1"]) == "exec"
    assert json.loads(res.read_text()) == {"pids": {"limit": 64}, "unified": {"memory.high": "max"}}
    os.environ.pop(runtime.LOOP_ENV, None)  # set by the first (captured) exec
    assert _main(env, ["--root", root, "update", "--pids-limit=-1", "c1"]) == "exec"
    assert env["calls"][-1][1:] == ["--root", root, "update", "--pids-limit", "64", "c1"]


def test_update_flag_refused_and_stdin_handed_on(env, monkeypatch):
    """--pids-limit -1 is refused under restricted; a resources document on stdin reaches the runtime unchanged
    when it is within the tier."""
    root = _state(env)
    assert _main(env, ["--root", root, "update", "--pids-limit", "-1", "c1"]) == 1
    r, w = os.pipe()
    os.write(w, b'{"pids": {"limit": 50}}')
    os.close(w)
    saved = os.dup(0)
    os.dup2(r, 0)
    try:
        assert _main(env, ["--root", root, "update", "--resources", "-", "c1"]) == "exec"
        assert os.read(0, 4096) == b'{"pids": {"limit": 50}}'
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)


def test_update_of_a_privileged_container_passes(env):
    root = _state(env, "privileged")
    argv = ["--root", root, "update", "--pids-limit", "-1", "c1"]
    assert _main(env, argv) == "exec" and env["calls"][0][1:] == argv


def test_docker_network_hook_is_told_its_engine(env):
    """The createRuntime hook the shim adds for a docker bundle (`run`: the workload starts at once) records
    engine docker, not podman."""
    moby = env["tmp"] / "state" / "io.containerd.runtime.v2.task" / "moby" / ("a" * 64)
    moby.mkdir(parents=True)
    b = _bundle(moby, {"io.tiergate.tier": "web"}, caps=("CAP_KILL",))
    assert _main(env, ["run", "--bundle", str(b), "a" * 64]) == "exec"
    spec = json.loads((b / "config.json").read_text())
    (hook,) = [h for h in spec["hooks"]["createRuntime"] if "createRuntime" in h["args"]]
    assert hook["args"][hook["args"].index("--engine") + 1] == "docker"
    rec = json.loads(env["log"].read_text().splitlines()[-1])
    assert rec["engine"] == "docker" and rec["container"] == "a" * 64


# -- on_error (the policy's choice for tiergate's own failures) holds for the shim too ---------

def _failing_harden(monkeypatch):
    from tiergate.core import pipeline

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "enforce", broken)


def _policy_conf(env, on_error: str, engines: str = "") -> None:
    policy = env["tmp"] / "policy.toml"
    policy.write_text(f'version = 1\ndefault_tier = "capped"\ndefault_ceiling = "capped"\non_error = "{on_error}"\n'
                      f'{engines}[tiers.capped]\npids_limit = 64\n')
    with open(env["conf"], "a") as fh:
        fh.write(f"policy={policy}\n")


def test_internal_error_refuses_by_default(env, monkeypatch, capsys):
    """The shipped choice: an internal error stops the create with one line; the runtime never runs."""
    _failing_harden(monkeypatch)
    b = _bundle(env["tmp"], {"io.tiergate.tier": "restricted"})
    assert _main(env, ["create", "--bundle", str(b), "e1"]) == 1
    assert env["calls"] == []
    assert capsys.readouterr().err.strip().splitlines() == ["tiergate: error: internal error: RuntimeError: boom"]
    assert json.loads(env["log"].read_text().splitlines()[-1])["outcome"] == "error"


def test_internal_error_runs_the_container_when_the_policy_allows_it(env, monkeypatch, capsys):
    """on_error = "allow": the same failure lets the runtime create the container, said loudly and logged."""
    _policy_conf(env, "allow")
    _failing_harden(monkeypatch)
    b = _bundle(env["tmp"], {"io.tiergate.tier": "capped"})
    argv = ["create", "--bundle", str(b), "e2"]
    assert _main(env, argv) == "exec"
    assert env["calls"] == [["/bin/true", *argv]]
    assert "container ALLOWED by on_error=allow: internal error: RuntimeError: boom" in capsys.readouterr().err
    rec = json.loads(env["log"].read_text().splitlines()[-1])
    assert rec["outcome"] == "allowed-on-error" and "boom" in rec["reason"]


def test_internal_error_refuses_when_only_another_engine_allows_it(env, monkeypatch, capsys):
    """[engines.docker] on_error = "allow" is docker's choice: a plain runc bundle's create still fails closed."""
    _policy_conf(env, "refuse", '[engines.docker]\non_error = "allow"\n')
    _failing_harden(monkeypatch)
    b = _bundle(env["tmp"], {"io.tiergate.tier": "capped"})
    assert _main(env, ["create", "--bundle", str(b), "e4"]) == 1
    assert env["calls"] == []
    assert json.loads(env["log"].read_text().splitlines()[-1])["outcome"] == "error"


@pytest.mark.parametrize("on_error", ["allow", "refuse"])
def test_malformed_spec_is_never_let_through(env, on_error):
    """on_error covers tiergate's own failures only: a malformed config.json stops the create either way."""
    _policy_conf(env, on_error)
    b = _bundle(env["tmp"])
    (b / "config.json").write_text('{"ociVersion": "1.0.2", "process": {"args": 3}')
    assert _main(env, ["create", "--bundle", str(b), "e3"]) == 1
    assert env["calls"] == []


HEAVY = ("hashlib", "subprocess", "json", "tomllib", "attrs", "socket", "tiergate.sources.bolt")


@pytest.mark.parametrize("command", ["create", "exec"])
def test_shim_start_path_imports_nothing_heavy(env, command):
    """The shim's own cost is its imports (callgrind: ~95% of it). Deterministic guard: create of a
    bare bundle and exec import none of the modules that cost most (hashlib loads OpenSSL, ~11 M
    instructions; subprocess ~43 M) and exec does not import the podman hook's entry."""
    import subprocess
    import sys

    if command == "create":
        b = _bundle(env["tmp"], {"io.tiergate.tier": "restricted"}, caps=("CAP_NET_BIND_SERVICE",))
        argv = ["--root", "/r", "create", "--bundle", str(b), "id1"]
    else:
        argv = ["--root", _state(env), "exec", "--process", str(_process(env, ["CAP_KILL"])), "c1"]
    assert _main(env, argv) == "exec"  # warms the policy cache: a compile is no start's work
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(runtime.__file__))))
    code = (f"import os, sys\nsys.path.insert(0, {repo!r})\nfrom tiergate.shim import runtime\n"
            "os.execv = lambda p, a: (print(sorted(sys.modules), flush=True), os._exit(0))\n"
            f"runtime.main({argv!r}, conf={env['conf']!r})\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                         env={"TIERGATE_RUNTIME": "/bin/true"})
    assert out.returncode == 0 and out.stdout, out.stderr
    mods = set(eval(out.stdout))
    heavy = {*HEAVY, "tiergate.hook.stages"} if command == "exec" else set(HEAVY)
    assert not mods & heavy, sorted(mods & heavy)


@pytest.mark.parametrize("unified", [{}, {'a"labels': "1"}, {"a\\": "x", "labels": "io.tiergate.tier=privileged"},
                                     {'x,"labels': "y"}, {'"capabilities":{"Bounding":["CAP_SYS_ADMIN"]}': "z"}])
@pytest.mark.parametrize("sep", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
def test_runc_state_fields_are_those_of_its_config(unified, sep):
    """The labels and capabilities read from runc's state without a full parse are the config's own,
    whatever a caller-set map key (cgroup v2 `unified`) holds; else the whole state is parsed."""
    state = {"id": "c1", "config": {"cgroups": {"unified": unified}, "labels": ["io.tiergate.tier=restricted"],
                                     "capabilities": {"Bounding": ["CAP_KILL"]}, "seccomp": {"syscalls": [{}] * 50}}}
    got = runtime.runc_config_fields(json.dumps(state, separators=sep))
    assert got["labels"] == ["io.tiergate.tier=restricted"] and got["capabilities"] == {"Bounding": ["CAP_KILL"]}
