"""tiergate-runtime as podman's OCI runtime (`tiergate install --engine podman-runtime`), no hooks.d hook.

The shim is installed into a scratch containers.conf.d dir with
`tiergate install --engine podman-runtime --config DIR --bin-dir B --default`;
the drop-in it writes ([engine] runtime = "tiergate", [engine.runtimes]
tiergate = [B/tiergate-runtime], runtime_supports_json) is laid over a scratch
podman's containers.conf (harness.Podman(containers_conf=...): CONTAINERS_CONF
names one file, so podman reads no containers.conf.d beside it). Commands
"through tiergate" drop the harness's `--runtime runc` flag, so podman uses the
drop-in's default runtime as a host with the drop-in would; the CONTROL is the
same podman with `--runtime runc`. The shim's real runtime is runc, with the
harness's private `--runtime-flag root=...`. The hooks dir stays empty.

What this mode adds over hooks.d (README "Known gap: podman exec"): `podman exec`
goes through the runtime, so the exec'd process gets the container's tier.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

import harness
from harness import caps_from_hex, probe_status, wait_until
from tiergate_fixtures import LABEL, STATUS_SH, compiled_policy, refusal_line, tiergate

pytestmark = pytest.mark.podman

RESTRICTED_CAPS = {"CAP_NET_BIND_SERVICE"}  # CapEff 0000000000000400
IMAGES = {
    "restricted": ("localhost/tiergate-rt-restricted", {LABEL: "restricted"}),
    "baseline": ("localhost/tiergate-rt-baseline", {LABEL: "baseline"}),
}
DROP_IN = "99-tiergate.conf"


class RuntimePodman:
    """A scratch podman whose default runtime is tiergate-runtime (from the installed drop-in)."""

    def __init__(self, dir: Path, image_tar: Path, policy: Path | None = None):
        self.dir = Path(dir)
        self.conf_d = self.dir / "containers.conf.d"
        self.bin_dir = self.dir / "bin"
        self.log = self.dir / "decisions.jsonl"
        self.conf_d.mkdir(parents=True, exist_ok=True)
        self.install_args = ["--engine", "podman-runtime", "--config", self.conf_d, "--bin-dir", self.bin_dir]
        self.install_output = tiergate(*(["--policy", policy] if policy else []), "install", *self.install_args,
                                       "--default", "--log", self.log, "--cache-dir", self.dir / "cache").stdout
        self.drop_in = tomllib.loads((self.conf_d / DROP_IN).read_text())
        self.shim = self.bin_dir / "tiergate-runtime"
        self.podman = harness.Podman(self.dir / "podman", image_tar=image_tar, containers_conf=self.drop_in)
        flags = list(self.podman.global_flags)
        at = flags.index("--runtime")
        self.shim_flags = flags[:at] + flags[at + 2:]  # no --runtime: containers.conf's default (tiergate)
        self.images = {key: ref for key, (ref, _) in IMAGES.items()}
        for ref, labels in IMAGES.values():
            self.podman.import_image(ref, labels)

    def _argv(self, flags: list[str], args: tuple[str, ...]) -> list[str]:
        args_l = list(args)
        if args_l and args_l[0] in ("run", "create"):
            args_l = [args_l[0], "--network", "none", "--cgroup-parent", self.podman.cgroup_parent, *args_l[1:]]
        return [self.podman.binary, *flags, *args_l]

    def tg(self, *args: str, check: bool = False, timeout: float = 60):
        """podman through tiergate-runtime (the drop-in's default runtime)."""
        return harness.run_cmd(self._argv(self.shim_flags, args), env=self.podman.env, check=check, timeout=timeout)

    def control(self, *args: str, check: bool = False, timeout: float = 60):
        """The same podman on plain runc (`--runtime runc`): no tiergate at all."""
        return harness.run_cmd(self._argv(self.podman.global_flags, args), env=self.podman.env, check=check,
                               timeout=timeout)

    def records(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def cleanup(self) -> None:
        from tiergate.engines import warm

        # Our shim's warm helper was started from a conmon and lives in its cgroup: stopped
        # first, so the engine's cgroups can go (and again after uninstall, in case a last
        # start started another).
        warm.stop("", under=str(self.bin_dir), say=lambda *_: None)
        try:
            self.podman.cleanup()
        finally:
            tiergate("uninstall", *self.install_args, check=False)
            harness.remove_cgroup(self.podman.cgroup_parent.rsplit("/", 1)[0])
            harness.remove_tree(self.dir)


@pytest.fixture(scope="module")
def rt(it_dir, busybox_rootfs):
    harness.require_root()
    harness.require_binary("podman")
    engine = RuntimePodman(it_dir / "podman-runtime", busybox_rootfs.tar)
    yield engine
    engine.cleanup()


@pytest.fixture
def containers(rt):
    """Factory: a detached `sleep` container from image key, through tiergate or on plain runc."""
    made = []

    def start(key: str, *, control: bool = False, name: str | None = None) -> str:
        run = rt.control if control else rt.tg
        cid = run("run", "-d", *(["--name", name] if name else []), rt.images[key], "sleep", "120",
                  check=True).stdout.strip().splitlines()[-1]
        made.append(cid)
        return cid

    yield start
    if made:
        rt.control("rm", "--force", "--time", "0", *made, timeout=120)


def status(proc) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return probe_status(proc.stdout)


def caps(s: dict, key: str = "CapEff") -> set[str]:
    return caps_from_hex(s[key])


def defaults(rt) -> set[str]:
    """podman's default capability set here (the control's CapEff)."""
    return caps(status(rt.control("run", "--rm", rt.images["restricted"], "sh", "-c", STATUS_SH)))


# --------------------------------------------------------------------------

class TestSetup:
    def test_drop_in_makes_tiergate_the_runtime(self, rt):
        engine = rt.drop_in["engine"]
        assert engine["runtime"] == "tiergate"
        assert engine["runtimes"]["tiergate"] == [str(rt.shim)]
        assert "tiergate" in engine["runtime_supports_json"]
        info = json.loads(rt.tg("info", "--format", "{{json .Host.OCIRuntime}}", check=True).stdout)
        assert info["name"] == "tiergate" and info["path"] == str(rt.shim)
        assert not any(rt.podman.hooks_dir.iterdir())  # no hooks.d hook: the shim alone

    def test_install_is_idempotent_and_uninstall_restores(self, tmp_path):
        conf_d, bin_dir = tmp_path / "conf.d", tmp_path / "bin"
        conf_d.mkdir()
        (conf_d / "10-site.conf").write_text('[engine]\nevents_logger = "file"\n')
        args = ["--engine", "podman-runtime", "--config", conf_d, "--bin-dir", bin_dir]
        tiergate("install", *args)
        first = (conf_d / DROP_IN).read_text()
        tiergate("install", *args)
        assert (conf_d / DROP_IN).read_text() == first
        assert "runtime =" not in first.split("[engine.runtimes]")[0]  # without --default: only a named runtime
        tiergate("uninstall", *args)
        assert sorted(p.name for p in conf_d.iterdir()) == ["10-site.conf"] and not bin_dir.exists()


class TestCreate:
    def test_restricted_label_from_inside(self, rt):
        mark = len(rt.records())
        s = status(rt.tg("run", "--rm", rt.images["restricted"], "sh", "-c", STATUS_SH))
        assert caps(s) == caps(s, "CapPrm") == caps(s, "CapBnd") == RESTRICTED_CAPS
        assert s["CapEff"] == "0000000000000400" and s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"
        rec = [r for r in rt.records()[mark:] if r.get("stage") == "create"][-1]
        assert rec["outcome"] == "allowed" and rec["tier"] == "restricted" and rec["engine"] == "podman-runtime"
        assert rec["image"] == rt.images["restricted"] + ":latest"  # labels found in containers-storage

    def test_control_gets_podman_defaults(self, rt):
        s = status(rt.control("run", "--rm", rt.images["restricted"], "sh", "-c", STATUS_SH))
        assert caps(s) > RESTRICTED_CAPS and "CAP_CHOWN" in caps(s) and s["NoNewPrivs"] == "0"

    def test_baseline_keeps_defaults_with_no_new_privs(self, rt):
        s = status(rt.tg("run", "--rm", rt.images["baseline"], "sh", "-c", STATUS_SH))
        assert caps(s) == defaults(rt) and s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"

    def test_cap_add_refused_with_the_reason(self, rt):
        control = status(rt.control("run", "--rm", "--cap-add", "SYS_ADMIN", rt.images["restricted"],
                                    "sh", "-c", STATUS_SH))
        assert "CAP_SYS_ADMIN" in caps(control)
        mark = len(rt.records())
        proc = rt.tg("run", "--rm", "--cap-add", "SYS_ADMIN", rt.images["restricted"], "sh", "-c", STATUS_SH)
        assert proc.returncode == 126 and "CapEff" not in proc.stdout, (proc.stdout, proc.stderr)
        # podman: `Error: OCI runtime error: tiergate: tiergate: refused: ...` (runtime name, then the shim's line)
        assert "Error: OCI runtime error: " in proc.stderr
        assert refusal_line(proc).endswith(
            "tiergate: refused: tier restricted refuses a container that asks for capabilities beyond the "
            "engine defaults: CAP_SYS_ADMIN (--cap-add or --privileged)"), proc.stderr
        assert rt.records()[mark:][-1]["outcome"] == "refused"

    def test_privileged_refused_on_restricted(self, rt):
        proc = rt.tg("run", "--rm", "--privileged", rt.images["restricted"], "true")
        assert proc.returncode == 126 and "tiergate: refused: tier restricted refuses" in proc.stderr, proc.stderr


class TestExec:
    """The point of this mode: `podman exec` goes through the runtime, so the tier holds there too."""

    def test_exec_gets_the_tier(self, rt, containers):
        cid = containers("restricted")
        mark = len(rt.records())
        s = status(rt.tg("exec", cid, "sh", "-c", STATUS_SH))
        assert caps(s) == caps(s, "CapBnd") == RESTRICTED_CAPS
        assert s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"  # hooks.d: NoNewPrivs 0 here
        rec = [r for r in rt.records()[mark:] if r.get("stage") == "exec"][-1]
        assert rec["outcome"] == "allowed" and rec["tier"] == "restricted" and rec["container"] == cid
        assert "$.process.noNewPrivileges: set to true" in rec["changes"]

    def test_exec_privileged_refused_on_restricted(self, rt, containers):
        cid = containers("restricted")
        proc = rt.tg("exec", "--privileged", cid, "sh", "-c", STATUS_SH)
        assert proc.returncode != 0 and "CapEff" not in proc.stdout, (proc.returncode, proc.stdout)
        assert "Error: OCI runtime error: " in proc.stderr
        assert "tiergate: refused: tier restricted refuses an exec" in proc.stderr, proc.stderr
        # the container is untouched: a plain exec still works, within the tier
        assert caps(status(rt.tg("exec", cid, "sh", "-c", STATUS_SH))) == RESTRICTED_CAPS

    def test_exec_privileged_clamped_on_baseline(self, rt, containers):
        """baseline clamps (on_escalation = clamp): exec --privileged runs, within the tier's capabilities."""
        cid = containers("baseline")
        s = status(rt.tg("exec", "--privileged", cid, "sh", "-c", STATUS_SH))
        assert caps(s) == caps(s, "CapBnd") <= set(compiled_policy()["tiers"]["baseline"]["capabilities"])
        assert "CAP_SYS_ADMIN" not in caps(s) and s["NoNewPrivs"] == "1" and s["Seccomp"] == "2"

    def test_exec_privileged_gains_nothing_over_the_container(self, rt, containers):
        cid = containers("baseline")
        own = caps(status(rt.tg("exec", cid, "sh", "-c", STATUS_SH)))
        assert own == defaults(rt)
        s = status(rt.tg("exec", "--privileged", cid, "sh", "-c", STATUS_SH))
        assert caps(s, "CapBnd") <= own, caps(s, "CapBnd") - own

    def test_control_exec_on_plain_runc(self, rt, containers):
        """CONTROL (the documented gap's shape): without the shim an exec has NoNewPrivs 0 and
        `exec --privileged` gets every capability the host's bounding set holds."""
        cid = containers("restricted", control=True)
        s = status(rt.control("exec", cid, "sh", "-c", STATUS_SH))
        assert s["NoNewPrivs"] == "0" and caps(s) == defaults(rt)
        priv = status(rt.control("exec", "--privileged", cid, "sh", "-c", STATUS_SH))
        host_bnd = caps_from_hex(probe_status(Path("/proc/self/status").read_text())["CapBnd"])
        assert caps(priv) == host_bnd and "CAP_SYS_ADMIN" in caps(priv) and priv["NoNewPrivs"] == "0"

    def test_exec_refusal_reads_well(self, rt, containers):
        cid = containers("restricted")
        proc = rt.tg("exec", "--privileged", cid, "true")
        assert "tiergate: refused: tier restricted refuses an exec" in proc.stderr, proc.stderr
        assert "exec whose asks" not in proc.stderr

    def test_exec_record_names_the_engine(self, rt, containers):
        cid = containers("restricted")
        rt.tg("exec", cid, "true", check=True)
        recs = [r for r in rt.records() if r.get("container") == cid]
        assert {r["stage"] for r in recs} >= {"create", "exec"}
        assert {r["engine"] for r in recs} == {"podman-runtime"}


class TestPassThrough:
    def test_lifecycle(self, rt, containers):
        cid = containers("restricted", name="tg-rt-life")
        mark = len(rt.records())
        assert "sleep" in rt.tg("top", cid, check=True).stdout
        rt.tg("pause", cid, check=True)
        assert rt.tg("inspect", "-f", "{{.State.Status}}", cid, check=True).stdout.strip() == "paused"
        rt.tg("unpause", cid, check=True)
        assert rt.tg("inspect", "-f", "{{.State.Status}}", cid, check=True).stdout.strip() == "running"
        rt.tg("kill", cid, check=True)
        wait_until(lambda: rt.tg("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "exited",
                   timeout=20, what="container to exit")
        rt.tg("rm", cid, check=True)
        assert cid not in rt.tg("ps", "-aq", "--no-trunc").stdout
        other = containers("restricted")
        rt.tg("stop", "-t", "1", other, check=True)
        assert rt.tg("inspect", "-f", "{{.State.Status}} {{.OCIRuntime}}", other,
                     check=True).stdout.split() == ["exited", "tiergate"]
        rt.tg("rm", other, check=True)
        # pass-through subcommands never start tiergate: only the second container's create was recorded
        assert [r["stage"] for r in rt.records()[mark:]] == ["create"]
