"""Issue 9, faults: each has a defined outcome (refused with one line, or allowed where the
policy says so), no traceback, and the decision record kept.

Host faults are made without touching the host: programs are hidden and the log's
filesystem filled inside a private mount namespace (`unshare -m`, propagation private)
around the podman command, so the hook (a child of podman, or of runc) inherits it and
everything vanishes with the namespace. The unwritable log uses chattr +i, removed in
`finally`. Storage metadata is corrupted for a throw-away image and restored.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import pytest

from harness import caps_from_hex, probe_status, run_cmd
from tiergate_fixtures import REPO, STATUS_SH, Hooks, last_line, podman_argv, tiergate
from tiergate_fixtures import tg_images  # noqa: F401  (fixture)

UNSHARE = "/usr/bin/unshare"
CHATTR = "/usr/bin/chattr"
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
SHIPPED = REPO / "tiergate" / "configs" / "policy.toml"


def _policy(dest: Path, extra: str = "", replace: tuple[str, str] | None = None) -> Path:
    text = SHIPPED.read_text()
    if replace:
        assert replace[0] in text, replace
        text = text.replace(*replace)
    dest.write_text(text + extra)
    return dest


def hide_sbin(names: tuple[str, ...], scratch: Path, where: str = "/usr/sbin") -> str:
    """Shell lines that, in a private mount namespace, make `where` lack `names` (ENOENT)."""
    skip = " ".join(names)
    return (f'mkdir -p {scratch}/orig {scratch}/view && mount --bind {where} {scratch}/orig && '
            f'for f in {scratch}/orig/*; do n=${{f##*/}}; case " {skip} " in *" $n "*) ;; '
            f'*) ln -s "$f" {scratch}/view/"$n";; esac; done && mount --bind {scratch}/view {where}')


# network policies load through libnftables in-process (no nft binary): "nft missing" is this
NO_LIBNFT = (("libnftables.so.1",), "/usr/lib/x86_64-linux-gnu")


def in_private_mounts(setup: str, argv: list[str], env, after: str = "", timeout: float = 90):
    """Run argv in a private mount namespace prepared by `setup` (and `after` it, same namespace)."""
    script = f"set -e\n{setup}\nset +e\n\"$@\"\nrc=$?\n{after}\nexit $rc\n"
    return run_cmd([UNSHARE, "-m", "--propagation", "private", "/bin/sh", "-c", script, "sh", *argv],
                   env=env, timeout=timeout)


def one_line_refusal(proc, *words: str) -> str:
    assert proc.returncode != 0, f"container started: {proc.stdout[-300:]}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    line = last_line(proc.stderr)
    at = line.find("tiergate: ")
    assert at >= 0, f"no tiergate line: {proc.stderr[-600:]}"
    line = line[at:]
    for w in words:
        assert w in line, (w, line)
    return line


def records(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def fimg(podman_env):
    """Images of this module: tier -> reference (trusted prefix)."""
    refs = {}
    for tier in ("web", "restricted", "aa-required"):
        ref = f"localhost/tiergate-fault-{tier}"
        podman_env.import_image(ref, {"io.tiergate.tier": tier})
        refs[tier] = ref
    yield refs
    podman_env.rmi(*refs.values())


@pytest.fixture
def netns():
    if not os.path.exists(IP):
        pytest.skip(f"{IP} is missing")
    name = f"tg-fault-{secrets.token_hex(3)}"
    run_cmd([IP, "netns", "add", name], check=True, timeout=20)
    try:
        yield f"/run/netns/{name}"
    finally:
        run_cmd([IP, "netns", "del", name], timeout=20)


# --------------------------------------------------------------------------
# nft missing
# --------------------------------------------------------------------------

def test_nft_missing_with_a_fresh_netns_needs_no_nft(podman, tg_images, tmp_path):
    """isolated + --network none: runc makes an empty namespace (loopback only), so there is nothing to
    load and no nft is run; the container runs with its tier and the record says why no rules were loaded."""
    hooks = Hooks(podman, tmp_path / "tg")
    argv = podman_argv(podman, hooks.hooks_dir, "run", "--rm", tg_images["isolated"], "sh", "-c", STATUS_SH)
    proc = in_private_mounts(hide_sbin(("nft",), tmp_path / "sb"), argv, podman.env)
    assert proc.returncode == 0, proc.stderr[-500:]
    st = probe_status(proc.stdout)
    assert caps_from_hex(st["CapEff"]) == set() and st["NoNewPrivs"] == "1", st
    recs = records(hooks.log)
    assert recs and recs[0]["stage"] == "precreate" and recs[0]["outcome"] == "allowed", recs
    if len(recs) == 1:  # decided at precreate: nothing to filter in a fresh namespace
        assert "fresh namespace" in recs[0].get("network", ""), recs[0]
    else:  # a createRuntime hook loads the rules: without nft that must refuse, not pass
        pytest.fail(f"a createRuntime stage ran although nft is missing and the container started: {recs[1:]}")


def test_nft_missing_at_precreate_refuses(podman, fimg, netns, tmp_path):
    """A network namespace given to podman (--network ns:PATH): the rules load at precreate; no libnftables -> refused."""
    hooks = Hooks(podman, tmp_path / "tg")
    argv = podman_argv(podman, hooks.hooks_dir, "run", "--rm", "--network", f"ns:{netns}", fimg["web"], "true")
    proc = in_private_mounts(hide_sbin(NO_LIBNFT[0], tmp_path / "sb", NO_LIBNFT[1]), argv, podman.env)
    line = one_line_refusal(proc, "tiergate: error:", "nft")
    print("\n" + line)
    rec = records(hooks.log)[-1]
    assert rec["stage"] == "precreate" and rec["outcome"] == "error" and rec["tier"] == "web", rec


def test_on_error_allow_runs_the_container_and_says_so(podman, fimg, netns, tmp_path):
    """on_error = "allow": the same hook error lets the container run, as hardened as it got, logged loudly."""
    policy = _policy(tmp_path / "policy.toml", replace=('on_error = "refuse"', 'on_error = "allow"'))
    hooks = Hooks(podman, tmp_path / "tg", policy=policy)
    argv = podman_argv(podman, hooks.hooks_dir, "run", "--rm", "--network", f"ns:{netns}", fimg["web"],
                       "sh", "-c", STATUS_SH)
    proc = in_private_mounts(hide_sbin(NO_LIBNFT[0], tmp_path / "sb", NO_LIBNFT[1]), argv, podman.env)
    assert proc.returncode == 0, proc.stderr[-600:]
    assert "Traceback" not in proc.stderr
    st = probe_status(proc.stdout)
    # the spec was hardened before the network step failed: web's capabilities, no_new_privs
    assert caps_from_hex(st["CapEff"]) <= {"CAP_NET_BIND_SERVICE"} and st["NoNewPrivs"] == "1", st
    rec = records(hooks.log)[-1]
    print("\npodman stderr:", proc.stderr.strip()[-300:] or "(nothing)", "\nrecord:", rec.get("outcome"), rec.get("reason"))
    assert rec["outcome"] == "allowed-on-error" and "nft" in rec["reason"] and rec["tier"] == "web", rec


# --------------------------------------------------------------------------
# apparmor_parser missing, apparmor = "require"
# --------------------------------------------------------------------------

AA_TIER = '''
[tiers.aa-required]
description = "test: restricted, AppArmor required"
extends = "restricted"
strictness = 21
apparmor = "require"
'''


@pytest.mark.parametrize("hidden", [True, False], ids=["parser-missing", "parser-present"])
def test_apparmor_require_refuses_with_one_line(podman, fimg, tmp_path, hidden):
    hooks = Hooks(podman, tmp_path / "tg", policy=_policy(tmp_path / "policy.toml", AA_TIER))
    argv = podman_argv(podman, hooks.hooks_dir, "run", "--rm", fimg["aa-required"], "true")
    setup = hide_sbin(("apparmor_parser",), tmp_path / "sb") if hidden else "true"
    proc = in_private_mounts(setup, argv, podman.env)
    line = one_line_refusal(proc, "AppArmor")
    print("\n" + line)
    rec = records(hooks.log)[-1]
    assert rec["stage"] == "precreate" and rec["outcome"] in ("refused", "error"), rec
    assert rec["tier"] == "aa-required" and "AppArmor" in rec["reason"], rec


# --------------------------------------------------------------------------
# the decision log unwritable or full
# --------------------------------------------------------------------------

def _restricted_ok(proc):
    assert proc.returncode == 0, proc.stderr[-500:]
    st = probe_status(proc.stdout)
    assert caps_from_hex(st["CapEff"]) <= {"CAP_NET_BIND_SERVICE"} and st["NoNewPrivs"] == "1", st


@pytest.fixture
def immutable_log_dir(podman, tmp_path):
    if not os.access(CHATTR, os.X_OK):
        pytest.skip("chattr is missing")
    hooks = Hooks(podman, tmp_path / "tg")
    hooks.log.parent.mkdir(parents=True, exist_ok=True)
    hooks.log.write_text("")
    made = [hooks.log, hooks.log.parent]
    run_cmd([CHATTR, "+i", *map(str, made)], check=True, timeout=10)
    try:
        yield hooks
    finally:
        run_cmd([CHATTR, "-i", *map(str, made)], timeout=10)


def test_unwritable_log_still_decides(podman, tg_images, immutable_log_dir):
    hooks = immutable_log_dir
    proc = hooks.run(tg_images["restricted"], "sh", "-c", STATUS_SH)
    _restricted_ok(proc)
    assert hooks.log.read_text() == ""


def test_unwritable_log_is_reported(podman, tg_images, immutable_log_dir):
    hooks = immutable_log_dir
    name = f"tg-logro-{secrets.token_hex(3)}"
    proc = hooks.run(tg_images["restricted"], "true", args=["--name", name], rm=False)
    try:
        assert proc.returncode == 0, proc.stderr
        ann = hooks.annotations(name)
        shown = "decision log" in proc.stderr or any("log" in k for k in ann if k.startswith("io.tiergate"))
        assert shown, f"stderr {proc.stderr!r}, annotations {sorted(ann)}"
    finally:
        hooks.podman_cmd("rm", "-f", name)


def _hooks_with_log(podman, dir: Path, log: Path) -> Hooks:
    """Hooks with the decision log in a directory of its own (so it can be mounted over alone)."""
    hooks = Hooks(podman, dir, install=False)
    hooks.log = log
    log.parent.mkdir(parents=True, exist_ok=True)
    tiergate("install", "--engine", "podman", "--hooks-dir", hooks.hooks_dir, "--bin-dir", hooks.bin_dir,
             "--log", log, "--cache-dir", hooks.cache_dir)
    return hooks


def _full_log_run(podman, tg_images, tmp_path):
    """The log on an 8 KiB tmpfs already holding 8092 bytes: the next record does not fit."""
    hooks = _hooks_with_log(podman, tmp_path / "tg", tmp_path / "logdir" / "decisions.jsonl")
    logdir = hooks.log.parent
    copy = tmp_path / "log-after"
    pad = 8192 - 100 - len('{"pad":""}\n')
    setup = (f"mount -t tmpfs -o size=8k,mode=0750 tmpfs {logdir} && "
             f"{{ printf '{{\"pad\":\"'; head -c {pad} /dev/zero | tr '\\0' x; printf '\"}}\\n'; }} > {hooks.log}")
    argv = podman_argv(podman, hooks.hooks_dir, "run", "--rm", tg_images["restricted"], "sh", "-c", STATUS_SH)
    proc = in_private_mounts(setup, argv, podman.env, after=f"cp {hooks.log} {copy}")
    assert (hooks.hooks_dir / "99-tiergate-precreate.json").exists()
    return proc, copy


def test_full_log_still_decides(podman, tg_images, tmp_path):
    proc, copy = _full_log_run(podman, tg_images, tmp_path)
    _restricted_ok(proc)
    assert copy.read_text().startswith('{"pad":"'), "the log's earlier records must stay"


def test_full_log_leaves_no_torn_line(podman, tg_images, tmp_path):
    proc, copy = _full_log_run(podman, tg_images, tmp_path)
    assert proc.returncode == 0, proc.stderr[-300:]
    for line in copy.read_bytes().split(b"\n")[:-1]:
        json.loads(line)  # a torn record fails here
    assert copy.read_bytes().endswith(b"\n"), f"torn tail: {copy.read_bytes()[-120:]!r}"


# --------------------------------------------------------------------------
# the hook killed by the engine's timeout
# --------------------------------------------------------------------------

def _slow_hooks(hooks: Hooks, tmp_path: Path, delay: float) -> Path:
    """A hooks dir whose precreate hook is tiergate's behind a wrapper that stalls first; timeout 1 s."""
    orig = json.loads((hooks.hooks_dir / "99-tiergate-precreate.json").read_text())
    wrapper = tmp_path / "slow-hook"
    wrapper.write_text(f"#!/bin/sh\n/bin/sleep {delay} </dev/null >/dev/null 2>&1\n"
                       f"exec {orig['hook']['path']} \"$@\"\n")
    wrapper.chmod(0o755)
    d = tmp_path / "slow-hooks.d"
    d.mkdir()
    spec = json.loads(json.dumps(orig))
    spec["hook"]["path"] = str(wrapper)
    spec["hook"]["args"] = [str(wrapper), *orig["hook"]["args"][1:]]
    spec["hook"]["timeout"] = 1
    (d / "99-tiergate-precreate.json").write_text(json.dumps(spec))
    return d


