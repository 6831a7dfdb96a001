"""Issue 19 (rollout, log, metrics) and issue 15 item 2 (trusted state), with real engines.

- A broken save of the policy a registered hook uses keeps containers starting on the
  last good compiled policy; the log and metrics say so on every start; doctor is red
  naming file:line; `policy apply` of a good file switches; a bad one changes nothing.
- A group-writable policy, cache dir or cache entry refuses the start with one line
  (control: the same files with safe modes start).
- The decision log names the engine's container id under `-e HOSTNAME=evil --hostname
  evil` (podman and docker), and `log --container` finds it by short id or name.
- Metrics scraped before and after a log rotation never decrease.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import pytest

from tiergate_fixtures import REPO, Hooks, last_line, podman_argv, tiergate
from tiergate_fixtures import tg_images  # noqa: F401  (fixture)

SHIPPED = REPO / "tiergate" / "configs" / "policy.toml"
BROKEN = 'version = 1\nlabel_key = "io.tiergate.tier"\n[tiers.restricted\n'


@pytest.fixture
def rollout(podman, tg_images, tmp_path):
    """tiergate installed with a policy of its own in a root-only dir, and its own cache and log."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    policy = etc / "policy.toml"
    policy.write_text(SHIPPED.read_text())
    policy.chmod(0o644)
    hooks = Hooks(podman, tmp_path / "tg", policy=policy)
    yield hooks, policy
    podman.remove_containers()


def started(proc) -> None:
    assert proc.returncode == 0, f"container did not start: {proc.stderr[-600:]}"


def refused(proc, *words: str) -> str:
    assert proc.returncode != 0, f"container started: {proc.stdout[-300:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    line = last_line(proc.stderr)
    line = line[line.find("tiergate: "):]
    for w in words:
        assert w in line, (w, proc.stderr[-800:])
    return line


def scrape(log: Path) -> dict[str, float]:
    """`tiergate metrics`, parsed as Prometheus text format (every line a HELP, TYPE or sample)."""
    out = {}
    types = {}
    for line in tiergate("metrics", "--file", log).stdout.splitlines():
        if m := re.fullmatch(r"# TYPE (tiergate_\w+) (counter|gauge|histogram)", line):
            types[m.group(1)] = m.group(2)
            continue
        if line.startswith("# HELP tiergate_"):
            continue
        m = re.fullmatch(r'(tiergate_\w+)(\{(?:\w+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+)', line)
        assert m, line
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        assert base in types or m.group(1) in types, f"sample before its TYPE: {line}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def doctor(hooks: Hooks) -> tuple[int, dict[str, list[dict]]]:
    proc = tiergate("doctor", "--json", "--hooks-dir", hooks.hooks_dir, check=False)
    checks: dict[str, list[dict]] = {}
    for c in json.loads(proc.stdout)["checks"]:
        checks.setdefault(c["name"], []).append(c)
    return proc.returncode, checks


# -- rollout ------------------------------------------------------------------------------

def test_broken_save_keeps_starting_on_the_last_good_policy(rollout, tg_images):
    hooks, policy = rollout
    restricted = tg_images["restricted"]
    started(hooks.run(restricted, "true"))
    good = hooks.last()
    assert good["tier"] == "restricted"
    rc, checks = doctor(hooks)
    assert [c["status"] for c in checks["policy in use"]] == ["ok"], checks["policy in use"]

    policy.write_text(BROKEN)  # the bad save
    for _ in range(2):
        proc = hooks.run(restricted, "sh", "-c", "grep CapEff /proc/self/status")
        started(proc)
        assert "CapEff:\t0000000000000400" in proc.stdout  # restricted: CAP_NET_BIND_SERVICE only
    recs = hooks.records()
    errors = [r for r in recs if r["stage"] == "policy"]
    assert len(errors) == 2 and all(f"{policy}:3: invalid TOML" in r["reason"] for r in errors), errors
    starts = [r for r in recs if r["stage"] == "precreate"][-2:]
    assert all(r["outcome"] == "allowed" and r["tier"] == "restricted" and r["policy"] == good["policy"]
               for r in starts)
    m = scrape(hooks.log)
    assert m["tiergate_policy_error"] == 1 and m['tiergate_policy_errors_total{action="last_good"}'] == 2
    rc, checks = doctor(hooks)
    (used,) = checks["policy in use"]
    assert rc == 1 and used["status"] == "fail" and f"{policy}:3: invalid TOML" in used["detail"]
    assert "last good policy" in used["detail"]

    # a bad apply is refused and touches nothing; a good one switches at once
    bad = policy.parent / "bad.toml"
    bad.write_text(BROKEN)
    live_before = policy.read_text()
    proc = tiergate("policy", "apply", bad, "--to", policy, "--cache-dir", hooks.cache_dir, check=False)
    assert proc.returncode == 2 and f"{bad}:3: invalid TOML" in proc.stderr
    assert policy.read_text() == live_before
    new = policy.parent / "new.toml"
    new.write_text(SHIPPED.read_text().replace('default_tier = "baseline"', 'default_tier = "restricted"'))
    tiergate("policy", "apply", new, "--to", policy, "--cache-dir", hooks.cache_dir)
    started(hooks.run(tg_images["unlabelled"], "true"))
    rec = hooks.last()
    assert rec["tier"] == "restricted" and rec["policy"] != good["policy"] and "policy_error" not in rec
    assert scrape(hooks.log)["tiergate_policy_error"] == 0
    rc, checks = doctor(hooks)
    assert [c["status"] for c in checks["policy in use"]] == ["ok"]


