"""The precreate hook's own cost, deterministically: callgrind instruction counts.

The installed hook (`tiergate-hook precreate`, as `tiergate install` writes it)
is fed a real precreate spec per shipped tier (captured from a podman container
kept in storage, so root.path resolves to its image), with a warm cache, an
empty environment and cwd / (as podman runs it), under
`valgrind --tool=callgrind`. The reference is a no-op Python hook (the same
interpreter, `-IS`, stdin copied to stdout) measured in the same run. Instruction
counts repeat to ~0.1% here, unlike wall time on a shared machine (issue 20).

Three paths: the compiled front handing the start to its warm helper (engines/front.c,
engines/warm.py; the hook process podman waits for), the Python launcher it execs running the
start itself (no helper: it starts one; or one that declines it, from another mount
namespace), and the helper's child that ran the start (the work moved there, reported).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import harness
from tiergate_fixtures import (Hooks, LABEL, SHIPPED_POLICY, compiled_policy, podman_argv, trusting_policy,
                                without_network)

from tiergate.engines import front, warm

pytestmark = pytest.mark.podman

# Issue 20's goal is 1.35x the no-op Python hook's instructions. Reached so far (every shipped
# tier, warm cache, no-op hook 20.2 M): 2.00x (privileged, 40.4 M) to 2.29x (web, database, 46.3 M:
# they read the published ports), from 2.14x-2.43x before the launcher ran its finder compiled from
# the code file (engines/boot.py: no script to compile, no GC, __future__ and .pyc paths from the
# code file) and policy_inputs checked each directory once. Left: `os` (4.4 M) and ~45 module
# imports (~0.1 M of importlib each), the spec's validation (~0.8 M), JSON in and out (~1.7 M), the
# seccomp memo (~0.9 M), realpaths and stats of mounts and own paths (~1.4 M). MAX_RATIO holds what
# was reached, with a small margin: lower it as the hook gets cheaper, never raise it.
#
# With the warm helper (issue 20's "warm helper the hook talks to") and the compiled front ("a
# compiled front for the common case, Python only on a miss": engines/front.c) the hook process
# podman waits for is the front alone: 0.12 M instructions, 0.006x the no-op hook (18.2 M, 0.90x,
# with the Python client it replaces), whatever the tier; the helper's child does the start's own
# work (~6.1 M: no imports, no teardown). MAX_RATIO holds that, with a margin. On a miss the front
# execs the Python launcher (callgrind follows the exec: the process's count is the launcher's):
# IN_PROCESS_MAX_RATIO holds the start run there when no helper runs (it starts one: 2.20x,
# baseline), DECLINED_MAX_RATIO one a helper declined (another mount namespace: 2.01x-2.28x).
GOAL_RATIO = 1.35
MAX_RATIO = 0.02
IN_PROCESS_MAX_RATIO = 2.35
DECLINED_MAX_RATIO = 2.37


def count(out_file: Path) -> int:
    for line in out_file.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise AssertionError(f"no instruction total in {out_file}")


def instructions(argv: list[str], stdin: bytes, out_dir: Path, prefix: list[str] = ()) -> tuple[int, bytes]:
    """(user-space instructions of the process itself, its stdout) under callgrind; processes it
    forks (callgrind follows them) write out_dir/cg.<their pid>."""
    out_dir.mkdir(exist_ok=True)
    proc = subprocess.Popen([*prefix, "valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p",
                             "--trace-children=yes",  # the front's exec of the Python launcher on a miss
                             # valgrind's own log on stderr would keep the pipe open in the helper it forks
                             f"--log-file={out_dir}/valgrind.%p", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={}, cwd="/")
    out, err = proc.communicate(stdin, timeout=300)
    assert proc.returncode == 0, f"{argv[0]} under callgrind exited {proc.returncode}: {err[-2000:]!r}"
    (out_dir / f"valgrind.{proc.pid}").unlink(missing_ok=True)
    own = out_dir / f"cg.{proc.pid}"
    return count(own), out


def helper_pid(key: str, timeout: float = 300) -> int:
    """The pid of this launcher's warm helper, once it listens (under callgrind it starts slowly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path, pid, _ in warm.helpers(key + "-"):
            if pid and os.path.exists(path[:-4]):
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no warm helper for key {key} after {timeout} s")