def test_hook_killed_by_engine_timeout_refuses(podman, tg_images, tmp_path):
    hooks = Hooks(podman, tmp_path / "tg")
    slow = _slow_hooks(hooks, tmp_path, 4)
    t0 = time.monotonic()
    proc = run_cmd(podman_argv(podman, slow, "run", "--rm", tg_images["baseline"], "sh", "-c", STATUS_SH),
                   env=podman.env, timeout=60)
    took = time.monotonic() - t0
    print(f"\nrc {proc.returncode} after {took:.1f} s: {last_line(proc.stderr)}")
    assert proc.returncode != 0 and "CapEff" not in proc.stdout, "a container started without its hook"
    assert "Traceback" not in proc.stderr
    assert podman.podman("ps", "-aq").stdout.strip() == ""
    # the control: the same wrapper with time to spare runs the container hardened
    ok = run_cmd(podman_argv(podman, _slow_hooks_fast(hooks, tmp_path), "run", "--rm", tg_images["restricted"],
                             "sh", "-c", STATUS_SH), env=podman.env, timeout=60)
    _restricted_ok(ok)


def _slow_hooks_fast(hooks: Hooks, tmp_path: Path) -> Path:
    sub = tmp_path / "fast"
    sub.mkdir()
    return _slow_hooks(hooks, sub, 0)