def test_doctor_checks_what_a_podman_runtime_registration_uses(tmp_path, busybox_rootfs):
    """tiergate-runtime as podman's runtime ([engine.runtimes] in a containers.conf drop-in): doctor follows
    the shim to the settings its launcher passes; a broken save of THAT policy (the CLI's is fine) keeps
    starts on the last good one and turns doctor red naming file:line; a missing launcher is red too."""
    import tempfile

    import harness
    from test_podman_runtime import RuntimePodman

    harness.require_binary("podman")
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    policy = etc / "policy.toml"
    policy.write_text(SHIPPED.read_text())
    policy.chmod(0o644)
    rt = RuntimePodman(Path(tempfile.mkdtemp(prefix="tg-rt-", dir="/tmp")), busybox_rootfs.tar, policy=policy)
    try:
        conf = rt.conf_d / "99-tiergate.conf"
        where = f"{conf} runtime tiergate"

        def doctor_rt() -> tuple[int, dict[str, list[dict]]]:
            proc = tiergate("doctor", "--json", "--hooks-dir", tmp_path / "no-hooks", "--containers-conf", conf,
                            "--containerd-config", tmp_path / "none.toml", check=False)
            checks: dict[str, list[dict]] = {}
            for c in json.loads(proc.stdout)["checks"]:
                if where in c["detail"]:
                    checks.setdefault(c["name"], []).append(c)
            return proc.returncode, checks

        image = rt.images["restricted"]
        started(rt.tg("run", "--rm", image, "true"))
        rc, checks = doctor_rt()
        assert [c["status"] for c in checks["policy in use"] + checks["launcher"]] == ["ok", "ok"], checks
        assert str(policy) in checks["policy in use"][0]["detail"]
        policy.write_text(BROKEN)
        proc = rt.tg("run", "--rm", image, "sh", "-c", "grep CapEff /proc/self/status")
        started(proc)
        assert "CapEff:\t0000000000000400" in proc.stdout  # still restricted, on the last good policy
        rc, checks = doctor_rt()
        (used,) = checks["policy in use"]
        assert rc == 1 and used["status"] == "fail" and f"{policy}:3: invalid TOML" in used["detail"]
        assert tiergate("policy", "check", check=False).returncode == 0  # the CLI's own policy is fine
        (rt.bin_dir / "lib" / "tiergate-runtime.py").unlink()
        rc, checks = doctor_rt()
        assert rc == 1 and checks["launcher"][0]["status"] == "fail" and "MISSING" in checks["launcher"][0]["detail"]
    finally:
        rt.cleanup()


# -- trusted state (issue 15 item 2) ------------------------------------------------------------