@pytest.fixture(scope="module")
def cost_setup(podman_env, it_dir):
    """(launcher argv, no-op argv, {tier: captured precreate spec bytes}) with a warm cache."""
    harness.require_binary("valgrind")
    d = it_dir / f"hook-cost-{os.getpid()}"
    capture_dir, capture_file = d / "capture-hooks", d / "captured.json"
    capture_dir.mkdir(parents=True)
    tiers = list(compiled_policy(str(SHIPPED_POLICY))["tiers"])
    images = {t: podman_env.import_image(f"localhost/tiergate-cost-{t}-{os.getpid()}", {LABEL: t}) for t in tiers}
    policy = trusting_policy(d / "policy.toml", images.values())  # each image may get the tier it asks for
    hooks = Hooks(podman_env, d / "tg", policy=policy)
    nonet_policy = d / "policy-no-network.toml"
    nonet_policy.write_text(without_network(policy.read_text(), NETWORK_TIERS))
    nonet = Hooks(podman_env, d / "tg-no-network", policy=nonet_policy)
    launcher = json.loads((hooks.hooks_dir / "99-tiergate-precreate.json").read_text())["hook"]
    python = front.launcher_of(launcher["path"])  # the hook is the compiled front of this Python launcher
    assert python, f"{launcher['path']} is not tiergate's compiled front"
    interpreter = Path(python).read_text().splitlines()[0][2:].split()[0]
    capture = d / "capture-hook"
    capture.write_text(f"#!{interpreter} -IS\nimport sys\ndata = sys.stdin.buffer.read()\n"
                       f"open({str(capture_file)!r}, 'wb').write(data)\nsys.stdout.buffer.write(data)\n")
    noop = d / "noop-hook"
    noop.write_text(f"#!{interpreter} -IS\nimport sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n")
    for exe in (capture, noop):
        exe.chmod(0o755)
    (capture_dir / "50-capture.json").write_text(json.dumps({
        "version": "1.0.0", "hook": {"path": str(capture), "args": [capture.name]},
        "when": {"always": True}, "stages": ["precreate"]}))
    specs = {}
    for tier in tiers:
        capture_file.unlink(missing_ok=True)
        # no --rm: the container stays in storage, so the hook finds its image by root.path
        harness.run_cmd(podman_argv(podman_env, capture_dir, "run", "--name", f"tgcost-{tier}-{os.getpid()}",
                                    f"localhost/tiergate-cost-{tier}-{os.getpid()}", "true"),
                        env=podman_env.env, check=True, timeout=120)
        specs[tier] = capture_file.read_bytes()
    argv = [launcher["path"], *launcher["args"][1:]]
    nonet_launcher = json.loads((nonet.hooks_dir / "99-tiergate-precreate.json").read_text())["hook"]
    nonet_argv = [nonet_launcher["path"], *nonet_launcher["args"][1:]]
    for data in specs.values():  # warm: the policy is compiled and cached once, outside the measurement
        for exe in (argv, nonet_argv):
            subprocess.run(exe, input=data, capture_output=True, env={}, cwd="/", timeout=60, check=True)
    key = warm.key_in(Path(python).read_text())
    nonet_key = warm.key_in(Path(front.launcher_of(nonet_launcher["path"]) or "/").read_text())
    assert key and nonet_key, "the installed launchers use no warm helper"
    warm.stop(key + "-", say=lambda _line: None)  # the test starts its own, under callgrind
    yield argv, [str(noop)], specs, hooks, key, (nonet_argv, nonet, nonet_key)
    for k in (key, nonet_key):
        warm.stop(k + "-", say=lambda _line: None)
    podman_env.podman("rm", "--force", *(f"tgcost-{t}-{os.getpid()}" for t in tiers), timeout=120)
    podman_env.rmi(*(f"localhost/tiergate-cost-{t}-{os.getpid()}" for t in tiers))


