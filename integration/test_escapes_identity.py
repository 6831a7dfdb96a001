"""Issue 15, identity and trust: what the caller can set is no fact (real engines, as root).

One test per escape class. Each first shows the attack working where tiergate does
not stop it (the CONTROL: no tiergate, or a setting that allows it), then the same
attack with tiergate, checked from inside the container (CapEff, NoNewPrivs,
pids.max) or in the container's netns (nft ruleset).

- forged annotations (podman-runtime shim, podman hook): a CRI image-name
  annotation naming a trusted name, io.tiergate.tier, io.tiergate.ports
- trust by a local name: podman tag / docker tag to a name a policy's name rule trusts
- the caller loosening the image's own tier: --annotation, docker --label
- docker update lifting the pids limit
- uninstalling one hooks dir must not leave another without its program
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

import harness
from harness import caps_from_hex, probe_status, run_cmd
from test_podman_runtime import RuntimePodman
from tiergate_fixtures import LABEL, SHIPPED_POLICY, STATUS_SH, Hooks, tiergate, trusting_policy, with_trust_rules

RESTRICTED = {"CAP_NET_BIND_SERVICE"}  # CapEff 0000000000000400
# An operator's policy that still trusts a name (as the shipped one did): the attacks below
# try to borrow that name. Digest rules are the only trust podman images can earn.
NAME_RULE = '[[trust]]\nmatch = "localhost/tiergate-*"\nmax_tier = "privileged"\n\n'


def name_trusting_policy(dest: Path, loosen: bool = False) -> Path:
    """The shipped policy with the old name rule for localhost/tiergate-* put back first."""
    text = with_trust_rules(SHIPPED_POLICY.read_text(), NAME_RULE)
    if loosen:
        assert text.count("\ncaller_may_loosen = false\n") == 1
        text = text.replace("\ncaller_may_loosen = false\n", "\ncaller_may_loosen = true\n")
    dest.write_text(text)
    return dest


def status(proc: subprocess.CompletedProcess) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr[-600:]
    return probe_status(proc.stdout)


def caps(s: dict) -> set[str]:
    return caps_from_hex(s["CapEff"])


# ---------------------------------------------------------------------------------------------
# podman: the hook (precreate) and the podman-runtime shim
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pimg(podman_env):
    """Images imported under names nobody trusts, then given the trusted name by `podman tag`."""
    suffix = secrets.token_hex(3)
    refs = {"restricted": f"localhost/idt-{suffix}-restricted", "privileged": f"localhost/idt-{suffix}-privileged"}
    ids = {k: podman_env.import_image(ref, {LABEL: k}) for k, ref in refs.items()}
    refs["web"] = f"localhost/idt-{suffix}-web"
    ids["web"] = podman_env.import_image(refs["web"], {LABEL: "web"}, expose=[80])
    refs["web2222"] = f"localhost/idt-{suffix}-web2222"
    ids["web2222"] = podman_env.import_image(refs["web2222"], {LABEL: "web"}, expose=[2222])
    tagged = f"localhost/tiergate-idt-{suffix}"
    podman_env.podman("tag", refs["privileged"], tagged, check=True)
    yield {"refs": refs, "ids": ids, "tagged": tagged}
    podman_env.rmi(*refs.values(), tagged)


@pytest.fixture(scope="module")
def hooked(podman_env, it_dir, pimg):
    """tiergate's hook with a policy holding the name rule; and a control hooks dir with no hook."""
    d = it_dir / "idt-hooks"
    d.mkdir()
    policy = name_trusting_policy(d / "policy.toml")
    return {"tg": Hooks(podman_env, d / "tg", policy=policy),
            "control": Hooks(podman_env, d / "control", install=False), "policy": policy}