def test_hook_killed_by_engine_timeout_is_recorded(podman, tg_images, tmp_path):
    """tiergate stalls mid-decision (its log is locked by someone else), podman kills it at the
    hooks.d timeout (1 s): the start is refused and the decision log still says so."""
    import fcntl

    hooks = Hooks(podman, tmp_path / "tg")
    stall = _slow_hooks(hooks, tmp_path, 0)  # no delay before tiergate; timeout 1 s
    hooks.log.parent.mkdir(parents=True, exist_ok=True)
    with open(hooks.log, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the with block closes the file
        proc = run_cmd(podman_argv(podman, stall, "run", "--rm", tg_images["baseline"], "true"),
                       env=podman.env, timeout=60)
    assert proc.returncode != 0
    from tiergate.telemetry import record

    killed = [r for r in record.read(str(hooks.log)) if r.get("outcome") == "killed"]
    assert killed and killed[-1]["stage"] == "precreate", "no record of the killed start"
    assert "died before recording" in killed[-1]["reason"]


# --------------------------------------------------------------------------
# bundle read at prestart: config.json swapped after runc read it
# --------------------------------------------------------------------------

@pytest.mark.parametrize("swap", ["symlink-to-shadow", "half-written", "symlink-out-of-bundle"])
def test_prestart_bundle_swapped_under_runc(runc_bundle, tmp_path, swap):
    """A prestart hook before tiergate's replaces config.json after runc has read it."""
    log = tmp_path / "decisions.jsonl"
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    b = runc_bundle(args=["true"])
    cfg = b.config_path
    if swap == "symlink-to-shadow":
        act = f"mv {cfg} {cfg}.orig && ln -s /etc/shadow {cfg}"
    elif swap == "symlink-out-of-bundle":
        act = f"cp {cfg} {outside} && mv {cfg} {cfg}.orig && ln -s {outside} {cfg}"
    else:
        act = f"head -c 200 {cfg} > {cfg}.half && mv {cfg}.half {cfg}"
    b.config["hooks"] = {"prestart": [
        {"path": "/bin/sh", "args": ["sh", "-c", act]},
        {"path": sys.executable, "args": [sys.executable, "-I", "-m", "tiergate.hook.stages", "prestart",
                                          "--log", str(log), "--cache-dir", str(tmp_path / "cache")]},
    ]}
    proc = b.run(timeout=60)
    line = one_line_refusal(proc)
    print(f"\n{swap}: {line}")
    shadow_root = next((x for x in open("/etc/shadow").read().splitlines() if x.startswith("root:")), "root:")
    secret = shadow_root.split(":")[1]
    rec = records(log)[-1]
    assert rec["stage"] == "prestart" and rec["outcome"] in ("refused", "error"), rec
    for text in (proc.stderr, log.read_text()):
        assert not (secret and len(secret) > 3 and secret in text), "/etc/shadow content leaked"
    assert "Traceback" not in log.read_text()


# --------------------------------------------------------------------------
# storage metadata missing / corrupt / half-written between create and start
# --------------------------------------------------------------------------

def _config_blob(podman, ref: str) -> Path:
    import base64

    info = podman.image_inspect(ref)
    image_id = info["Id"]
    d = podman.root / "overlay-images" / image_id
    blobs = [p for p in d.iterdir() if p.name.startswith("=")
             and base64.b64decode(p.name[1:]).decode(errors="replace").startswith("sha256:")]
    cfgs = [p for p in blobs if b'"Labels"' in p.read_bytes() or b'"config"' in p.read_bytes()]
    assert len(cfgs) == 1, [p.name for p in blobs]
    return cfgs[0]


@pytest.mark.parametrize("damage", ["missing", "corrupt", "half-written"])
def test_image_metadata_damaged_between_create_and_start(podman, tmp_path, damage):
    """restricted image; its config blob (labels) damaged after `podman create`: refused, never a default tier."""
    ref = f"localhost/tiergate-fault-meta-{damage}"
    podman.import_image(ref, {"io.tiergate.tier": "restricted"})
    hooks = Hooks(podman, tmp_path / "tg")
    name = f"tg-meta-{secrets.token_hex(3)}"
    blob = _config_blob(podman, ref)
    saved = blob.read_bytes()
    try:
        hooks.podman_cmd("create", "--name", name, ref, "sh", "-c", STATUS_SH, check=True)
        if damage == "missing":
            blob.rename(blob.with_name(blob.name + ".away"))
        elif damage == "corrupt":
            blob.write_bytes(b"\x00\xffnot json at all\x00")
        else:
            blob.write_bytes(saved[: len(saved) // 2])
        proc = hooks.podman_cmd("start", "-a", name)
        line = one_line_refusal(proc, "tiergate: refused:")
        print(f"\n{damage}: {line}")
        assert "CapEff" not in proc.stdout
        rec = records(hooks.log)[-1]
        assert rec["stage"] == "precreate" and rec["outcome"] == "refused" and rec["reason"], rec
    finally:
        away = blob.with_name(blob.name + ".away")
        if away.exists():
            away.rename(blob)
        blob.write_bytes(saved)
        hooks.podman_cmd("rm", "-f", name)
        podman.rmi(ref)
