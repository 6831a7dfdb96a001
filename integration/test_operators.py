"""Operator commands against real containers: doctor, log, metrics, status, label.

One scratch podman (the session's podman_env) gets tiergate's precreate hook
for this module; real containers started through it write the decision log
that `log` and `metrics` read; `status` looks at running containers and is
checked against /proc; `label` makes an image whose label the hook honours;
`doctor` is checked against what the kernel here really offers.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cgroup_mode, probe_status, run_cmd

from tiergate.engines import front

pytestmark = pytest.mark.podman

TIERGATE = [sys.executable, "-m", "tiergate.cli.main"]
IMAGES = {
    "localhost/tiergate-ops-restricted": {"io.tiergate.tier": "restricted"},
    "localhost/tiergate-ops-isolated": {"io.tiergate.tier": "isolated"},
    "localhost/tiergate-ops-plain": {},
    "registry.example/ops/untrusted": {"io.tiergate.tier": "privileged"},
}


def tg(*args, env=None, timeout=120, check=False) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env or {})
    return run_cmd([*TIERGATE, *map(str, args)], env=full, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def ops(podman_env, it_dir):
    """Hook installed, images imported, a few containers run (one refused); yields a dict of paths."""
    d = it_dir / "operators"
    d.mkdir(exist_ok=True)
    log = d / "decisions.jsonl"
    tg("install", "--engine", "podman", "--hooks-dir", podman_env.hooks_dir, "--bin-dir", d / "bin",
       "--log", log, "--cache-dir", d / "cache", check=True)
    for name, labels in IMAGES.items():
        podman_env.import_image(name, labels)
    runs = {}
    for name in IMAGES:
        runs[name] = podman_env.run(name, "/bin/sh", "-c", "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
                                    timeout=120)
        assert runs[name].returncode == 0, runs[name].stderr
    refused = podman_env.run("localhost/tiergate-ops-restricted", "true", args=["--privileged"], timeout=120)
    assert refused.returncode != 0
    yield {"dir": d, "log": log, "runs": runs, "hooks_dir": podman_env.hooks_dir}
    podman_env.clear_hooks()
    podman_env.remove_containers()


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


# -- doctor ------------------------------------------------------------------------------

def _landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1))


def test_doctor_matches_what_the_kernel_offers(ops, podman_env):
    proc = tg("doctor", "--json", "--hooks-dir", ops["hooks_dir"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is True

    status = Path("/proc/self/status").read_text()
    has_seccomp = "Seccomp:" in status and Path("/proc/sys/kernel/seccomp/actions_avail").exists()
    assert (checks["seccomp"]["status"] == "ok") == has_seccomp
    assert has_seccomp  # this host offers seccomp filters (host-facts.md)

    aa = Path("/sys/module/apparmor/parameters/enabled")
    aa_on = aa.exists() and aa.read_text().strip() == "Y" and Path("/sys/kernel/security/apparmor").is_dir()
    assert (checks["apparmor"]["status"] == "ok") == aa_on
    assert not aa_on and "not enabled" in checks["apparmor"]["detail"]

    mode = cgroup_mode()
    assert {"unified": "v2", "hybrid": "hybrid", "legacy": "v1"}[mode] in checks["cgroups"]["detail"]

    max_userns = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    assert (checks["user namespaces"]["status"] == "ok") == (max_userns > 0)
    assert str(max_userns) in checks["user namespaces"]["detail"]

    abi = _landlock_abi()
    assert (checks["landlock"]["status"] == "ok") == (abi > 0)
    if abi > 0:
        assert f"ABI version {abi}" in checks["landlock"]["detail"]

    nft_ok = run_cmd(["/usr/sbin/nft", "--check", "-f", "-"], input="table inet tg_it_probe { }\n", timeout=10)
    assert (checks["nftables"]["status"] == "ok") == (nft_ok.returncode == 0)

    version = run_cmd([podman_env.binary, "--version"], timeout=30).stdout.strip()
    assert version in checks["engine podman"]["detail"]

    hook = checks["podman hook"]
    assert hook["status"] == "ok", hook
    assert str(ops["hooks_dir"] / "99-tiergate-precreate.json") in hook["detail"]
    hook_exe = ops["dir"] / "bin" / "tiergate-hook"
    assert f"{hook_exe} is the compiled front of" in hook["detail"], hook  # cc is on this host
    launcher = Path(front.launcher_of(hook_exe) or hook_exe).read_text().splitlines()[0]
    interp = launcher[2:].split()[0]
    assert f"interpreter {launcher[2:]}" in hook["detail"] and os.path.realpath(interp) in hook["detail"]
    assert checks["policy"]["status"] == "ok"

    table = tg("doctor", "--hooks-dir", ops["hooks_dir"])
    assert table.returncode == 0
    assert "\033[" not in table.stdout  # not a tty: no colours in CI logs
    assert re.search(r"^seccomp\s+ok\s", table.stdout, re.M)
    assert re.search(r"^apparmor\s+warn\s", table.stdout, re.M)


def test_doctor_reads_hooks_dir_from_containers_conf(ops, podman_env):
    """Podman's own account (CONTAINERS_CONF: the one file it reads): our hook is in the dir it reads;
    warn, since that podman's runtime is plain runc (exec not hardened, a missing hook skipped)."""
    proc = tg("doctor", "--json", env={"CONTAINERS_CONF": str(podman_env.conf_path)})
    check = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["podman engine"]
    assert check["status"] == "warn" and str(ops["hooks_dir"]) in check["detail"], check
    assert f"hooks_dir in {podman_env.conf_path}" in check["detail"] and "podman exec is not hardened" in check["detail"]