@pytest.mark.podman
def test_local_tag_borrows_no_trust_podman(hooked, pimg):
    """`podman tag` of a privileged-labelled image to a name a rule trusts: without tiergate it runs with
    every engine capability and NoNewPrivs 0; with tiergate it is baseline (a tag is no pull), while a
    digest rule on its full id lets the same image run privileged."""
    control = status(hooked["control"].run(pimg["tagged"], "sh", "-c", STATUS_SH, args=["--cap-add", "SYS_ADMIN"]))
    assert "CAP_SYS_ADMIN" in caps(control) and control["NoNewPrivs"] == "0"
    s = status(hooked["tg"].run(pimg["tagged"], "sh", "-c", STATUS_SH, args=["--cap-add", "SYS_ADMIN"]))
    assert "CAP_SYS_ADMIN" not in caps(s) and s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
    rec = hooked["tg"].last()
    assert rec["tier"] == "baseline" and "clamped to baseline" in rec["why"] and "trust[0]" not in rec["why"], rec
    warn = tiergate("policy", "check", hooked["policy"])
    assert "trust[0] lets images named 'localhost/tiergate-*' reach privileged" in warn.stderr


@pytest.mark.podman
def test_digest_rule_is_what_trusts(podman_env, it_dir, pimg):
    """The positive side: a digest rule on the image's full id lifts it (NoNewPrivs 0, SYS_ADMIN kept)."""
    d = it_dir / "idt-digest"
    d.mkdir()
    hooks = Hooks(podman_env, d / "tg", policy=trusting_policy(d / "policy.toml", [pimg["ids"]["privileged"]]))
    s = status(hooks.run(pimg["refs"]["privileged"], "sh", "-c", STATUS_SH, args=["--cap-add", "SYS_ADMIN"]))
    assert "CAP_SYS_ADMIN" in caps(s) and s["NoNewPrivs"] == "0"
    short = d / "short.toml"
    short.write_text(f'version = 1\ndefault_tier = "p"\ndefault_ceiling = "p"\n[[trust]]\n'
                     f'digest = "{pimg["ids"]["privileged"][:12]}"\nmax_tier = "p"\n[tiers.p]\npassthrough = true\n')
    bad = tiergate("policy", "check", short, check=False)
    assert bad.returncode != 0 and f"{short}:5:" in bad.stderr and "64 hex" in bad.stderr, bad.stderr


@pytest.mark.podman
def test_caller_annotation_cannot_loosen_podman(podman_env, it_dir, hooked, pimg):
    """`--annotation io.tiergate.tier=baseline` on a restricted image: honoured where the policy says
    caller_may_loosen = true (the CONTROL: the probe sees baseline's capabilities), ignored by default."""
    d = it_dir / "idt-loosen"
    d.mkdir()
    loose = name_trusting_policy(d / "policy.toml", loosen=True)
    args = ["--annotation", f"{LABEL}=baseline"]
    control = status(Hooks(podman_env, d / "tg", policy=loose).run(pimg["refs"]["restricted"], "sh", "-c",
                                                                     STATUS_SH, args=args))
    assert caps(control) > RESTRICTED  # loosened: baseline's engine-default capabilities
    s = status(hooked["tg"].run(pimg["refs"]["restricted"], "sh", "-c", STATUS_SH, args=args))
    assert caps(s) == RESTRICTED and s["NoNewPrivs"] == "1"
    assert "a caller may only tighten" in hooked["tg"].last()["why"]
    tighter = status(hooked["tg"].run(pimg["refs"]["restricted"], "sh", "-c", STATUS_SH,
                                      args=["--annotation", f"{LABEL}=isolated"]))
    assert caps(tighter) == set()  # tightening is always allowed


