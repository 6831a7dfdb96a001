"""The precreate hook's own cost, deterministically: callgrind instruction counts.

The installed launcher (`tiergate-hook precreate`, as `tiergate install` writes it)
is fed a real precreate spec per shipped tier (captured from a podman container
kept in storage, so root.path resolves to its image), with a warm cache, an
empty environment and cwd / (as podman runs it), under
`valgrind --tool=callgrind`. The reference is a no-op Python hook (the same
interpreter, `-IS`, stdin copied to stdout) measured in the same run. Instruction
counts repeat to ~0.1% here, unlike wall time on a shared machine (issue 20).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import harness
from tiergate_fixtures import (Hooks, LABEL, SHIPPED_POLICY, compiled_policy, podman_argv, trusting_policy,
                                without_network)

pytestmark = pytest.mark.podman

# Issue 20's goal is 1.35x the no-op Python hook's instructions. Reached so far (every shipped
# tier, warm cache, no-op hook 20.2 M): 2.00x (privileged, 40.4 M) to 2.29x (web, database, 46.3 M:
# they read the published ports), from 2.14x-2.43x before the launcher ran its finder compiled from
# the code file (engines/boot.py: no script to compile, no GC, __future__ and .pyc paths from the
# code file) and policy_inputs checked each directory once. Left: `os` (4.4 M) and ~45 module
# imports (~0.1 M of importlib each), the spec's validation (~0.8 M), JSON in and out (~1.7 M), the
# seccomp memo (~0.9 M), realpaths and stats of mounts and own paths (~1.4 M). MAX_RATIO holds what
# was reached, with a small margin: lower it as the hook gets cheaper, never raise it.
GOAL_RATIO = 1.35
MAX_RATIO = 2.35


def instructions(argv: list[str], stdin: bytes, out_file: Path) -> tuple[int, bytes]:
    """(user-space instructions of the whole process, its stdout) under callgrind."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", *argv],
                          input=stdin, capture_output=True, env={}, cwd="/", timeout=300)
    assert proc.returncode == 0, f"{argv[0]} under callgrind exited {proc.returncode}: {proc.stderr[-2000:]!r}"
    for line in out_file.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]), proc.stdout
    raise AssertionError(f"no instruction total in {out_file}")


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
    interpreter = Path(launcher["path"]).read_text().splitlines()[0][2:].split()[0]
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
    yield argv, [str(noop)], specs, hooks, (nonet_argv, nonet)
    podman_env.podman("rm", "--force", *(f"tgcost-{t}-{os.getpid()}" for t in tiers), timeout=120)
    podman_env.rmi(*(f"localhost/tiergate-cost-{t}-{os.getpid()}" for t in tiers))


def test_precreate_hook_cost_against_a_noop_python_hook(cost_setup, tmp_path):
    argv, noop, specs, hooks, _ = cost_setup
    floor, _ = instructions(noop, specs["baseline"], tmp_path / "noop.out")
    figures = {}
    for tier, data in specs.items():
        count, out = instructions(argv, data, tmp_path / f"{tier}.out")
        hardened = json.loads(out)
        # the measured run did the whole job: the tier its image asked for, allowed (a refusal is cheaper)
        assert hardened.get("annotations", {}).get(LABEL) == tier or tier == "privileged", (tier, out[:300])
        assert "io.tiergate.refused" not in hardened.get("annotations", {}), hardened["annotations"]
        last = hooks.last()
        assert (last["tier"], last["outcome"]) == (tier, "allowed"), last
        figures[tier] = count
    print(f"\nno-op Python hook: {floor / 1e6:.2f} M instructions (goal {GOAL_RATIO}x, held {MAX_RATIO}x)")
    for tier, count in figures.items():
        print(f"tiergate-hook precreate, tier {tier}: {count / 1e6:.2f} M ({count / floor:.3f}x)")
    worst = max(figures, key=figures.get)
    assert figures[worst] <= MAX_RATIO * floor, (
        f"tier {worst}: {figures[worst] / 1e6:.2f} M instructions, {figures[worst] / floor:.3f}x the no-op hook's "
        f"{floor / 1e6:.2f} M (budget {MAX_RATIO}x)")


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
    argv, _, specs, hooks, (nonet_argv, nonet) = cost_setup
    path = f"/run/netns/{podman_made_netns}"
    figures = {}
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
                counts[name], _ = instructions(exe, data, tmp_path / f"{tier}-{name}.out")
            last = h.last()
            assert (last["tier"], last["outcome"]) == (tier, "allowed"), last
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