def test_doctor_fails_on_a_broken_policy(tmp_path, ops):
    bad = tmp_path / "policy.toml"
    bad.write_text('version = 1\nlabel_key = "io.tiergate.tier"\n[tiers.x]\nstrictness = "high"\n')
    proc = tg("--policy", bad, "doctor", "--hooks-dir", ops["hooks_dir"])
    assert proc.returncode == 1, proc.stdout
    assert re.search(r"^policy\s+fail\s+" + re.escape(str(bad)), proc.stdout, re.M)
    assert "cannot enforce" in proc.stdout


# -- log and metrics -------------------------------------------------------------------------

def test_log_shows_real_decisions(ops):
    recs = [r for r in records(ops["log"]) if r["stage"] == "precreate"]
    out = tg("log", "--file", ops["log"], "--stage", "precreate").stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "STAGE"]
    assert len(lines) == 1 + len(recs)
    untrusted = [line for line in lines if "registry.example/ops/untrusted" in line]
    assert untrusted and "privileged->baseline" in untrusted[0] and "allowed" in untrusted[0]
    restricted_id = next(r["container"] for r in recs if r["image"].startswith("localhost/tiergate-ops-restricted")
                         and r["outcome"] == "allowed")

    refused = tg("log", "--file", ops["log"], "--refused").stdout.splitlines()
    assert len(refused) == 2 and " refused " in refused[1]
    assert "refuses a container that" in refused[1] or "privileged" in refused[1]

    iso = tg("log", "--file", ops["log"], "--tier", "isolated", "--json").stdout.splitlines()
    assert iso and all(json.loads(x)["tier"] == "isolated" for x in iso)
    # --network none: runc makes an empty namespace (loopback only), so no rules and no createRuntime hook
    assert all(json.loads(x)["stage"] == "precreate" and "loopback only" in json.loads(x)["network"] for x in iso)

    one = tg("log", "--file", ops["log"], "--container", restricted_id[:6], "--json").stdout.splitlines()
    assert [json.loads(x)["container"] for x in one] == [restricted_id] * len(one)

    assert len(tg("log", "--file", ops["log"], "--since", "1h", "--json").stdout.splitlines()) == len(records(ops["log"]))
    future = tg("log", "--file", ops["log"], "--since", "2999-01-01")
    assert future.returncode == 0 and future.stdout == ""
    assert tg("log", "--file", ops["log"], "--since", "yesterday").returncode == 2