@pytest.mark.parametrize("what", ["policy file", "cache dir", "cache entry"])
def test_group_writable_policy_or_cache_refuses_the_start(rollout, tg_images, what):
    hooks, policy = rollout
    started(hooks.run(tg_images["restricted"], "true"))  # control: safe modes start (and fill the cache)
    (entry,) = [p for p in hooks.cache_dir.iterdir() if p.name.startswith("policy") and p.name.endswith(".json")]
    target = {"policy file": policy, "cache dir": hooks.cache_dir, "cache entry": entry}[what]
    mode = target.stat().st_mode & 0o777
    target.chmod(mode | 0o020)
    try:
        line = refused(hooks.run(tg_images["restricted"], "true"), "writable by group or others", str(target))
        assert "\n" not in line
    finally:
        target.chmod(mode)
    started(hooks.run(tg_images["restricted"], "true"))


def test_deleted_configured_policy_refuses_never_falls_back(rollout, tg_images):
    hooks, policy = rollout
    started(hooks.run(tg_images["restricted"], "true"))
    policy.rename(policy.with_suffix(".moved"))
    policy.symlink_to(policy.parent / "gone.toml")
    refused(hooks.run(tg_images["restricted"], "true"), "dangling symlink")
    policy.unlink()
    refused(hooks.run(tg_images["restricted"], "true"), "does not exist")


# -- a log you can join on ----------------------------------------------------------------------

def test_podman_log_names_the_real_container_not_its_hostname(rollout, tg_images):
    hooks, _ = rollout
    name = f"tg-join-{secrets.token_hex(3)}"
    proc = hooks.podman_cmd("run", "-d", "--name", name, "-e", "HOSTNAME=evil", "--hostname", "evil",
                            tg_images["restricted"], "sleep", "30")
    started(proc)
    cid = proc.stdout.strip().splitlines()[-1]
    try:
        assert re.fullmatch(r"[0-9a-f]{64}", cid), proc.stdout
        rec = hooks.last()
        assert rec["container"] == cid and rec["name"] == name, rec
        assert rec["image_id"] and rec["tier"] == "restricted" and rec["source"] and rec["duration_ms"] > 0
        for key in (cid, cid[:12], name):
            out = tiergate("log", "--file", hooks.log, "--container", key, "--json").stdout.splitlines()
            assert [json.loads(x)["container"] for x in out] == [cid], key
        assert tiergate("log", "--file", hooks.log, "--container", "evil", "--json").stdout == ""
    finally:
        hooks.podman_cmd("rm", "-f", cid)


@pytest.mark.docker
def test_docker_log_names_the_real_container_not_its_hostname(docker_factory, it_dir):
    from tiergate.engines import shim as shim_install

    # the shim exactly as test_docker installs it: the same private daemon serves both
    log = it_dir / "docker-decisions.jsonl"
    exe = shim_install.install(it_dir / "shim-docker", "integration docker", log=str(log),
                               cache_dir=str(it_dir / "cache"), say=lambda *_: None)
    engine = docker_factory(runtimes={"tiergate": str(exe)})
    engine.import_image("tg-rollout-restricted:1", {"io.tiergate.tier": "restricted"})
    name = f"tg-join-{secrets.token_hex(3)}"
    proc = engine.run("tg-rollout-restricted:1", "true", rm=False,
                      args=("--runtime", "tiergate", "--name", name, "-e", "HOSTNAME=evil", "--hostname", "evil"))
    assert proc.returncode == 0, proc.stderr
    cid = engine.docker("ps", "-aq", "--no-trunc", "-n", "1", check=True).stdout.strip()
    try:
        (rec,) = [json.loads(x) for x in log.read_text().splitlines() if json.loads(x).get("container") == cid]
        assert rec["engine"] == "docker" and rec["tier"] == "restricted" and rec["stage"] == "create"
        assert rec["name"] == name and rec["image_id"] and rec["duration_ms"] > 0
        for key in (cid[:12], name):
            out = tiergate("log", "--file", log, "--container", key, "--json").stdout.splitlines()
            assert {json.loads(x)["container"] for x in out} == {cid}, key
        assert not any(json.loads(x).get("container") == "evil" for x in log.read_text().splitlines())
    finally:
        engine.docker("rm", "-f", cid)


# -- metrics ---------------------------------------------------------------------------------

