"""The main job: tiers enforced on real podman containers, with the shipped default policy.

The shipped policy trusts no image name, so the demo brings its own policy: the
shipped one plus a digest rule letting its privileged image (by its id) run
privileged.

Builds busybox-static images labelled with each shipped tier, registers
tiergate's precreate hook with a scratch podman (its own storage, config and
hooks dir: nothing shared is touched), runs the same probes in each container
and prints side by side what each could and could not do. Run as root via
integration/demo.sh, which installs what it needs first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Podman, busybox_rootfs, caps_from_hex, probe_status  # noqa: E402
from tiergate_fixtures import trusting_policy  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIERGATE = [sys.executable, "-m", "tiergate.cli.main"]

# (image name, labels, what it shows); the last column is the control: the privileged
# tier changes nothing, and these flags let every probe succeed, so a "-" elsewhere is the tier.
CONTROL_FLAGS = ["--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
                 "--security-opt", "unmask=ALL", "--pids-limit", "0"]
IMAGES = [
    ("localhost/tiergate-demo-privileged", {"io.tiergate.tier": "privileged"}, "privileged"),
    ("localhost/tiergate-demo-unlabelled", {}, "no label"),
    ("localhost/tiergate-demo-baseline", {"io.tiergate.tier": "baseline"}, "baseline"),
    ("localhost/tiergate-demo-restricted", {"io.tiergate.tier": "restricted"}, "restricted"),
    ("localhost/tiergate-demo-isolated", {"io.tiergate.tier": "isolated"}, "isolated"),
    ("registry.example/untrusted/app", {"io.tiergate.tier": "privileged", "org.example.app": "untrusted"},
     "untrusted*"),
]

# Each probe prints OK or NO; `sh -c` so one container runs them all.
PROBES = [
    ("capabilities (CapEff)", None),
    ("no_new_privs", None),
    ("seccomp mode", None),
    ("chown a file (CAP_CHOWN)", "chown 65534 /tmp"),
    ("chroot (CAP_SYS_CHROOT)", "chroot / true"),
    ("listen on port 80 (NET_BIND_SERVICE)", "timeout 1 nc -l -p 80; [ $? -eq 143 ]"),
    ("mount a tmpfs (CAP_SYS_ADMIN)", "mount -t tmpfs none /tmp"),
    ("new user namespace (unshare -U)", "unshare -U true"),
    ("read /proc/keys (masked)", "grep -q . /proc/keys"),
    ("write /proc/sys (read-only)", "echo 1 > /proc/sys/kernel/ns_last_pid"),
    ("fork 300 processes (pids limit)", "i=0; while [ $i -lt 300 ]; do sleep 2 & i=$((i+1)); done; wait"),
]


def script() -> str:
    lines = ["cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs|Seccomp):'"]
    for i, (_, cmd) in enumerate(PROBES):
        if cmd:
            lines.append(f"if ( {cmd} ) >/dev/null 2>&1; then echo P{i}=OK; else echo P{i}=NO; fi")
    return "\n".join(lines)


def run_probes(podman: Podman, image: str, flags: list[str] = ()) -> tuple[dict, str]:
    proc = podman.run(image, "/bin/sh", "-c", script(), args=list(flags), timeout=120)
    if proc.returncode != 0:
        return {}, (proc.stderr.strip().splitlines() or ["exit " + str(proc.returncode)])[-1]
    status = probe_status(proc.stdout)
    out = {0: f"{len(caps_from_hex(status['CapEff']))} caps", 1: status["NoNewPrivs"], 2: status["Seccomp"]}
    for line in proc.stdout.splitlines():
        if line.startswith("P") and "=" in line:
            key, value = line[1:].split("=", 1)
            out[int(key)] = "yes" if value == "OK" else "-"
    return out, ""


def tier_of(log: Path, image: str) -> str:
    """The tier the last decision for `image` granted (from the decision log)."""
    tier = "?"
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("stage") == "precreate" and str(rec.get("image", "")).startswith(image + ":"):
            tier = rec.get("tier") or rec.get("outcome", "?")
    return tier


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tiergate-demo-") as tmp:
        d = Path(tmp)
        rootfs = busybox_rootfs(d / "img")
        podman = Podman(d / "podman", image_tar=rootfs.tar)
        try:
            print(f"tiergate demo: scratch podman in {podman.dir} (runtime {podman.runtime})\n")
            ids = {name: podman.import_image(name, labels) for name, labels, _ in IMAGES}
            policy = trusting_policy(d / "demo-policy.toml", [ids[IMAGES[0][0]]])
            print(f"policy: the shipped one plus a digest rule: {IMAGES[0][0]} (sha256:{ids[IMAGES[0][0]][:12]}...) "
                  f"may be privileged ({policy})\n")
            subprocess.run([*TIERGATE, "--policy", str(policy), "install", "--engine", "podman", "--hooks-dir",
                            str(podman.hooks_dir), "--bin-dir", str(d / "bin"), "--log", str(d / "decisions.jsonl"),
                            "--cache-dir", str(d / "cache")], check=True)
            print()
            results, tiers, errors = [], [], []
            for name, _, _ in IMAGES:
                res, err = run_probes(podman, name)
                tiers.append(tier_of(d / "decisions.jsonl", name))
                results.append(res)
                errors.append(err)
            res, err = run_probes(podman, IMAGES[0][0], CONTROL_FLAGS)  # the control
            results.append(res)
            errors.append(err)
            width = max(len(p) for p, _ in PROBES) + 2
            cols = [label for _, _, label in IMAGES] + ["control**"]
            granted = [f"-> {tier}" for tier in tiers] + ["(privileged)"]
            colw = max(12, *(len(c) for c in cols + granted)) + 2
            print("what each container could do (yes = it worked inside the container)\n")
            print("image label asks for".ljust(width) + "".join(c.ljust(colw) for c in cols))
            print("tier tiergate granted".ljust(width) + "".join(c.ljust(colw) for c in granted))
            for i, (probe, _) in enumerate(PROBES):
                print(probe.ljust(width) + "".join(str(r.get(i, "?")).ljust(colw) for r in results))
            print("\n*  registry.example/untrusted/app asks for privileged; trust rules allow it baseline at most")
            print(f"** the privileged image run with {' '.join(CONTROL_FLAGS)}: every probe can succeed")
            for (name, _, _), err in zip([*IMAGES, (IMAGES[0][0] + " (control)", None, None)], errors):
                if err:
                    print(f"\n{name}: did not start: {err}")

            print("\nescalation attempts on the restricted image (the restricted tier refuses them):")
            sock = d / "podman.sock"
            sock.touch()  # stands in for an engine socket: recognised by its name wherever it lives
            for flags in (["--privileged"], ["--cap-add", "ALL"], ["--pid", "host"],
                          ["-v", f"{sock}:/var/run/docker.sock"]):
                proc = podman.run("localhost/tiergate-demo-restricted", "true", args=flags, timeout=120)
                msg = (proc.stderr.strip().splitlines() or [""])[-1]
                short = msg[msg.find("tiergate:"):] if "tiergate:" in msg else msg
                print(f"  podman run {' '.join(flags)}: exit {proc.returncode}: {short[:160]}")
            print("\nthe same on the baseline image is clamped instead (the container runs, the decision says so):")
            proc = podman.run("localhost/tiergate-demo-baseline", "/bin/sh", "-c",
                              "grep CapEff /proc/self/status", args=["--cap-add", "SYS_ADMIN"], timeout=120)
            print(f"  podman run --cap-add SYS_ADMIN: exit {proc.returncode}: {proc.stdout.strip()}"
                  f" ({len(caps_from_hex(proc.stdout.split()[-1]))} caps, SYS_ADMIN removed)" if proc.returncode == 0
                  else f"  podman run --cap-add SYS_ADMIN: exit {proc.returncode}: {proc.stderr.strip()[-160:]}")
            records = [json.loads(line) for line in (d / "decisions.jsonl").read_text().splitlines()]
            print(f"\ndecision log: {len(records)} records in {d / 'decisions.jsonl'}; the last one:")
            print("  " + json.dumps({k: records[-1].get(k) for k in ("image", "requested", "tier", "outcome", "why", "duration_ms")}))
            subprocess.run([*TIERGATE, "uninstall", "--engine", "podman", "--hooks-dir", str(podman.hooks_dir),
                            "--bin-dir", str(d / "bin")], check=True, stdout=subprocess.DEVNULL)
        finally:
            podman.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
