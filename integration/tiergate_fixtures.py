"""Shared fixtures and helpers for the tests that run tiergate with real engines.

Import what a test file needs (fixtures included) with
``from tiergate_fixtures import ...``.

tiergate is installed with ``tiergate install --engine podman`` into hooks
directories of its own under the session's it_dir, and every podman command
built here names one of them with ``--hooks-dir`` in place of the harness's
(which the ``podman`` fixture empties after each test): a run "with tiergate"
and a CONTROL run "without any hook" differ by that directory only.

Session fixtures: tg_images (one image per tier, unlabelled, untrusted),
                  tg_policy (the shipped policy trusting the privileged test image by its id),
                  tg (tiergate installed with tg_policy: precreate hook, own log and cache),
                  tg_control (hooks dir with no hook at all)
Function fixture: tgp (tg, containers removed after the test)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from collections.abc import Sequence

import pytest

import harness
from harness import caps_from_hex, probe_status, run_cmd

REPO = Path(__file__).resolve().parent.parent
TIERGATE = [sys.executable, "-m", "tiergate.cli.main"]
LABEL = "io.tiergate.tier"
STATUS_SH = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status"

# key -> (reference, labels). Trust (tg_policy): the privileged image by its id, anything else baseline.
IMAGES: dict[str, tuple[str, dict[str, str]]] = {
    "privileged": ("localhost/tiergate-it-privileged", {LABEL: "privileged"}),
    "baseline": ("localhost/tiergate-it-baseline", {LABEL: "baseline"}),
    "restricted": ("localhost/tiergate-it-restricted", {LABEL: "restricted"}),
    "isolated": ("localhost/tiergate-it-isolated", {LABEL: "isolated"}),
    "unlabelled": ("localhost/tiergate-it-unlabelled", {}),
    # asks for privileged from a reference no trust rule lets above baseline
    "untrusted": ("registry.example/x", {LABEL: "privileged", "org.example.origin": "untrusted"}),
}
# the tier each image must get, and the tier it asked for
EXPECTED_TIER = {"privileged": "privileged", "baseline": "baseline", "restricted": "restricted",
                 "isolated": "isolated", "unlabelled": "baseline", "untrusted": "baseline"}


def tiergate(*args: str | os.PathLike, check: bool = True, input: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The operator CLI (`tiergate ARGS`) from the test's own interpreter."""
    return run_cmd([*TIERGATE, *args], check=check, input=input, timeout=timeout, cwd=REPO)


SHIPPED_POLICY = REPO / "tiergate" / "configs" / "policy.toml"


def trusting_policy(dest: Path, image_ids, max_tier: str = "privileged", base: Path = SHIPPED_POLICY) -> Path:
    """`base` with a digest trust rule per image id ahead of its own rules: how a test (or the
    demo) lets an image it imported reach `max_tier`, now that no name earns trust."""
    rules = "".join(f'[[trust]]\ndigest = "sha256:{i.removeprefix("sha256:")}"\nmax_tier = "{max_tier}"\n\n'
                    for i in image_ids)
    Path(dest).write_text(with_trust_rules(Path(base).read_text(), rules))
    return Path(dest)


def with_trust_rules(text: str, rules: str) -> str:
    """Policy text with `rules` (TOML [[trust]] tables) put before its first trust rule."""
    import re

    at = re.search(r"^\[\[trust\]\]", text, re.M).start()
    return text[:at] + rules + text[at:]


def without_network(policy_text: str, tiers) -> str:
    """The policy with the `network = ...` line of each of `tiers` removed (the same tiers without
    a network policy: what bench/ and the cost test compare with)."""
    import re

    out, section = [], None
    for line in policy_text.splitlines(keepends=True):
        m = re.match(r"\s*\[([^\]]+)\]\s*$", line)
        if m:
            section = m.group(1).strip()
        if section in {f"tiers.{t}" for t in tiers} and re.match(r"\s*network\s*=", line):
            continue
        out.append(line)
    return "".join(out)


def compiled_policy(policy: str | None = None) -> dict:
    """The compiled policy the hook uses (tier capabilities, seccomp, digest), its tiers read now:
    a test may ask for one long after, when a newer compile has replaced this generation."""
    from tiergate.policy import cache

    compiled = cache.load_compiled(policy)
    return dict(compiled, tiers={name: dict(tier) for name, tier in compiled["tiers"].items()})


def last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def refusal_line(proc: subprocess.CompletedProcess[str]) -> str:
    """From podman's `Error: OCI runtime error: ... stderr: tiergate: refused: X`: `tiergate: refused: X`."""
    line = last_line(proc.stderr)
    at = line.find("tiergate: ")
    return line[at:].strip() if at >= 0 else ""


def probe_lines(output: str) -> dict[str, bool]:
    """`PROBE name=OK|NO ...` lines -> {name: succeeded}."""
    out = {}
    for line in output.splitlines():
        if line.startswith("PROBE ") and "=" in line:
            name, _, rest = line[6:].partition("=")
            out[name] = rest.startswith("OK")
    return out