def test_metrics_never_decrease_across_log_rotation(rollout, tg_images):
    """logrotate-style: the log is moved away (twice: nothing of the first part is left), starts go on."""
    hooks, _ = rollout
    before: dict[str, float] = {}
    for round_ in range(3):
        started(hooks.run(tg_images["restricted"], "true"))
        refused(hooks.run(tg_images["restricted"], "true", args=["--cap-add", "SYS_ADMIN"]), "refused")
        now = scrape(hooks.log)
        for name, value in before.items():
            if "timestamp" not in name and name != "tiergate_policy_error":
                assert now.get(name, 0) >= value, (round_, name, value, now.get(name))
        assert now['tiergate_decisions_total{tier="restricted",outcome="allowed"}'] == round_ + 1
        before = now
        hooks.log.unlink()  # rotated away and gone: the next record starts a new file
        Path(f"{hooks.log}.1").unlink(missing_ok=True)
    assert before['tiergate_refusals_total{reason_kind="escalation"}'] == 3
    assert any(k.startswith('tiergate_hook_duration_seconds_bucket{stage="precreate",tier="restricted",'
                            'outcome="allowed",le="10.0"}') for k in before)


# -- suggest (issue 19: syscalls, AF_PACKET, observed capabilities, flows) ----------------------

WORKLOAD = ("unshare -m true; a=$?; chroot / true; b=$?; mkdir -p /tmp/m; mount -t tmpfs t /tmp/m; c=$?; "
            "/tgprobe packet >/dev/null; d=$?; timeout 5 wget -q -O - http://{peer}/ >/dev/null; e=$?; "
            "echo rc=$a,$b,$c,$d,$e; sleep 1")
NEIGHBOUR = "hostname tg-neighbour; timeout 5 wget -q -O - http://{peer}:8080/ >/dev/null; echo rc=$?; sleep 1"
ALL_OK = "rc=0,0,0,0,0"


def _audit_policy(path: Path, base: str, extra: str = "", audit: bool = True) -> Path:
    text = base
    if audit:
        text = text.replace("version = 1\n", "version = 1\naudit = true\n", 1)
    path.write_text(text + extra)
    path.chmod(0o644)
    return path