def test_metrics_from_the_real_log(ops):
    out = ops["dir"] / "textfile" / "tiergate.prom"
    out.parent.mkdir(exist_ok=True)
    proc = tg("metrics", "--file", ops["log"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert not Path(str(out) + ".tmp").exists()
    text = out.read_text()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) tiergate_\w+ ", line)
            continue
        m = re.fullmatch(r'(tiergate_\w+)(\{[^}]*\})? (\S+)', line)
        assert m, line
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    recs = records(ops["log"])
    pre = [r for r in recs if r["stage"] == "precreate"]
    allowed_restricted = sum(1 for r in pre if r.get("tier") == "restricted" and r["outcome"] == "allowed")
    assert samples['tiergate_decisions_total{tier="restricted",outcome="allowed"}'] == allowed_restricted
    assert samples['tiergate_refusals_total{reason_kind="escalation"}'] == 1
    timed = [r for r in pre if "duration_ms" in r]

    def total(suffix: str) -> float:  # the histogram is per stage, tier and outcome: sum over precreate's
        return sum(v for k, v in samples.items() if k.startswith("tiergate_hook_duration_seconds_" + suffix)
                   and 'stage="precreate"' in k)

    assert total("count{") == len(timed)
    assert total("bucket{") and total('bucket{') >= len(timed)
    assert sum(v for k, v in samples.items() if 'stage="precreate"' in k and k.endswith('le="+Inf"}')) == len(timed)
    assert sum(v for k, v in samples.items() if 'stage="precreate"' in k and k.endswith('le="0.1"}')) == \
        sum(1 for r in timed if r["duration_ms"] <= 100)


# -- status -------------------------------------------------------------------------------------

def test_status_on_running_containers(ops, podman_env):
    names = {"tg-ops-status-r": "localhost/tiergate-ops-restricted", "tg-ops-status-i": "localhost/tiergate-ops-isolated"}
    try:
        for name, image in names.items():
            podman_env.run(image, "sleep", "30", args=["-d", "--name", name], rm=False, check=True, timeout=120)
        pids = {n: int(podman_env.podman("inspect", "--format", "{{.State.Pid}}", n, check=True).stdout) for n in names}
        ids = {n: podman_env.podman("inspect", "--format", "{{.Id}}", n, check=True).stdout.strip() for n in names}

        proc = tg("status", "tg-ops-status-r", "--log", ops["log"], "--json")
        assert proc.returncode == 0, proc.stderr
        [rep] = json.loads(proc.stdout)
        live = probe_status(Path(f"/proc/{pids['tg-ops-status-r']}/status").read_text())
        assert rep["pid"] == pids["tg-ops-status-r"] and rep["id"] == ids["tg-ops-status-r"]
        assert rep["cap_eff"] == live["CapEff"] == "0000000000000400"
        assert rep["capabilities"] == ["CAP_NET_BIND_SERVICE"]
        assert rep["no_new_privs"] == live["NoNewPrivs"] == "1"
        assert rep["seccomp"] == "filter" and live["Seccomp"] == "2"
        assert rep["tier"] == "restricted" and rep["tier_source"] == "bundle annotations"
        assert rep["apparmor"] is None and rep["network_policy"] is None

        # by id prefix, as text
        text = tg("status", ids["tg-ops-status-i"][:10], "--log", ops["log"]).stdout
        live_i = probe_status(Path(f"/proc/{pids['tg-ops-status-i']}/status").read_text())
        assert f"CapEff:        {live_i['CapEff']} (none)" in text
        assert "tier:          isolated" in text and "network:       policy none" in text

        # all containers; and --pid
        every = json.loads(tg("status", "--json", "--log", ops["log"]).stdout)
        assert {ids[n] for n in names} <= {r["id"] for r in every}
        by_pid = json.loads(tg("status", "--pid", pids["tg-ops-status-i"], "--json").stdout)
        assert by_pid[0]["tier"] == "isolated" and by_pid[0]["network_policy"] == "none"
    finally:
        for name in names:
            podman_env.podman("stop", "--time", "0", name, timeout=60)
            podman_env.podman("rm", "--force", name, timeout=60)
    assert tg("status", "tg-ops-status-r", "--log", ops["log"]).returncode == 2


# -- label --------------------------------------------------------------------------------------

def test_label_makes_an_image_the_hook_honours(ops, podman_env):
    new = "localhost/tiergate-ops-labelled:v1"
    proc = tg("label", "localhost/tiergate-ops-plain", "restricted", "--tag", new, "--engine", "podman",
              env=podman_env.env)
    assert proc.returncode == 0, proc.stderr
    assert f"{new}: io.tiergate.tier=restricted" in proc.stdout
    assert podman_env.image_labels(new)["io.tiergate.tier"] == "restricted"
    run = podman_env.run(new, "/bin/sh", "-c", "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status", timeout=120)
    assert run.returncode == 0, run.stderr
    assert probe_status(run.stdout)["CapEff"] == "0000000000000400"
    last = [r for r in records(ops["log"]) if r["stage"] == "precreate"][-1]
    assert last["image"] == new and last["label"] == "restricted" and last["tier"] == "restricted"

    bad = tg("label", "localhost/tiergate-ops-plain", "nosuchtier", env=podman_env.env)
    assert bad.returncode == 2 and "unknown tier 'nosuchtier'" in bad.stderr

    capped = tg("label", "localhost/tiergate-ops-plain", "privileged", "--tag", "registry.example/ops/capped:1",
                env=podman_env.env)
    assert capped.returncode == 0, capped.stderr
    assert "will grant baseline" in capped.stderr
