"""Install/uninstall for the runtime engines: docker daemon.json, containerd drop-in, podman containers.conf."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tiergate.engines import containerd, docker, podman_runtime, shim
from tiergate.shim.runtime import is_shim_file
from tiergate.core.errors import EngineConfigError

quiet = {"say": lambda *_: None}


@pytest.fixture
def runc(tmp_path):
    exe = tmp_path / "fake-runc"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return str(exe)


def test_docker_merge_default_and_restore(tmp_path, runc):
    daemon = tmp_path / "daemon.json"
    original = '{"log-driver": "json-file",\n "runtimes": {"other": {"path": "/x"}}, "default-runtime": "runc"}\n'
    daemon.write_text(original)
    bin_dir = tmp_path / "bin"
    exe = docker.install(daemon, bin_dir, default=True, runtime=runc, **quiet)
    doc = json.loads(daemon.read_text())
    assert doc["runtimes"] == {"other": {"path": "/x"}, "tiergate": {"path": str(exe)}}
    assert doc["default-runtime"] == "tiergate" and doc["log-driver"] == "json-file"
    assert (tmp_path / "daemon.json.tiergate-backup").read_text() == original
    assert is_shim_file(str(exe)) and (bin_dir / "tiergate-hook").exists()
    assert f"runtime={runc}" in (bin_dir / "tiergate-runtime.conf").read_text()
    said = []
    docker.install(daemon, bin_dir, default=True, runtime=runc, say=said.append)
    assert not any(s.startswith("wrote") for s in said)  # idempotent
    docker.uninstall(daemon, bin_dir, **quiet)
    assert daemon.read_text() == original and not (tmp_path / "daemon.json.tiergate-backup").exists()
    assert not bin_dir.exists()


def test_docker_no_file_yet(tmp_path, runc):
    daemon = tmp_path / "etc" / "daemon.json"
    docker.install(daemon, tmp_path / "bin", runtime=runc, **quiet)
    assert json.loads(daemon.read_text()) == {"runtimes": {"tiergate": {"path": str(tmp_path / "bin" / "tiergate-runtime")}}}
    docker.uninstall(daemon, tmp_path / "bin", **quiet)
    assert not (tmp_path / "etc").exists()  # the file and the directory install made are gone


def test_docker_broken_file_untouched(tmp_path, runc):
    daemon = tmp_path / "daemon.json"
    daemon.write_text("{oops")
    with pytest.raises(EngineConfigError, match=r"daemon.json:1: not valid JSON"):
        docker.install(daemon, tmp_path / "bin", runtime=runc, **quiet)
    assert daemon.read_text() == "{oops" and not (tmp_path / "bin").exists()


def test_shared_bin_dir_kept_until_last_engine(tmp_path, runc):
    bin_dir = tmp_path / "bin"
    docker.install(tmp_path / "daemon.json", bin_dir, runtime=runc, **quiet)
    containerd.install(tmp_path / "containerd" / "config.toml", bin_dir, runtime=runc, **quiet)
    docker.uninstall(tmp_path / "daemon.json", bin_dir, **quiet)
    assert (bin_dir / "tiergate-runtime").exists()
    containerd.uninstall(tmp_path / "containerd" / "config.toml", bin_dir, **quiet)
    assert not (bin_dir / "tiergate-runtime").exists()


def test_the_shim_is_the_compiled_front_idempotently_and_switches_with_no_warm(tmp_path, runc):
    """With cc, BIN/tiergate-runtime is the compiled front of lib/tiergate-runtime.py; --no-warm makes it
    the sh front and back, each reinstall writing nothing; an earlier install's lib/tiergate-runtime
    goes at the next install or uninstall, which leaves nothing."""
    from tiergate.engines import front

    if front.compiler() is None:
        print("no C compiler (cc) on PATH: no compiled front to install")
        pytest.skip("no C compiler (cc) on PATH")
    daemon, bin_dir = tmp_path / "daemon.json", tmp_path / "bin"
    exe, py, old = bin_dir / shim.SHIM, bin_dir / shim.PY_LAUNCHER, bin_dir / shim.OLD_FRONT

    def install(warm: bool) -> list[str]:
        said: list[str] = []
        docker.install(daemon, bin_dir, runtime=runc, say=said.append, warm=warm)
        return [s for s in said if s.startswith(("wrote", "removed")) and "tiergate-runtime" in s]

    install(True)
    assert exe.read_bytes().startswith(b"\x7fELF") and front.launcher_of(exe) == str(py) and is_shim_file(str(exe))
    assert not old.exists() and subprocess.run([str(exe), "--root", "/r", "list"], timeout=30).returncode == 0
    assert install(True) == []
    assert install(False) == [f"wrote {py}", f"wrote {exe}"]
    assert exe.read_text().startswith("#!/bin/sh\n") and str(py) in exe.read_text() and is_shim_file(str(exe))
    assert install(False) == []
    assert install(True) == [f"wrote {py}", f"wrote {exe}"] and front.launcher_of(exe) == str(py)
    shutil.copy(exe, old)  # an earlier install's compiled front, which its sh front ran
    assert install(True) == [f"removed {old}"]
    shutil.copy(exe, old)
    docker.uninstall(daemon, bin_dir, **quiet)
    assert not bin_dir.exists() and not daemon.exists()


CRI_TABLE = '[plugins."io.containerd.grpc.v1.cri".containerd]'


def _cri(text):
    return tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]


def test_containerd_block_and_restore(tmp_path, runc):
    config = tmp_path / "config.toml"
    original = ('version = 2\nroot = "/var/lib/containerd"\n\n' + CRI_TABLE + '\n  default_runtime_name = "runc"\n'
                '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n    SystemdCgroup = true\n')
    config.write_text(original)
    exe = containerd.install(config, tmp_path / "bin", default=True, runtime=runc, **quiet)
    cri = _cri(config.read_text())
    assert cri["runtimes"]["tiergate"]["options"]["BinaryName"] == str(exe)
    assert cri["runtimes"]["tiergate"]["runtime_type"] == "io.containerd.runc.v2"
    assert cri["runtimes"]["runc"]["options"]["SystemdCgroup"] is True and cri["default_runtime_name"] == "tiergate"
    once = config.read_text()
    containerd.install(config, tmp_path / "bin", default=True, runtime=runc, **quiet)
    assert config.read_text() == once  # idempotent
    containerd.install(config, tmp_path / "bin", default=False, runtime=runc, **quiet)
    assert _cri(config.read_text())["default_runtime_name"] == "runc"
    containerd.uninstall(config, tmp_path / "bin", **quiet)
    assert config.read_text() == original and not (tmp_path / "config.toml.tiergate-backup").exists()


def test_containerd_keeps_builtin_runc(tmp_path, runc):
    """Defining any runtime drops containerd's built-in runc: the block adds it back when config.toml relied on it."""
    config = tmp_path / "config.toml"
    containerd.install(config, tmp_path / "bin", default=True, runtime=runc, **quiet)
    cri = _cri(config.read_text())
    assert set(cri["runtimes"]) == {"runc", "tiergate"} and cri["default_runtime_name"] == "tiergate"
    containerd.uninstall(config, tmp_path / "bin", **quiet)
    assert not config.exists()


