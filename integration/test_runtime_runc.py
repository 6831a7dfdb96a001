"""tiergate-runtime in front of runc alone: `tiergate-runtime run` on a bundle, exec, pass-through.

A bare bundle has no image: a spec annotation io.tiergate.tier asks for a tier
within the policy's default ceiling; without one the image is unknown and the
shipped policy refuses it. The control half runs the same bundle on runc.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid

import pytest

from harness import RuncBundle, caps_from_hex, probe_status, run_cmd

pytestmark = pytest.mark.runc

STATUS = ["cat", "/proc/self/status"]
RUNC_DEFAULT_CAPS = {"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}


@pytest.fixture(scope="module")
def shim(it_dir):
    from tiergate.engines import shim as shim_install

    bin_dir = it_dir / "shim-runc"
    exe = shim_install.install(bin_dir, "integration runc", log=str(it_dir / "runc-decisions.jsonl"),
                               cache_dir=str(it_dir / "cache"), say=lambda *_: None)
    return {"exe": str(exe), "log": it_dir / "runc-decisions.jsonl", "bin": bin_dir}


@pytest.fixture
def bundle(runc_env, busybox_rootfs, shim, tmp_path):
    def make(annotations=None, runc=None, args=STATUS):
        b = RuncBundle(tmp_path / f"b-{uuid.uuid4().hex[:6]}", busybox_rootfs.path, args=args,
                       runc_root=runc_env["runc_root"], runc=runc or shim["exe"],
                       cgroup_parent=runc_env["cgroup_parent"])
        if annotations:
            b.config["annotations"] = dict(annotations)
        return b
    return make


def test_control_runc_defaults(bundle, runc_env):
    proc = bundle({"io.tiergate.tier": "restricted"}, runc=runc_env["runc"]).run()
    s = probe_status(proc.stdout)
    assert caps_from_hex(s["CapEff"]) == RUNC_DEFAULT_CAPS and s["Seccomp"] == "0"


def test_annotation_restricted(bundle):
    proc = bundle({"io.tiergate.tier": "restricted"}).run()
    assert proc.returncode == 0, proc.stderr
    s = probe_status(proc.stdout)
    assert caps_from_hex(s["CapEff"]) == {"CAP_NET_BIND_SERVICE"}
    assert s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"


def test_annotation_cannot_exceed_ceiling(bundle):
    """A bare bundle may get at most the default ceiling (baseline), whatever it asks."""
    b = bundle({"io.tiergate.tier": "privileged"})
    b.config["process"]["capabilities"] = {k: ["CAP_SYS_ADMIN", "CAP_KILL"] for k in
                                          ("bounding", "effective", "permitted")}
    proc = b.run()
    assert proc.returncode == 0, proc.stderr
    s = probe_status(proc.stdout)
    assert caps_from_hex(s["CapEff"]) == {"CAP_KILL"} and s["Seccomp"] == "2"
    assert json.loads(b.config_path.read_text())["annotations"]["io.tiergate.tier"] == "baseline"


def test_no_annotation_refused_with_log(bundle, runc_env, tmp_path):
    b = bundle()
    b.write()
    log = tmp_path / "log.json"
    proc = run_cmd([b.runc, "--root", str(runc_env["runc_root"]), "--log", str(log), "--log-format", "json",
                    "run", "--bundle", str(b.dir), f"tg-{uuid.uuid4().hex[:8]}"], timeout=30)
    assert proc.returncode == 1
    assert "tiergate: refused: cannot read the image's labels" in proc.stderr
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["level"] == "error" and line["msg"].startswith("tiergate: refused:") and line["time"]


def test_a_refusal_through_the_warm_helper_says_the_same_line(bundle, shim, runc_env, tmp_path):
    """The helper's child refuses as the launcher's own process does: exit 1, one line on stderr
    and in the runtime's --log; `unshare -m` puts the launcher in another mount namespace, so
    its helper declines and it runs the start itself."""
    from harness import warm_helper_pid
    from tiergate.engines import warm
    from tiergate.engines.shim import PY_LAUNCHER

    b = bundle()
    b.write()
    seen = {}
    for path in ("first", "warm", "declined"):
        log = tmp_path / f"{path}.json"
        argv = [b.runc, "--root", str(runc_env["runc_root"]), "--log", str(log), "--log-format", "json",
                "create", "--bundle", str(b.dir), f"tg-{uuid.uuid4().hex[:8]}"]
        proc = run_cmd(["unshare", "-m", *argv] if path == "declined" else argv, timeout=30)
        rec = json.loads(shim["log"].read_text().splitlines()[-1])
        seen[path] = (proc.returncode, proc.stderr, json.loads(log.read_text())["msg"], rec.get("warm"))
        if path == "first":  # no helper yet, or one: from now on one runs
            pid = warm_helper_pid(warm.key_in((shim["bin"] / PY_LAUNCHER).read_text()), timeout=60)
    line = "tiergate: refused: cannot read the image's labels"
    assert seen["warm"][:3] == seen["declined"][:3] and seen["warm"][0] == 1, seen
    assert seen["warm"][1].count("\n") == 1 and seen["warm"][1].startswith(line), seen
    assert seen["warm"][2] == seen["warm"][1].strip()
    assert (seen["warm"][3], seen["declined"][3]) == (pid, None), seen  # who decided


def test_bundle_symlink_not_followed(bundle, tmp_path):
    b = bundle({"io.tiergate.tier": "restricted"})
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(b.config))
    b.dir.mkdir(parents=True, exist_ok=True)
    b.config_path.symlink_to(outside)
    proc = run_cmd([b.runc, "--root", str(b.runc_root), "run", "--bundle", str(b.dir), "tg-link"], timeout=30)
    assert proc.returncode == 1 and "symlink" in proc.stderr
    assert json.loads(outside.read_text()) == b.config  # untouched


def _create(b, cid):
    b.config["process"]["args"] = ["sleep", "60"]
    b.config.setdefault("linux", {})["cgroupsPath"] = f"{b.cgroup_parent}/{cid}"
    b.write()
    subprocess.run([b.runc, "--root", str(b.runc_root), "create", "--bundle", str(b.dir), cid],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, timeout=30)


def test_exec_and_pass_through(bundle, runc_env, shim, tmp_path):
    b = bundle({"io.tiergate.tier": "restricted"})
    cid = f"tg-{uuid.uuid4().hex[:8]}"
    root = str(runc_env["runc_root"])
    _create(b, cid)
    try:
        state = json.loads(run_cmd([shim["exe"], "--root", root, "state", cid], check=True).stdout)
        assert state["status"] == "created"
        run_cmd([shim["exe"], "--root", root, "start", cid], check=True)
        out = run_cmd([shim["exe"], "--root", root, "exec", "--cap", "CAP_KILL", cid, *STATUS], check=True).stdout
        s = probe_status(out)
        assert caps_from_hex(s["CapEff"]) == {"CAP_NET_BIND_SERVICE"} and s["NoNewPrivs"] == "1"
        # the control: plain runc exec with --cap gets it
        s = probe_status(run_cmd([runc_env["runc"], "--root", root, "exec", "--cap", "CAP_SYS_ADMIN", cid, *STATUS],
                                 check=True).stdout)
        assert "CAP_SYS_ADMIN" in caps_from_hex(s["CapEff"])
        proc = run_cmd([shim["exe"], "--root", root, "exec", "--cap", "CAP_SYS_ADMIN", cid, *STATUS])
        assert proc.returncode == 1 and "refuses an exec" in proc.stderr
        # a --process file is hardened in place
        proc_file = tmp_path / "process.json"
        proc_file.write_text(json.dumps({"args": STATUS, "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"],
                                         "capabilities": {k: ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"] for k in
                                                          ("bounding", "effective", "permitted")}}))
        s = probe_status(run_cmd([shim["exe"], "--root", root, "exec", "--process", str(proc_file), cid],
                                 check=True).stdout)
        assert caps_from_hex(s["CapEff"]) == {"CAP_NET_BIND_SERVICE"} and s["NoNewPrivs"] == "1"
        assert json.loads(proc_file.read_text())["noNewPrivileges"] is True
        run_cmd([shim["exe"], "--root", root, "pause", cid], check=True)
        run_cmd([shim["exe"], "--root", root, "resume", cid], check=True)
        assert cid in run_cmd([shim["exe"], "--root", root, "list"], check=True).stdout
        run_cmd([shim["exe"], "--root", root, "kill", cid, "KILL"], check=True)
    finally:
        run_cmd([shim["exe"], "--root", root, "delete", "--force", cid])
    assert cid not in run_cmd([runc_env["runc"], "--root", root, "list"]).stdout


def test_exec_through_the_warm_helper_is_runc_in_the_shims_process(bundle, runc_env, shim, tmp_path):
    """An exec decided by the shim's warm helper: the shim's process itself becomes runc (the
    engine's subreaper waits for it) through its compiled front, no Python in it or below it, and
    the tier holds inside."""
    from harness import require_binary, warm_helper_pid
    from tiergate.engines import warm
    from tiergate.engines import front
    from tiergate.engines.shim import PY_LAUNCHER

    strace = require_binary("strace")
    assert front.launcher_of(shim["exe"]) == str(shim["bin"] / PY_LAUNCHER)  # the shim is the compiled front
    b = bundle({"io.tiergate.tier": "restricted"})
    cid = f"tg-{uuid.uuid4().hex[:8]}"
    root = str(runc_env["runc_root"])
    _create(b, cid)  # through the shim: its helper runs from now on
    pid = warm_helper_pid(warm.key_in((shim["bin"] / PY_LAUNCHER).read_text()), timeout=60)
    trace = tmp_path / "strace.out"
    try:
        run_cmd([shim["exe"], "--root", root, "start", cid], check=True)
        out = run_cmd([strace, "-f", "-q", "-s", "256", "-e", "trace=execve,clone,clone3,fork,vfork", "-o", str(trace),
                       shim["exe"], "--root", root, "exec", "--cap", "CAP_KILL", cid, *STATUS], check=True).stdout
    finally:
        b.runc_cmd("delete", "--force", cid, timeout=20)
    s = probe_status(out)
    assert caps_from_hex(s["CapEff"]) == {"CAP_NET_BIND_SERVICE"} and s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
    rec = json.loads(shim["log"].read_text().splitlines()[-1])
    assert (rec["stage"], rec["outcome"], rec.get("warm")) == ("exec", "allowed", pid), rec
    execs, _ = _processes(trace.read_text().splitlines())
    shim_pid = execs[0][0]  # the shim (the compiled front), then runc: one process, no shell, no Python
    mine = [p for q, p in execs if q == shim_pid]
    assert mine[0] == shim["exe"] and os.path.basename(mine[1]) == "runc", execs
    assert not [p for _, p in execs if "python" in os.path.basename(p)], execs


def test_loop_is_an_error(shim, runc_env):
    env = {**os.environ, "TIERGATE_RUNTIME": shim["exe"]}
    proc = subprocess.run([shim["exe"], "--root", str(runc_env["runc_root"]), "list"], env=env,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1 and "loop" in proc.stderr


def test_pass_through_never_starts_python(runc_env, shim, tmp_path):
    """Pass-through subcommands are the shim's front exec'ing runc: they work with the Python half gone.

    (Its cost beside runc is measured in bench/, never asserted here.)
    """
    import shutil

    root = str(runc_env["runc_root"])
    copy = tmp_path / "shim-copy"
    shutil.copytree(shim["bin"], copy, symlinks=True)
    front = copy / os.path.basename(shim["exe"])
    control = run_cmd([str(front), "--root", root, "list"])
    assert control.returncode == 0, control.stderr
    for py in (copy / "lib").glob("*.py"):
        py.unlink()
    listed = run_cmd([str(front), "--root", root, "list"])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == control.stdout
    created = run_cmd([str(front), "--root", root, "create", "--bundle", str(tmp_path), "nope"])
    assert created.returncode != 0, "create ran without the Python half: it must harden, not pass through"


@pytest.mark.parametrize("tier, raw, table", [("web", False, "inet tiergate"),
                                              ("baseline", True, "netdev tiergate-metadata")])
def test_create_programs_the_netns_in_process(bundle, shim, runc_env, tmp_path, tier, raw, table):
    """`create`, then `start`: how docker, containerd and podman's runtime drive the shim. For a
    namespace that holds an interface (a path in the spec, as CNI and docker hand over), the shim
    closes metadata and loads the tier's network policy itself between the two: strace sees the
    shim's compiled front start only runc, and no interpreter or hook anywhere below it (no createRuntime
    hook, no forked helper: before, a workload keeping CAP_NET_RAW, whose egress chains are an
    nf_tables batch, got a fork to close its socket). The rules are there before `start`. The
    start goes through the shim's warm helper: runc is still the shim process's own child."""
    from harness import netns_with_eth0, require_binary

    strace = require_binary("strace")
    cid = f"tg-{uuid.uuid4().hex[:12]}"
    b = bundle({"io.tiergate.tier": tier}, args=["true"])
    if raw:  # baseline keeps what the engine asks for: CAP_NET_RAW, as docker's default set has it
        for kind in ("bounding", "effective", "permitted"):
            b.config["process"]["capabilities"][kind].append("CAP_NET_RAW")
    linux = b.config.setdefault("linux", {})
    linux["cgroupsPath"] = f"{b.cgroup_parent}/{cid}"
    create = [shim["exe"], "--root", str(b.runc_root), "create", "--bundle", str(b.dir), cid]
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    b.write()  # warm: a first create compiles the policy (pyseccomp's find_library runs ldconfig)
    warm = subprocess.run(create, timeout=60, **quiet)
    b.runc_cmd("delete", "--force", cid, timeout=20)
    assert warm.returncode == 0
    # ... and starts the launcher's warm helper: the traced create is decided by its child, which
    # hands runc back to the shim's process to run (engines/warm.py hand_over) and programs the netns
    from harness import warm_helper_pid
    from tiergate.engines import warm as helper
    from tiergate.engines.shim import PY_LAUNCHER

    pid = warm_helper_pid(helper.key_in((shim["bin"] / PY_LAUNCHER).read_text()), timeout=60)
    trace = tmp_path / "strace.out"
    with netns_with_eth0("tg-rt", "10.219.1.2/24") as ns:
        linux["namespaces"] = [n for n in linux.get("namespaces", []) if n.get("type") != "network"] + [
            {"type": "network", "path": f"/run/netns/{ns}"}]
        b.write()
        # strace -f outlives the shim: it follows the container's init, which waits for `start`
        tracer = subprocess.Popen([strace, "-f", "-q", "-s", "256", "-e", "trace=execve,clone,clone3,fork,vfork",
                                   "-o", str(trace), *create], **quiet)
        try:
            def shim_exit() -> str | None:  # strace's first pid is the shim's (the compiled front)
                text = trace.read_text() if trace.exists() else ""
                m = re.search(rf"^{text.split(maxsplit=1)[0]}\s+\+\+\+ (exited with \d+)", text, re.M) if text else None
                return m[1] if m else None

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and tracer.poll() is None and not shim_exit():
                time.sleep(0.05)
            assert shim_exit() == "exited with 0", trace.read_text()[-2000:]
            listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                                    text=True, timeout=30).stdout
            assert f"table {table}" in listed, listed  # loaded by create, before start
            assert b.runc_cmd("start", cid).returncode == 0
            tracer.wait(timeout=30)  # the init ran `true` and exited
        finally:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait(timeout=10)
            b.runc_cmd("delete", "--force", cid, timeout=20)
    execs, children = _processes(trace.read_text().splitlines())
    assert not [p for _, p in execs if "python" in os.path.basename(p)], execs  # decided in the helper's child
    fronts = [(pid, path) for pid, path in execs if path == shim["exe"]]
    assert len(fronts) == 1, execs  # the shim, the compiled front
    assert not [p for _, p in execs if "tiergate-hook" in p], execs
    first_exec = {pid: path for pid, path in reversed(execs)}
    runc = os.path.realpath(runc_env["runc"])
    spawned = children.get(fronts[0][0], [])
    assert spawned and all(os.path.realpath(first_exec.get(c, "")) == runc for c in spawned), (spawned, execs)
    recs = [json.loads(x) for x in shim["log"].read_text().splitlines() if cid in x]
    created = [r for r in recs if r.get("stage") == "create"]
    assert created and created[-1]["outcome"] == "allowed", recs
    assert created[-1].get("warm") == pid, created[-1]  # decided in the helper, runc the shim's child
    assert created[-1].get("network") == (None if raw else tier), created[-1]
    assert ("CAP_NET_RAW: egress drops on" if raw else "closed") in created[-1].get("metadata", ""), created[-1]
    assert created[-1].get("netns_programmed") == "ahead", created[-1]  # the spec's namespace, while runc created


def test_an_interface_added_during_create_gets_its_egress_chain(bundle, shim, runc_env, tmp_path):
    """The shim programs a namespace the spec names while runc creates (network/program.py
    program_ahead), then checks the init's namespace is that one with the interfaces it had. A
    createRuntime hook (the caller's) adds eth1 while runc creates: the check sees it and the
    namespace is programmed again, so a CAP_NET_RAW workload finds an egress chain on eth1 too.
    Control: an interface added after create gets none (chains are per interface), so the
    listing below would fail had the shim kept its first programming."""
    from harness import netns_with_eth0

    def chained(ns: str) -> set[str]:
        out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "netdev", "tiergate-metadata"],
                             capture_output=True, text=True, timeout=30).stdout
        return set(re.findall(r'hook egress device "([^"]+)"', out))

    got = {}
    for when in ("during create", "after create"):
        cid = f"tg-{uuid.uuid4().hex[:12]}"
        b = bundle({"io.tiergate.tier": "baseline"}, args=["true"])
        for kind in ("bounding", "effective", "permitted"):  # baseline keeps CAP_NET_RAW when asked
            b.config["process"]["capabilities"][kind].append("CAP_NET_RAW")
        linux = b.config.setdefault("linux", {})
        linux["cgroupsPath"] = f"{b.cgroup_parent}/{cid}"
        with netns_with_eth0("tg-rt", "10.219.2.2/24") as ns:
            linux["namespaces"] = [n for n in linux.get("namespaces", []) if n.get("type") != "network"] + [
                {"type": "network", "path": f"/run/netns/{ns}"}]
            add = ["/usr/sbin/ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "tgpeer1"]
            if when == "during create":  # after the shim's first look at the namespace
                b.config["hooks"] = {"createRuntime": [
                    {"path": "/bin/sh", "args": ["sh", "-c", f"sleep 0.3; exec {' '.join(add)}"], "timeout": 10}]}
            b.write()
            try:
                err = tmp_path / f"{cid}.err"  # not a pipe: the created init keeps the shim's stdio
                with err.open("wb") as fh:
                    made = subprocess.run([shim["exe"], "--root", str(b.runc_root), "create", "--bundle", str(b.dir),
                                           cid], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh,
                                          timeout=60)
                assert made.returncode == 0, err.read_text()[-500:]
                if when == "after create":
                    subprocess.run(add, check=True, timeout=30)
                got[when] = chained(ns)
            finally:
                b.runc_cmd("delete", "--force", cid, timeout=20)
        recs = [json.loads(x) for x in shim["log"].read_text().splitlines() if cid in x]
        created = [r for r in recs if r.get("stage") == "create"]
        assert created and created[-1]["outcome"] == "allowed", recs
        if when == "during create":
            assert created[-1].get("netns_programmed") is None, created[-1]  # programmed again after create
    print(f"\negress chains: {got}")
    # netns_with_eth0 leaves eth0's veth peer in the namespace too: every interface is chained
    assert got["after create"] == {"eth0", "tgpeer"}  # control: eth1 came later and has no chain
    assert got["during create"] == {"eth0", "tgpeer", "eth1", "tgpeer1"}


def _processes(lines: list[str]) -> tuple[list[tuple[int, str]], dict[int, list[int]]]:
    """From `strace -f -e trace=execve,clone,clone3,fork,vfork` output: (pid, program) of each
    execve that succeeded, in order, and each pid's children (calls split by other pids joined)."""
    execs: list[tuple[int, str]] = []
    children: dict[int, list[int]] = {}
    pending: dict[int, tuple[str, str]] = {}
    for ln in lines:
        m = re.match(r"(\d+)\s+(?:<\.\.\. )?(execve|clone3?|v?fork)(?:\(| resumed>)(.*)", ln)
        if not m:
            continue
        pid, call, rest = int(m[1]), m[2], m[3]
        if ln.endswith("<unfinished ...>"):
            pending[pid] = (call, rest)
            continue
        if " resumed>" in ln[:60]:
            call, rest = pending.pop(pid, (call, rest))
        result = ln.rsplit(" = ", 1)[-1] if " = " in ln else ""
        if call == "execve" and result == "0":
            execs.append((pid, rest.split('"')[1]))
        elif call != "execve" and result.isdigit():
            children.setdefault(pid, []).append(int(result))
    return execs, children
