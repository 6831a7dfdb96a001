"""tiergate as a Kubernetes runtime handler: containerd 1.6's CRI plugin driven as kubelet drives it.

A private node (cri.CriNode: containerd with CRI, a CNI bridge in a namespace
of its own, images imported without a registry) gets tiergate's handler from
`tiergate install --engine containerd --config <its config>`. Every test
runs the same pod under the plain `runc` handler (the control) and under
`tiergate`; containers get the image by the id ImageStatus reports, as
kubelet sends it, and no pod carries a tiergate annotation unless it says so.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import grpc
import pytest

import cri
from harness import caps_from_hex, probe_status, wait_until
from tiergate_fixtures import STATUS_SH, compiled_policy, tiergate

pytestmark = pytest.mark.docker

LABEL = "io.tiergate.tier"
IMAGES = {  # key -> (reference, labels); no name is trusted above baseline (shipped policy)
    "restricted": ("localhost/tiergate-cri-restricted:1", {LABEL: "restricted"}),
    "plain": ("localhost/tiergate-cri-plain:1", {}),
    "daemon": ("registry.example/cni-daemon:1", {LABEL: "privileged"}),  # no trust rule matches its name
    "web": ("localhost/tiergate-cri-web:1", {LABEL: "web"}),  # EXPOSE 8080
}
EXPOSE = {"web": ["8080/tcp"]}
NODE_POLICY = """
[namespaces.kube-system]
max_tier = "privileged"

[namespaces.shop]
min_tier = "restricted"
"""
DEFAULT_CAPS = caps_from_hex("00000000a80425fb")  # containerd's default set


@pytest.fixture(scope="module")
def node(it_dir, busybox_rootfs):
    """The node: shipped policy plus namespace rules; tiergate's handler beside runc."""
    from tiergate.core.names import configs_dir

    d = it_dir / "cri"
    n = cri.CriNode(d / "node", busybox_rootfs.tar)
    n.write_config()
    tg = d / "tg"  # tiergate's own state apart from the node's: no container may mount it
    tg.mkdir(parents=True, exist_ok=True)
    policy = tg / "policy.toml"
    policy.write_text((Path(configs_dir()) / "policy.toml").read_text() + NODE_POLICY)
    n.log = tg / "decisions.jsonl"
    tiergate("install", "--engine", "containerd", "--config", n.config, "--bin-dir", tg / "bin",
             "--policy", policy, "--log", n.log, "--cache-dir", tg / "cache")
    try:
        n.start()
        n.images = {key: n.import_image(ref, labels, expose=EXPOSE.get(key, ())) for key, (ref, labels) in IMAGES.items()}
        yield n
    finally:
        n.stop()


@pytest.fixture(autouse=True)
def pods_removed(node):
    yield
    for sid in list(node.pods):
        node.remove_pod(sid)


def records(node) -> list[dict]:
    return [json.loads(line) for line in node.log.read_text().splitlines()] if node.log.exists() else []


def run(node, handler: str, image: str = "plain", *, cmd=("/bin/sleep", "3600"), namespace: str = "default",
        annotations=None, host_network: bool = False, sidecar: str | None = None, **container):
    """One pod with one container (plus a sidecar): (sandbox config, {name: container id}) once started."""
    config = node.sandbox_config(f"p-{handler}", namespace=namespace, annotations=annotations,
                                 host_network=host_network, privileged=container.get("privileged", False))
    sid = node.run_pod(config, handler)
    ids = {"app": node.create(sid, config, node.images[image], cmd, **container)}
    if sidecar:
        ids["sidecar"] = node.create(sid, config, node.images[sidecar], ("/bin/sleep", "3600"), name="sidecar")
    for cid in ids.values():
        node.start_container(cid)
    return config, ids


def status(node, cid: str) -> dict[str, str]:
    r = node.exec_sync(cid, "/bin/sh", "-c", STATUS_SH)
    assert r.exit_code == 0, r.stderr
    return probe_status(r.stdout.decode())