def test_containerd_version_1_refused(tmp_path, runc):
    config = tmp_path / "config.toml"
    config.write_text('[plugins.cri]\n  sandbox_image = "x"\n')
    with pytest.raises(EngineConfigError, match=f"^{config}: containerd config version 1: tiergate needs version 2"):
        containerd.install(config, tmp_path / "bin", runtime=runc, **quiet)
    assert not (tmp_path / "bin").exists()


@pytest.mark.skipif(not shutil.which("containerd"), reason="containerd is not installed")
def test_containerd_reads_the_merged_config(tmp_path, runc):
    """containerd itself sees the handler and keeps the rest (config dump, no daemon started)."""
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nroot = "{tmp_path}/root"\n\n'
                      '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n')
    exe = containerd.install(config, tmp_path / "bin", default=True, runtime=runc, **quiet)
    dump = subprocess.run(["containerd", "--config", str(config), "config", "dump"], capture_output=True,
                          text=True, timeout=20, check=True).stdout
    merged = tomllib.loads(dump)
    cri = merged["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert cri["runtimes"]["tiergate"]["options"]["BinaryName"] == str(exe)
    assert cri["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert cri["default_runtime_name"] == "tiergate" and merged["root"] == f"{tmp_path}/root"


def test_podman_runtime_drop_in(tmp_path, runc):
    exe = podman_runtime.install(tmp_path / "conf.d", tmp_path / "bin", default=True, runtime=runc, **quiet)
    conf = tomllib.loads((tmp_path / "conf.d" / "99-tiergate.conf").read_text())
    assert conf["engine"]["runtimes"]["tiergate"] == [str(exe)] and conf["engine"]["runtime"] == "tiergate"
    assert "tiergate" in conf["engine"]["runtime_supports_json"]
    podman_runtime.uninstall(tmp_path / "conf.d", tmp_path / "bin", **quiet)
    assert not (tmp_path / "conf.d" / "99-tiergate.conf").exists() and not (tmp_path / "bin").exists()


def test_containerd_handler_copies_runc_and_supports_version_3(tmp_path, runc):
    """Like nvidia-ctk: the handler carries runc's options (SystemdCgroup) and settings; containerd 2.x
    (config version 3) names the CRI runtime plugin io.containerd.cri.v1.runtime."""
    for version, plugin in ((2, "io.containerd.grpc.v1.cri"), (3, "io.containerd.cri.v1.runtime")):
        config = tmp_path / f"v{version}.toml"
        table = f'plugins."{plugin}".containerd.runtimes.runc'
        config.write_text(f'version = {version}\nroot = "/srv/ctd"\n[{table}]\n  runtime_type = "io.containerd.runc.v2"\n'
                          f'  privileged_without_host_devices = true\n  pod_annotations = ["example.com/*"]\n'
                          f'[{table}.options]\n  SystemdCgroup = true\n  BinaryName = "/usr/bin/runc"\n')
        exe = containerd.install(config, tmp_path / f"bin{version}", runtime=runc, **quiet)
        rt = tomllib.loads(config.read_text())["plugins"][plugin]["containerd"]["runtimes"]
        assert rt["tiergate"]["options"] == {"SystemdCgroup": True, "BinaryName": str(exe)}
        assert rt["tiergate"]["privileged_without_host_devices"] is True
        assert rt["tiergate"]["pod_annotations"] == ["io.tiergate.*", "example.com/*"]
        assert rt["runc"]["options"]["BinaryName"] == "/usr/bin/runc"
        assert "containerd_root=/srv/ctd\n" in (tmp_path / f"bin{version}" / shim.CONF).read_text()
        containerd.uninstall(config, tmp_path / f"bin{version}", **quiet)
        assert "tiergate" not in config.read_text() and not (tmp_path / f"bin{version}" / shim.SHIM).exists()


def test_containerd_broken_config_is_one_line_with_its_line(tmp_path, runc):
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins\n')
    with pytest.raises(EngineConfigError) as exc:
        containerd.install(config, tmp_path / "bin", runtime=runc, **quiet)
    assert str(exc.value).startswith(f"{config}:2: not valid TOML") and "\n" not in str(exc.value)
    assert config.read_text() == 'version = 2\n[plugins\n' and not (tmp_path / "bin").exists()



def test_policy_path_kept_as_given(tmp_path, runc):
    """A ConfigMap volume: policy.toml -> ..data/policy.toml, ..data -> ..2026_x; kubelet swaps ..data."""
    from tiergate.cli.main import main
    from tiergate.core.names import configs_dir

    vol = tmp_path / "cm"
    (vol / "..2026_a").mkdir(parents=True)
    (vol / "..2026_a" / "policy.toml").write_text((Path(configs_dir()) / "policy.toml").read_text())
    (vol / "..data").symlink_to("..2026_a")
    (vol / "policy.toml").symlink_to("..data/policy.toml")
    bin_dir = tmp_path / "bin"
    assert main(["install", "--engine", "containerd", "--config", str(tmp_path / "config.toml"), "--bin-dir",
                 str(bin_dir), "--runtime", runc, "--policy", str(vol / "policy.toml"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"policy={vol / 'policy.toml'}\n" in (bin_dir / shim.CONF).read_text()


def test_runtime_shim_and_podman_hooks_share_the_hook_launcher(tmp_path, runc):
    """The shim's createRuntime network hook and a podman hooks dir both run tiergate-hook: the
    first uninstall keeps it."""
    from tiergate.engines import podman

    bin_dir = tmp_path / "bin"
    docker.install(tmp_path / "daemon.json", bin_dir, runtime=runc, **quiet)
    podman.install(tmp_path / "hooks", bin_dir, [], False, **quiet)
    docker.uninstall(tmp_path / "daemon.json", bin_dir, **quiet)
    assert (bin_dir / "tiergate-hook").exists() and not (bin_dir / "tiergate-runtime").exists()
    docker.install(tmp_path / "daemon.json", bin_dir, runtime=runc, **quiet)
    podman.uninstall([tmp_path / "hooks"], bin_dir, **quiet)
    assert (bin_dir / "tiergate-hook").exists()
    docker.uninstall(tmp_path / "daemon.json", bin_dir, **quiet)
    assert not bin_dir.exists()