def test_precreate_hook_cost_against_a_noop_python_hook(cost_setup, tmp_path):
    argv, noop, specs, hooks, key, _ = cost_setup
    floor, _ = instructions(noop, specs["baseline"], tmp_path / "noop")
    # No helper: the launcher runs the start itself and starts one (callgrind follows the fork,
    # so the helper and each child it forks count their own instructions in tmp_path/helper).
    absent, out = instructions(argv, specs["baseline"], tmp_path / "helper")
    assert "io.tiergate.refused" not in json.loads(out).get("annotations", {})
    assert "warm" not in hooks.last(), hooks.last()
    pid = helper_pid(key)
    figures, in_process = {}, {}
    for tier, data in specs.items():
        for path, into in (("warm", figures), ("declined", in_process)):
            # declined: another mount namespace, so the helper declines and the launcher runs it here
            count_, out = instructions(argv, data, tmp_path / f"{tier}-{path}",
                                       prefix=["unshare", "-m"] if path == "declined" else [])
            hardened = json.loads(out)
            # the measured run did the whole job: the tier its image asked for, allowed (a refusal is cheaper)
            assert hardened.get("annotations", {}).get(LABEL) == tier or tier == "privileged", (tier, out[:300])
            assert "io.tiergate.refused" not in hardened.get("annotations", {}), hardened["annotations"]
            last = hooks.last()
            assert (last["tier"], last["outcome"]) == (tier, "allowed"), last
            assert last.get("warm") == (pid if path == "warm" else None), (path, last)  # who ran it
            into[tier] = count_
    last_tier = list(specs)[-1]
    spare = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()  # forked ahead, it ran no start
    warm.stop(key + "-", say=lambda _line: None)
    helper = tmp_path / "helper" / f"cg.{pid}"
    deadline = time.monotonic() + 120
    while not helper.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    children = sorted((p for p in (tmp_path / "helper").glob("cg.*") if int(p.suffix[1:]) > pid
                       and p.suffix[1:] not in spare), key=lambda p: int(p.suffix[1:]))
    # A forked child's callgrind total includes its parent's up to the fork: the last child's own
    # work is its total less the helper's final total (which adds only its idle ticks and exit).
    child = count(children[-1]) - count(helper) if children and helper.exists() else None
    print(f"\nno-op Python hook: {floor / 1e6:.2f} M instructions (goal {GOAL_RATIO}x, held {MAX_RATIO}x; "
          f"in-process {IN_PROCESS_MAX_RATIO}x, declined {DECLINED_MAX_RATIO}x)")
    print(f"no helper yet (runs the start, starts the helper): {absent / 1e6:.2f} M ({absent / floor:.3f}x)")
    for tier, n in figures.items():
        print(f"tiergate-hook precreate, tier {tier}: warm {n / 1e6:.2f} M ({n / floor:.3f}x); "
              f"declined, in-process {in_process[tier] / 1e6:.2f} M ({in_process[tier] / floor:.3f}x)")
    if child is not None:
        print(f"the helper's child that ran the last start (tier {last_tier}): ~{child / 1e6:.2f} M")
    worst = max(figures, key=figures.get)
    assert figures[worst] <= MAX_RATIO * floor, (
        f"tier {worst}: {figures[worst] / 1e6:.2f} M instructions, {figures[worst] / floor:.3f}x the no-op hook's "
        f"{floor / 1e6:.2f} M (budget {MAX_RATIO}x)")
    for name, n, budget in [("no helper", absent, IN_PROCESS_MAX_RATIO),
                            *((f"tier {t}, declined", c, DECLINED_MAX_RATIO) for t, c in in_process.items())]:
        assert n <= budget * floor, (
            f"{name}: {n / 1e6:.2f} M instructions, {n / floor:.3f}x the no-op hook's {floor / 1e6:.2f} M "
            f"(budget {budget}x)")