def refused(call) -> str:
    """The CRI error of a call that must fail; its detail is what kubelet shows."""
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value.details()


# -- the image's label alone picks the tier ---------------------------------------

def test_image_label_picks_the_tier(node):
    _, control = run(node, "runc", "restricted", cmd=("/bin/sh", "-c", f"{STATUS_SH}; sleep 3600"))
    s = status(node, control["app"])
    assert caps_from_hex(s["CapEff"]) == DEFAULT_CAPS and s["NoNewPrivs"] == "0" and s["Seccomp"] == "0"

    config, ids = run(node, "tiergate", "restricted", cmd=("/bin/sh", "-c", f"{STATUS_SH}; sleep 3600"))
    log = wait_until(lambda: "Seccomp:" in (text := cri.container_log(node, config)) and text,
                     timeout=20, what="the container's status lines in its log")
    first = probe_status(log)  # the container's own process
    assert caps_from_hex(first["CapEff"]) == {"CAP_NET_BIND_SERVICE"}
    assert first["NoNewPrivs"] == "1" and first["Seccomp"] == "2"
    rec = [r for r in records(node) if r.get("container") == ids["app"] and r.get("stage") == "create"][-1]
    assert rec["tier"] == "restricted" and rec["image"] == IMAGES["restricted"][0] and "label" in rec["why"]


def test_exec_is_hardened(node):
    _, ids = run(node, "tiergate", "restricted")
    s = status(node, ids["app"])  # ExecSync: containerd builds the process from its defaults
    assert caps_from_hex(s["CapEff"]) == {"CAP_NET_BIND_SERVICE"} and s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"


def test_python_runs_only_for_create_and_exec(node):
    """Issue 20: a pod start runs tiergate's Python twice (the sandbox's create and the container's),
    an ExecSync once; the shim's compiled front hands start, state, kill and delete to runc itself. Every
    Python run records one decision, so the log counts them."""
    before, pods = len(records(node)), list(node.pods)
    _, ids = run(node, "tiergate", "restricted")
    (sid,) = [p for p in node.pods if p not in pods]
    status(node, ids["app"])
    runs = [(r.get("stage"), r.get("container"), r.get("shim")) for r in records(node)[before:]]
    assert sorted(runs) == sorted([("create", sid, True), ("create", ids["app"], True), ("exec", ids["app"], True)])


def test_pod_starts_and_execs_are_decided_by_the_shims_warm_helper(node):
    """Through the compiled front (engines/front.c): once the shim's helper runs, a pod's creates
    and an ExecSync are decided by its children (their records name it), and the tier holds."""
    from harness import warm_helper_pid
    from tiergate.engines import warm
    from tiergate.engines.shim import PY_LAUNCHER

    run(node, "tiergate", "restricted")  # a helper runs from here on (this start may have started it)
    pid = warm_helper_pid(warm.key_in((node.dir.parent / "tg" / "bin" / PY_LAUNCHER).read_text()), timeout=60)
    before = len(records(node))
    _, ids = run(node, "tiergate", "restricted")
    assert caps_from_hex(status(node, ids["app"])["CapEff"]) == {"CAP_NET_BIND_SERVICE"}
    runs = [(r.get("stage"), r.get("outcome"), r.get("warm")) for r in records(node)[before:]]
    assert sorted(runs) == [("create", "allowed", pid)] * 2 + [("exec", "allowed", pid)], runs