def probe_script(probes: dict[str, str], status: bool = True) -> str:
    """One shell script printing /proc/self/status fields then `PROBE name=OK|NO <why>` per probe."""
    lines = [STATUS_SH] if status else []
    lines.append('p() { n=$1; shift; if ( eval "$1" ) >/dev/shm/.p.$n 2>&1; then echo "PROBE $n=OK"; '
                 'else echo "PROBE $n=NO $(head -c 160 /dev/shm/.p.$n | tr "\\n" " ")"; fi; }')
    for name, cmd in probes.items():
        lines.append(f"p {name} {_sh_quote(cmd)}")
    return "\n".join(lines) + "\n"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def caps(status: dict, key: str = "CapEff") -> set[str]:
    return caps_from_hex(status[key])


# --------------------------------------------------------------------------
# podman with a chosen hooks dir
# --------------------------------------------------------------------------

def podman_argv(podman: harness.Podman, hooks_dir: Path, *args: str) -> list[str]:
    """podman's scratch argv with --hooks-dir replaced; run/create get --network none and our cgroup parent."""
    flags = list(podman.global_flags)
    flags[flags.index("--hooks-dir") + 1] = str(hooks_dir)
    args_l = [os.fspath(a) for a in args]
    if args_l and args_l[0] in ("run", "create"):
        extra = []
        if not any(a in ("--network", "--net") or a.startswith(("--network=", "--net=")) for a in args_l):
            extra += ["--network", "none"]
        if not any(a.startswith("--cgroup-parent") for a in args_l):
            extra += ["--cgroup-parent", podman.cgroup_parent]
        args_l = [args_l[0], *extra, *args_l[1:]]
    return [podman.binary, *flags, *args_l]


class Hooks:
    """A hooks dir for the scratch podman: tiergate installed in it (or nothing: the control)."""

    def __init__(self, podman: harness.Podman, dir: Path, *, install: bool = True,
                 prestart: bool = False, policy: Path | None = None,
                 cache_dir: Path | None = None):
        self.podman = podman
        self.dir = Path(dir)
        self.hooks_dir = self.dir / "hooks.d"
        self.bin_dir = self.dir / "bin"
        self.log = self.dir / "decisions.jsonl"
        self.cache_dir = cache_dir or self.dir / "cache"
        self.hooks_dir.mkdir(parents=True, exist_ok=True)
        self.install_output = ""
        if install:
            args = ["install", "--engine", "podman", "--hooks-dir", self.hooks_dir,
                    "--bin-dir", self.bin_dir, "--log", self.log, "--cache-dir", self.cache_dir]
            if prestart:
                args.append("--prestart")
            if policy:
                args = ["--policy", policy, *args]
            self.install_output = tiergate(*args).stdout

    def podman_cmd(self, *args: str, check: bool = False, timeout: float | None = None,
                   input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cmd(podman_argv(self.podman, self.hooks_dir, *args), env=self.podman.env,
                       check=check, timeout=timeout or self.podman.timeout, input=input)

    def run(self, image: str, *cmd: str, args: Sequence[str] = (), rm: bool = True,
            check: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return self.podman_cmd("run", *(["--rm"] if rm else []), *args, image, *cmd,
                               check=check, timeout=timeout)

    def status(self, image: str, args: Sequence[str] = ()) -> dict[str, str]:
        proc = self.run(image, "sh", "-c", STATUS_SH, args=args)
        assert proc.returncode == 0, proc.stderr
        return probe_status(proc.stdout)

    def annotations(self, name: str) -> dict[str, str]:
        out = self.podman_cmd("inspect", "--format", "{{json .Config.Annotations}}", name, check=True).stdout
        return json.loads(out) or {}

    def records(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def last(self, stage: str = "precreate") -> dict:
        recs = [r for r in self.records() if r.get("stage") == stage]
        assert recs, f"no {stage} record in {self.log}"
        return recs[-1]

    def mark(self) -> int:
        """Number of records so far: records()[mark:] are the ones written after."""
        return len(self.records())


@pytest.fixture(scope="session")
def tg_images(podman_env):
    """The six test images, imported once: key -> reference (see IMAGES)."""
    for ref, labels in IMAGES.values():
        podman_env.import_image(ref, labels)
    yield {key: ref for key, (ref, _) in IMAGES.items()}
    podman_env.rmi(*(ref for ref, _ in IMAGES.values()))


@pytest.fixture(scope="session")
def tg_policy(podman_env, it_dir, tg_images) -> Path:
    """The shipped policy plus one digest rule: the privileged test image (by its id) may be privileged."""
    image_id = podman_env.image_inspect(tg_images["privileged"])["Id"]
    return trusting_policy(it_dir / "tg-policy.toml", [image_id])


@pytest.fixture(scope="session")
def tg(podman_env, it_dir, tg_images, tg_policy) -> Hooks:
    """tiergate's precreate hook installed (tg_policy) in a hooks dir of its own."""
    return Hooks(podman_env, it_dir / "tg", policy=tg_policy)


@pytest.fixture(scope="session")
def tg_control(podman_env, it_dir, tg_images) -> Hooks:
    """No hook at all: what podman gives without tiergate (the control)."""
    return Hooks(podman_env, it_dir / "tg-control", install=False)


@pytest.fixture
def tgp(podman, tg) -> Hooks:
    """tg for one test; its containers are removed afterwards (by the podman fixture)."""
    return tg