@pytest.fixture
def netns():
    name = f"tgidt-{secrets.token_hex(3)}"
    run_cmd(["ip", "netns", "add", name], check=True)
    run_cmd(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    run_cmd(["ip", "netns", "delete", name])


def _dports(netns: str) -> set[int]:
    """Every destination port a rule in the namespace's nftables ruleset matches."""
    doc = json.loads(run_cmd(["ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset"], check=True).stdout)
    found: set[int] = set()
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            left = node.get("left")
            if isinstance(left, dict) and (left.get("payload") or {}).get("field") == "dport":
                right = node.get("right")
                found.update(v for v in (right.get("set", []) if isinstance(right, dict) else [right])
                             if isinstance(v, int))
            stack.extend(node.values())
    return found


@pytest.mark.podman
def test_forged_ports_annotation_opens_nothing(hooked, pimg, netns):
    """`--annotation io.tiergate.ports=2222/tcp` on a web-tier image exposing 80: the ruleset tiergate
    loads in the container's netns admits 80 only. CONTROL: an image that really exposes 2222 gets it."""
    tg = hooked["tg"]
    ctl = tg.run(pimg["refs"]["web2222"], "true", args=["--network", f"ns:/run/netns/{netns}"])
    assert ctl.returncode == 0, ctl.stderr[-400:]
    assert 2222 in _dports(netns)
    proc = tg.run(pimg["refs"]["web"], "true", args=["--network", f"ns:/run/netns/{netns}",
                                                     "--annotation", "io.tiergate.ports=2222/tcp"])
    assert proc.returncode == 0, proc.stderr[-400:]
    ports = _dports(netns)
    assert 80 in ports and 2222 not in ports, ports


@pytest.fixture(scope="module")
def rtp(it_dir, busybox_rootfs):
    """podman with tiergate-runtime as its default runtime, under a policy with the name rule."""
    harness.require_root()
    harness.require_binary("podman")
    d = it_dir / "idt-rt"
    d.mkdir()
    engine = RuntimePodman(d / "rt", busybox_rootfs.tar, policy=name_trusting_policy(d / "policy.toml"))
    yield engine
    engine.cleanup()


@pytest.mark.podman
def test_forged_cri_image_name_under_podman_runtime(rtp):
    """`--annotation io.kubernetes.cri.image-name=localhost/tiergate-x --annotation io.tiergate.tier=privileged`
    once made any image privileged under the shim. CONTROL (plain runc): the container gets podman's
    default capabilities; through tiergate the restricted image stays restricted (image from
    containers-storage, not the annotation), and --cap-add is refused as restricted says."""
    forged = ["--annotation", "io.kubernetes.cri.image-name=localhost/tiergate-x",
              "--annotation", f"{LABEL}=privileged"]
    img = rtp.images["restricted"]
    control = status(rtp.control("run", "--rm", *forged, img, "sh", "-c", STATUS_SH))
    assert caps(control) > RESTRICTED and control["NoNewPrivs"] == "0"
    s = status(rtp.tg("run", "--rm", *forged, img, "sh", "-c", STATUS_SH))
    assert caps(s) == RESTRICTED and s["NoNewPrivs"] == "1"
    rec = [r for r in rtp.records() if r.get("stage") == "create"][-1]
    assert rec["tier"] == "restricted" and rec["engine"] == "podman-runtime" and rec["image"] == img + ":latest", rec
    refused = rtp.tg("run", "--rm", *forged, "--cap-add", "SYS_ADMIN", img, "true")
    assert refused.returncode != 0 and "tiergate: refused" in refused.stderr


# ---------------------------------------------------------------------------------------------
# docker (the shim as an added runtime; the control is the same daemon's plain runc)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dk(docker_factory, it_dir):
    from tiergate.engines import shim as shim_install

    d = it_dir / "idt-docker"
    d.mkdir()
    policy = name_trusting_policy(d / "policy.toml")
    exe = shim_install.install(d / "bin", "integration identity", policy=str(policy), log=str(d / "decisions.jsonl"),
                               cache_dir=str(d / "cache"), say=lambda *_: None)
    engine = docker_factory(runtimes={"tiergate-idt": str(exe)})
    engine.import_image("idt-restricted:1", {LABEL: "restricted"})
    engine.import_image("idt-privileged:1", {LABEL: "privileged"})
    engine.docker("tag", "idt-privileged:1", "localhost/tiergate-idt:1", check=True)
    return {"engine": engine, "log": d / "decisions.jsonl", "rt": ["--runtime", "tiergate-idt"]}


def _docker_status(dk, image, *args):
    return dk["engine"].run(image, "sh", "-c", STATUS_SH, args=list(args))


@pytest.mark.docker
def test_local_tag_borrows_no_trust_docker(dk):
    """`docker tag` to a trusted name: no RepoDigest for that repository, so no trust. CONTROL (runc):
    --cap-add SYS_ADMIN is granted; through tiergate the image is baseline and SYS_ADMIN is clamped."""
    control = status(_docker_status(dk, "localhost/tiergate-idt:1", "--cap-add", "SYS_ADMIN"))
    assert "CAP_SYS_ADMIN" in caps(control)
    s = status(_docker_status(dk, "localhost/tiergate-idt:1", *dk["rt"], "--cap-add", "SYS_ADMIN"))
    assert "CAP_SYS_ADMIN" not in caps(s) and s["NoNewPrivs"] == "1"


@pytest.mark.docker
def test_run_label_cannot_loosen_docker(dk):
    """`docker run --label io.tiergate.tier=baseline` on a restricted image: docker merges it into
    Config.Labels, but the image's own label (imagedb) rules. CONTROL (runc): default capabilities."""
    control = status(_docker_status(dk, "idt-restricted:1", "--label", f"{LABEL}=baseline"))
    assert caps(control) > RESTRICTED
    s = status(_docker_status(dk, "idt-restricted:1", *dk["rt"], "--label", f"{LABEL}=baseline"))
    assert caps(s) == RESTRICTED and s["NoNewPrivs"] == "1"


PIDS_MAX = "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"


@pytest.mark.docker
def test_docker_update_cannot_lift_the_pids_limit(dk):
    """`docker update --pids-limit -1` goes straight to the runtime's `update`. CONTROL (runc): a
    container started with --pids-limit 4096 reads `max` afterwards. Through tiergate the restricted
    container's 4096 holds and the update is refused with the reason."""
    eng = dk["engine"]
    made = []
    try:
        for rt in ([], dk["rt"]):
            cid = eng.docker("run", "-d", "--network", "none", *rt, "--pids-limit", "4096", "idt-restricted:1",
                             "sleep", "120", check=True).stdout.strip()
            made.append(cid)
            upd = eng.docker("update", "--pids-limit", "-1", cid)
            after = eng.docker("exec", cid, "sh", "-c", PIDS_MAX, check=True).stdout.strip()
            if not rt:
                assert upd.returncode == 0 and after == "max", (upd.stderr, after)
            else:
                assert upd.returncode != 0 and "pids limit" in upd.stderr, upd.stderr
                assert after == "4096"
    finally:
        if made:
            eng.docker("rm", "-f", *made)


# ---------------------------------------------------------------------------------------------
# uninstall: a program two hooks dirs share
# ---------------------------------------------------------------------------------------------

@pytest.mark.podman
def test_uninstall_keeps_the_program_another_hooks_dir_uses(podman_env, it_dir, pimg, hooked):
    """Two hooks dirs, one bin dir; uninstall the first. The second still hardens (CapEff 0x400).
    CONTROL: with the program gone, podman runs the restricted image with no hook at all (default
    capabilities, NoNewPrivs 0), and `tiergate doctor` fails naming the missing program."""
    d = it_dir / "idt-uninstall"
    bin_dir = d / "bin"
    h1, h2 = Hooks(podman_env, d / "h1", install=False), Hooks(podman_env, d / "h2", install=False)
    for h in (h1, h2):
        tiergate("--policy", hooked["policy"], "install", "--engine", "podman", "--hooks-dir", h.hooks_dir,
                 "--bin-dir", bin_dir, "--log", d / "decisions.jsonl", "--cache-dir", d / "cache")
    out = tiergate("uninstall", "--engine", "podman", "--hooks-dir", h1.hooks_dir, "--bin-dir", bin_dir).stdout
    assert "kept" in out and (bin_dir / "tiergate-hook").exists()
    s = status(h2.run(pimg["refs"]["restricted"], "sh", "-c", STATUS_SH))
    assert caps(s) == RESTRICTED and s["NoNewPrivs"] == "1"
    os.rename(bin_dir / "tiergate-hook", bin_dir / "moved")  # what the old uninstall did
    try:
        control = status(h2.run(pimg["refs"]["restricted"], "sh", "-c", STATUS_SH))
        assert caps(control) > RESTRICTED and control["NoNewPrivs"] == "0"
        doc = tiergate("doctor", "--hooks-dir", h2.hooks_dir, check=False)
        assert doc.returncode == 1 and "MISSING" in doc.stdout, doc.stdout
    finally:
        os.rename(bin_dir / "moved", bin_dir / "tiergate-hook")
    tiergate("uninstall", "--engine", "podman", "--hooks-dir", h2.hooks_dir, "--bin-dir", bin_dir)
    assert not bin_dir.exists()