def test_a_pods_namespace_is_closed_to_metadata_from_inside(node):
    """The pod's namespace (CNI's, named in both specs) is programmed while runc creates each of the
    pod's containers; from inside the app container the metadata rules are there and a connect to
    169.254.169.254 is refused at once (EACCES from the prohibit route). Control: the same pod
    under runc has no such rule and its connect is not refused that way."""
    probe = ("ip rule; timeout 5 wget -q -O - http://169.254.169.254/ 2>&1; true")

    def inside(handler: str) -> tuple[str, dict]:
        pods = list(node.pods)
        _, ids = run(node, handler)
        (sid,) = [p for p in node.pods if p not in pods]
        r = node.exec_sync(ids["app"], "/bin/sh", "-c", probe)
        return r.stdout.decode() + r.stderr.decode(), {"sandbox": sid, **ids}

    out, _ = inside("runc")
    assert "169.254.0.0/16" not in out and "Permission denied" not in out, out
    out, ids = inside("tiergate")
    assert re.search(r"^101:\s+from all to 169\.254\.0\.0/16 .*prohibit", out, re.M), out
    assert "Permission denied" in out, out
    creates = {r["container"]: r for r in records(node) if r.get("stage") == "create" and r.get("outcome") == "allowed"}
    assert {creates[ids[k]].get("netns_programmed") for k in ("sandbox", "app")} == {"ahead"}, creates


def test_the_sandbox_is_filtered_for_the_native_abi_alone(node):
    """The pause container runs under its tier's seccomp filter (Seccomp 2 in its own status; the
    control pod's pause under runc has none), built for x86_64 alone: the spec runc loaded names
    one ABI where the app container's names i386 too (core/modifiers/seccomp.py native_only)."""
    import os

    if os.uname().machine != "x86_64":
        pytest.skip(f"the shipped tiers' ABIs are x86_64's family; this host is {os.uname().machine}")

    def pause(handler: str) -> tuple[dict, dict, str]:
        pods = list(node.pods)
        _, ids = run(node, handler)
        (sid,) = [p for p in node.pods if p not in pods]
        task = node.state / "io.containerd.runtime.v2.task" / "k8s.io"
        spec = json.loads((task / sid / "config.json").read_text())
        app = json.loads((task / ids["app"] / "config.json").read_text())
        pid = (task / sid / "init.pid").read_text().strip()
        return spec, app, probe_status(Path(f"/proc/{pid}/status").read_text())["Seccomp"]

    spec, _, seccomp = pause("runc")
    assert "seccomp" not in spec.get("linux", {}) and seccomp == "0"  # control: pause unfiltered
    spec, app, seccomp = pause("tiergate")
    assert seccomp == "2"
    assert spec["linux"]["seccomp"]["architectures"] == ["SCMP_ARCH_X86_64"]
    assert "SCMP_ARCH_X86" in app["linux"]["seccomp"]["architectures"]  # a tenant's container keeps i386


def test_pod_without_any_annotation_starts(node):
    """An unlabelled image, no annotation: the pod (its sandbox too) runs under default_tier."""
    policy = compiled_policy(str(node.dir.parent / "tg" / "policy.toml"))
    baseline = set(policy["tiers"]["baseline"]["capabilities"])
    _, control = run(node, "runc", "plain")
    s = status(node, control["app"])
    assert caps_from_hex(s["CapEff"]) == DEFAULT_CAPS and s["Seccomp"] == "0"
    _, ids = run(node, "tiergate", "plain")
    s = status(node, ids["app"])
    assert caps_from_hex(s["CapEff"]) == baseline and s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
    sandbox = [r for r in records(node) if r.get("stage") == "create" and r.get("tier") and "sandbox" in r.get("why", "")]
    assert sandbox and sandbox[-1]["tier"] == "baseline" and sandbox[-1]["outcome"] == "allowed"


def test_sidecar_keeps_its_own_tier(node):
    _, ids = run(node, "tiergate", "restricted", sidecar="plain")
    app, side = status(node, ids["app"]), status(node, ids["sidecar"])
    assert caps_from_hex(app["CapEff"]) == {"CAP_NET_BIND_SERVICE"}
    assert "CAP_CHOWN" in caps_from_hex(side["CapEff"]) and side["Seccomp"] == "2"