# A tier's network policy beside the same tier without one (its `network` line removed), both
# programming a namespace podman made (a veth `eth0` inside, as a podman network gives): what the
# policy adds on top of the metadata block every tier gets. Reached: +9.5 M (web), +8.9 M (database),
# from +36.8 M while ruleset.py imported socket and ipaddress (enum, selectors, functools, ...). Left:
# libnftables (dlopen ~1 M lazily bound, its context, JSON parse and evaluation ~4 M, libc ~2 M), the
# ruleset's build and JSON text (~1.5 M), the published-port lookup. Wall time is bench/'s network
# section. Not counted here: the policy loads as a transaction that creates its table (a fresh
# namespace), so closing its socket does not wait an RCU grace period (5-20 ms): the created/replaced
# proof is in test_network_netns.py. MAX_NETWORK_ADDED holds what was reached, with a small margin.
NETWORK_TIERS = ("web", "database")
MAX_NETWORK_ADDED = 10.0e6


@pytest.fixture
def podman_made_netns():
    with harness.netns_with_eth0("tgcost", "10.219.0.2/24") as name:
        yield name


def test_network_policy_cost_beside_the_same_tier_without_one(cost_setup, podman_made_netns, tmp_path):
    argv, _, specs, hooks, key, (nonet_argv, nonet, nonet_key) = cost_setup
    path = f"/run/netns/{podman_made_netns}"
    figures = {}
    # Both in the hook's own process: each launcher's helper runs and declines the measured runs
    # (another mount namespace), so the start's own cost is compared, not the client's.
    for exe, k in ((argv, key), (nonet_argv, nonet_key)):
        for _ in range(2):  # one starts the helper; one it serves (a helper that served none leaves
            # the socket to the first peer it declines for its namespaces)
            subprocess.run(exe, input=specs["baseline"], capture_output=True, env={}, cwd="/", timeout=60, check=True)
            helper_pid(k)
    for tier in NETWORK_TIERS:
        spec = json.loads(specs[tier])
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = path
        data = json.dumps(spec).encode()
        counts = {}
        for name, exe, h in (("with", argv, hooks), ("without", nonet_argv, nonet)):
            for _ in range(2):  # the first run adds the metadata rules; the second, measured, finds them
                subprocess.run(["ip", "netns", "exec", podman_made_netns, "nft", "delete", "table", "inet", "tiergate"],
                               capture_output=True, timeout=30)  # a podman-made namespace has none
                counts[name], _ = instructions(exe, data, tmp_path / f"{tier}-{name}", prefix=["unshare", "-m"])
            last = h.last()
            assert (last["tier"], last["outcome"]) == (tier, "allowed") and "warm" not in last, last
            assert "closed" in last.get("metadata", ""), last
            assert last.get("network") == (tier if name == "with" else None), last
        listed = subprocess.run(["ip", "netns", "exec", podman_made_netns, "nft", "list", "tables"],
                                capture_output=True, text=True, timeout=30).stdout
        assert "table inet tiergate" not in listed, listed  # the run without a policy loaded none
        figures[tier] = counts
    for tier, c in figures.items():
        print(f"\ntier {tier}: with its network policy {c['with'] / 1e6:.2f} M, without {c['without'] / 1e6:.2f} M: "
              f"+{(c['with'] - c['without']) / 1e6:.2f} M (budget +{MAX_NETWORK_ADDED / 1e6:.1f} M)")
    worst = max(figures, key=lambda t: figures[t]["with"] - figures[t]["without"])
    added = figures[worst]["with"] - figures[worst]["without"]
    assert added <= MAX_NETWORK_ADDED, f"tier {worst}: its network policy adds {added / 1e6:.2f} M instructions"