def test_suggest_from_an_audited_workload_and_its_delta_holds(podman, tmp_path):
    """Audit mode, tier queue-worker (egress only to the broker): the workload unshares, chroots, mounts,
    opens an AF_PACKET socket and fetches from a peer outside the allowlist; a neighbour on the same
    network sets its hostname and fetches from another peer. suggest names exactly each one's own."""
    import subprocess
    import sys

    from harness import stop_pid, wait_until
    from roles_env import Peers, build_probe, make_test_policy, skip_unless_tools

    skip_unless_tools()
    tag = secrets.token_hex(3)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    probe = build_probe(tmp_path / "tgprobe")
    image_a, image_b, image_c = (f"localhost/tg-suggest-{x}-{tag}" for x in "abc")
    for ref in (image_a, image_b):
        podman.import_image(ref, {"io.tiergate.tier": "queue-worker"})
    peers = Peers(podman, tmp_path / "peers")
    try:
        peers.setup()
        base = make_test_policy(peers, etc / "test.toml").read_text()
        audited = Hooks(podman, tmp_path / "audit", policy=_audit_policy(etc / "audit.toml", base))
        workload = WORKLOAD.format(peer=peers.api)
        net = ["--network", peers.network, "-v", f"{probe}:/tgprobe:ro"]
        caps = ["--cap-add", "SYS_ADMIN", "--cap-add", "NET_RAW"]
        evidence = tmp_path / "kernel.jsonl"
        collector = subprocess.Popen([sys.executable, "-m", "tiergate.cli.main", "collect", "--out", str(evidence)],
                                     cwd=REPO, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: evidence.exists() and '"kind": "collector"' in evidence.read_text(), timeout=30,
                       what="the collector's first record (it has opened /dev/kmsg and its tracing instance)")
            runs = [("a", image_a, [*net, *caps], workload), ("b", image_b, net, NEIGHBOUR.format(peer=peers.other))]
            procs = [subprocess.Popen(podman_argv(podman, audited.hooks_dir, "run", "--rm", "--name", f"tg-s{x}-{tag}",
                                                  *args, image, "sh", "-c", cmd), env=podman.env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for x, image, args, cmd in runs]
            outs = [p.communicate(timeout=120) for p in procs]
            assert all(p.returncode == 0 for p in procs), outs
            time.sleep(1.0)  # the collector reads the flow sets of the containers it saw end
        finally:
            stop_pid(collector.pid)
            collector.wait(10)
        assert ALL_OK in outs[0][0] and "rc=0" in outs[1][0], outs  # audit: they ran as asked, nothing was stopped
        kernel = [json.loads(x) for x in evidence.read_text().splitlines()]
        assert any(k["kind"] == "syscall" for k in kernel), "no seccomp log records: is auditd taking them?"

        def suggested(target: str) -> dict:
            out = tiergate("--policy", etc / "audit.toml", "suggest", target, "--file", audited.log,
                           "--evidence", evidence, "--json").stdout
            return json.loads(out)

        a, b = suggested(image_a), suggested(f"tg-sb-{tag}")
        assert a["audited_as"] == "queue-worker" and len(a["containers"]) == 1 and b["containers"] != a["containers"]
        assert a["delta"]["seccomp_allow"] == ["chroot", "mount", "unshare"], kernel
        assert "socket(AF_PACKET)" in a["evidence"] and "socket(AF_PACKET)" not in b["evidence"]
        assert a["delta"]["capabilities"] == ["CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_CHROOT"], a["capabilities"]
        assert a["capabilities_source"].startswith("observed"), a["capabilities_source"]
        assert {"CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_CHROOT"} <= set(a["capabilities"])  # seen, not inferred
        assert a["delta"]["egress"] == [{"cidr": f"{peers.api}/32", "ports": [80], "proto": "tcp"}], a["flows"]
        (flow,) = a["flows"]
        assert flow["count"] >= 1 and flow["first"] <= flow["last"] and flow["containers"] == a["containers"]
        assert all(e["containers"] == a["containers"] for e in a["evidence"].values())
        assert b["delta"]["seccomp_allow"] == ["sethostname"], kernel
        assert not {"CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_CHROOT"} & set(b["capabilities"]), b["capabilities"]
        assert b["delta"]["egress"] == [{"cidr": f"{peers.other}/32", "ports": [8080], "proto": "tcp"}], b["flows"]

        # `tiergate status` of a running audit container shows the same per-flow counts
        name = f"tg-sd-{tag}"
        started(audited.podman_cmd("run", "-d", "--name", name, *net, image_a, "sh", "-c",
                                   f"timeout 5 wget -q -O - http://{peers.api}/ >/dev/null; sleep 30"))
        try:
            pid = podman.podman("inspect", "--format", "{{.State.Pid}}", name, check=True).stdout.strip()
            wait_until(lambda: json.loads(tiergate("status", "--pid", pid, "--log", audited.log, "--json").stdout)[0]
                       .get("would_drop_flows"), timeout=15, what="a would-drop flow in status")
            (rep,) = json.loads(tiergate("status", "--pid", pid, "--log", audited.log, "--json").stdout)
            assert rep["mode"] == "audit" and rep["would_drop_flows"] == [
                {"peer": peers.api, "proto": "tcp", "port": 80, "packets": 1}], rep
        finally:
            audited.podman_cmd("rm", "-f", "-t", "0", name)

        # applying the delta lets the workload run enforced; the unmodified tier still stops it
        snippet = a["snippet"]
        new_tier = re.search(r"^\[tiers\.([a-z0-9-]+)\]", snippet, re.M).group(1)
        enforced = Hooks(podman, tmp_path / "enforced",
                         policy=_audit_policy(etc / "new.toml", base, "\n" + snippet, audit=False))
        podman.import_image(image_c, {"io.tiergate.tier": new_tier})
        ok = enforced.run(image_c, "sh", "-c", workload, args=[*net, *caps])
        assert ok.returncode == 0 and ALL_OK in ok.stdout, (snippet, ok.stdout, ok.stderr[-500:])
        assert enforced.last()["tier"] == new_tier and enforced.last()["mode"] == "enforce"
        control = enforced.run(image_a, "sh", "-c", workload, args=[*net, *caps])
        assert ALL_OK not in control.stdout and enforced.last()["tier"] == "queue-worker", control.stdout
        control = enforced.run(image_a, "sh", "-c", workload, args=net)  # not even refused: each probe fails
        assert control.returncode == 0 and "rc=1,1,1,1," in control.stdout and ",0\n" not in control.stdout, control
    finally:
        podman.remove_containers()
        peers.teardown()
        podman.rmi(image_a, image_b, image_c)