def test_namespace_floor(node):
    """[namespaces.shop] min_tier = restricted: an unlabelled image runs restricted there, baseline elsewhere."""
    _, ids = run(node, "tiergate", "plain", namespace="shop")
    assert caps_from_hex(status(node, ids["app"])["CapEff"]) == {"CAP_NET_BIND_SERVICE"}


# -- refusals reach kubelet --------------------------------------------------------

@pytest.mark.parametrize("attack", [
    {"add_caps": ["SYS_ADMIN"]},
    {"mounts": [("CONTAINERD_SOCK", "/run/containerd/containerd.sock")]},
])
def test_escalations_refused_with_the_reason(node, attack):
    attack = dict(attack)
    if "mounts" in attack:
        attack["mounts"] = [(str(node.sock), dest) for _, dest in attack["mounts"]]
    run(node, "runc", "restricted", **attack)  # the control: containerd runs it
    detail = refused(lambda: run(node, "tiergate", "restricted", **attack))
    assert "tiergate: refused:" in detail, detail


def test_privileged_refused_with_the_reason(node):
    _, control = run(node, "runc", "restricted", privileged=True)
    assert "CAP_SYS_ADMIN" in caps_from_hex(status(node, control["app"])["CapEff"])
    detail = refused(lambda: run(node, "tiergate", "restricted", privileged=True))
    assert "tiergate: refused:" in detail and "restricted" in detail, detail


@pytest.mark.parametrize("field", ["host_network", "host_pid", "host_ipc"])
def test_host_namespace_pod_refused_not_broken(node, field):
    """hostNetwork / hostPID under baseline: the sandbox is refused with the reason (its stderr is
    read-only: the line reaches kubelet through runc's --log), never clamped into a broken pod."""
    node.run_pod(node.sandbox_config("hn-runc", **{field: True}), "runc")  # the control
    detail = refused(lambda: node.run_pod(node.sandbox_config("hn-tg", **{field: True}), "tiergate"))
    assert "tiergate: refused:" in detail, detail
    assert {"host_network": "hostNetwork", "host_pid": "hostPID", "host_ipc": "hostIPC"}[field] in detail, detail


def test_trusted_system_pod_keeps_host_network(node):
    """kube-system may be privileged (a namespace only the cluster admin fills): a CNI-daemon-like pod
    keeps the node's network, where the node's bridge is."""
    _, ids = run(node, "tiergate", "plain", namespace="kube-system", host_network=True,
                 annotations={LABEL: "privileged"})
    r = node.exec_sync(ids["app"], "/bin/ip", "link")
    assert r.exit_code == 0 and b"tgcri0" in r.stdout, r.stdout


def test_digest_trusted_container_gets_its_tier(node):
    """A trust rule by digest (the image id CRI resolved, from containerd's record): the same image
    that is clamped to baseline by name gets privileged once its digest is trusted."""
    policy = node.dir.parent / "tg" / "policy.toml"
    before = policy.read_text()
    _, ids = run(node, "tiergate", "daemon", privileged=True)
    assert "CAP_SYS_ADMIN" not in caps_from_hex(status(node, ids["app"])["CapEff"])  # clamped
    rule = f'[[trust]]\ndigest = "{node.images["daemon"]}"\nmax_tier = "privileged"\n\n'
    policy.write_text(before.replace("[[trust]]", rule + "[[trust]]", 1))
    try:
        _, ids = run(node, "tiergate", "daemon", privileged=True)
        assert "CAP_SYS_ADMIN" in caps_from_hex(status(node, ids["app"])["CapEff"])
        rec = [r for r in records(node) if r.get("container") == ids["app"] and r.get("stage") == "create"][-1]
        assert rec["tier"] == "privileged" and "digest" in rec["why"]
    finally:
        policy.write_text(before)


def test_web_pod_takes_probes_on_its_exposed_port_only(node):
    """Tier web (ingress "published"): what the node sends (kubelet's probes; Services arrive DNAT-ed
    the same way) reaches the image's EXPOSEd port, read from the image config, and nothing else."""
    serve = ("/bin/sh", "-c", "mkdir -p /tmp/w && echo ok > /tmp/w/index.html && "
             "(httpd -f -p 8081 -h /tmp/w &) && exec httpd -f -p 8080 -h /tmp/w")

    def fetch(ids, port: int) -> bool:
        """One GET from the node's network namespace (the one the harness made), bounded."""
        out = node.exec_sync(ids["app"], "/bin/ip", "-4", "addr", "show", "eth0").stdout.decode()
        ip = re.search(r"inet ([0-9.]+)/", out).group(1)
        argv = ["/usr/bin/nsenter", f"--net=/run/netns/{node.netns}", "/usr/bin/timeout", "5",
                "/bin/busybox", "wget", "-q", "-O", "-", f"http://{ip}:{port}/"]
        return subprocess.run(argv, capture_output=True, timeout=10).stdout == b"ok\n"

    def serves(ids, port: int) -> bool:
        return wait_until(lambda: fetch(ids, port), timeout=10, what=f"port {port}")

    _, control = run(node, "runc", "web", cmd=serve)
    assert serves(control, 8080) and serves(control, 8081)
    _, ids = run(node, "tiergate", "web", cmd=serve)
    assert serves(ids, 8080)
    inside = node.exec_sync(ids["app"], "/bin/sh", "-c", "timeout 5 wget -q -O - http://127.0.0.1:8081/")
    assert inside.stdout == b"ok\n", inside.stderr  # 8081 is served, inside the pod
    assert not fetch(ids, 8081)  # but not exposed: the node cannot reach it


def test_default_handler_install(it_dir, busybox_rootfs):
    """`tiergate install --engine containerd --default`, nothing else: pods that name no RuntimeClass go
    through tiergate, and one without any annotation starts (its sandbox too), hardened."""
    d = it_dir / "cri-default"
    n = cri.CriNode(d / "node", busybox_rootfs.tar)
    n.write_config()
    tiergate("install", "--engine", "containerd", "--default", "--config", n.config, "--bin-dir", d / "tg" / "bin",
             "--log", d / "tg" / "decisions.jsonl", "--cache-dir", d / "tg" / "cache")
    try:
        n.start()
        image = n.import_image("registry.example/app:1")
        config = n.sandbox_config("p")
        cid = n.create(n.run_pod(config, ""), config, image)
        n.start_container(cid)
        s = status(n, cid)
        assert s["Seccomp"] == "2" and s["NoNewPrivs"] == "1" and "CAP_NET_RAW" in caps_from_hex(s["CapEff"])
        recs = [json.loads(line) for line in (d / "tg" / "decisions.jsonl").read_text().splitlines()]
        assert [r["tier"] for r in recs if r["stage"] == "create"] == ["baseline", "baseline"]
    finally:
        n.stop()


def test_doctor_checks_what_the_handler_containerd_runs_uses(node, tmp_path):
    """doctor follows the CRI handler's BinaryName in the config containerd loaded to the shim's settings:
    the policy, cache and log it names, and its launchers."""
    proc = tiergate("doctor", "--json", "--hooks-dir", tmp_path / "none", "--containerd-config", node.config,
                    "--containers-conf", tmp_path / "none.conf", check=False)
    where = f"{node.config} runtime tiergate"
    mine = {c["name"]: c for c in json.loads(proc.stdout)["checks"] if where in c["detail"]}
    assert {k: c["status"] for k, c in mine.items()} == {"launcher": "ok", "policy cache": "ok", "policy in use": "ok",
                                                       "decision log": "ok"}, mine
    assert str(node.log.parent / "policy.toml") in mine["policy in use"]["detail"]
    assert str(node.log) in mine["decision log"]["detail"]
