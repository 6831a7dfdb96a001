"""The Debian package: built from the repository with Debian's tooling, installed
on this machine with apt-get, used to harden a real podman container, purged
without a trace.

packaging/build-deb.sh builds it (debhelper + dh-python; cached by the tree's
git hash, so reruns cost nothing). The module installs it once, runs the tests
in file order and purges it at the end; the last test compares every path
named tiergate under the places a package or the hook writes with what was
there before. tiergate is registered only in a hooks dir of the test's own
(`--hooks-dir`); the default registration is shown by `--dry-run`, which
changes nothing (its no-change proof is the unit test's).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

import harness
from harness import caps_from_hex, run_cmd
from tiergate_fixtures import REPO, Hooks, tg_control, tg_images  # noqa: F401 (fixtures)

from tiergate.engines import front

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
CLI = "/usr/bin/tiergate"
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q"]
APT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}


def _documented() -> list[str]:
    """The paths docs/packaging.md lists under "What it installs" (its first column)."""
    text = (REPO / "docs" / "packaging.md").read_text().split("## What it installs", 1)[1]
    block = text.split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.startswith("/")]


INSTALLS = _documented()

# Where the package and its maintainer scripts write: every path under these named *tiergate* is
# compared before install and after purge. Engine config dirs (/etc/containers, /usr/local/libexec) are
# not: other test runs on a shared machine may register tiergate there at any time; this module
# registers only in a hooks dir of its own and checks that uninstall empties it. /var/log/tiergate and
# /var/cache/tiergate (the hook's defaults, which purge removes) are left out for the same reason.
WATCHED = ["/usr/bin", "/usr/lib", "/usr/share/tiergate", "/usr/share/doc", "/usr/share/man/man1",
           "/usr/share/bash-completion/completions", "/var/lib/dpkg/info"]


def _tiergate_paths() -> set[str]:
    found = set()
    for top in WATCHED:
        for dirpath, dirnames, filenames in os.walk(top):
            found.update(os.path.join(dirpath, n) for n in dirnames + filenames if "tiergate" in n)
    return found


def _installed() -> bool:
    proc = run_cmd(["dpkg-query", "-W", "-f", "${db:Status-Status}", "tiergate"])
    return proc.returncode == 0 and proc.stdout == "installed"


@pytest.fixture(scope="module")
def deb() -> Path:
    harness.require_root()
    harness.require_binary("dpkg-buildpackage")
    proc = run_cmd(["bash", REPO / "packaging" / "build-deb.sh"], timeout=900, check=True)
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def installed(deb):
    """The package installed with apt-get (its Depends from Debian); purged at the end in any case."""
    if _installed():
        pytest.skip("a tiergate package is already installed on this machine: left alone")
    before = _tiergate_paths()
    run_cmd([*APT, "install", "--no-install-recommends", str(deb)], env=APT_ENV, timeout=600, check=True)
    yield before
    if _installed() or run_cmd(["dpkg-query", "-W", "tiergate"]).returncode == 0:
        run_cmd([*APT, "purge", "tiergate"], env=APT_ENV, timeout=600)


def test_the_package_is_built_from_the_repository(deb) -> None:
    assert deb.name == f"tiergate_{VERSION}_all.deb"
    fields = run_cmd(["dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends"], check=True).stdout
    assert f"Version: {VERSION}\n" in fields and "Architecture: all\n" in fields
    assert "python3-prctl" in fields and "python3-nftables" in fields  # Debian's own builds: no compiler on the target
    listing = run_cmd(["dpkg-deb", "-c", deb], check=True).stdout
    # nothing compiled at build; the one C source is the hook's front, which `tiergate install` compiles on
    # the host when it has a C compiler (engines/front.py)
    assert ".so" not in listing and [ln for ln in listing.splitlines() if ln.endswith(".c")] == [
        next(ln for ln in listing.splitlines() if ln.endswith("/usr/lib/tiergate/tiergate/engines/front.c"))]
    for path in INSTALLS:
        assert f".{path}" in listing, path


def test_installed_files_and_cli(installed) -> None:
    listed = set(run_cmd(["dpkg", "-L", "tiergate"], check=True).stdout.split())
    assert set(INSTALLS) <= listed
    assert run_cmd([CLI, "--version"], check=True).stdout == f"tiergate {VERSION}\n"
    assert Path(CLI).read_text().startswith("#!/usr/bin/python3 -I\n")
    from tiergate.cli import completion
    from tiergate.cli import main as cli

    shipped = Path("/usr/share/bash-completion/completions/tiergate").read_text()
    assert shipped == completion.bash_script(cli.parser())  # the CLI's own, generated at build time
    subcommands = completion._subparsers(cli.parser())
    man = {p for p in listed if p.startswith("/usr/share/man/man1/")}
    assert man >= {f"/usr/share/man/man1/tiergate-{c}.1.gz" for c in subcommands}
    page = run_cmd(["man", "-l", "-P", "cat", "/usr/share/man/man1/tiergate-install.1.gz"],
                   env={**APT_ENV, "MANWIDTH": "100"})
    if page.returncode == 0:  # man-db present
        assert "--dry-run" in page.stdout and "podman-runtime" in page.stdout


def test_default_install_dry_run_changes_nothing(installed) -> None:
    """`tiergate install --engine podman` as the docs say, dry: the diff it would apply, with the system interpreter
    (and the check that rootless users could run it passed). That nothing changes is tests/hook/test_commands_install.py's."""
    proc = run_cmd([CLI, "install", "--engine", "podman", "--dry-run"], check=True)
    assert "+++ /usr/share/containers/oci/hooks.d/99-tiergate-precreate.json" in proc.stdout  # where podman 4 reads
    assert "+++ /etc/containers/containers.conf.d/99-tiergate.conf" in proc.stdout  # the shim, its runtime
    assert "+#!/usr/bin/python3 -IS" in proc.stdout
    assert "/usr/lib/tiergate" in proc.stdout  # the launcher imports from the package's dir


def test_installed_package_hardens_a_podman_container(installed, podman_env, tg_images, tg_control, it_dir) -> None:
    hooks = Hooks(podman_env, it_dir / f"deb-{os.getpid()}", install=False)
    run_cmd([CLI, "install", "--engine", "podman", "--hooks-dir", hooks.hooks_dir, "--bin-dir", hooks.bin_dir,
             "--log", hooks.log, "--cache-dir", hooks.cache_dir], check=True)
    try:
        exe = hooks.bin_dir / "tiergate-hook"
        # cc is on this host: install compiled the package's engines/front.c into the hook
        assert front.launcher_of(exe) == str(hooks.bin_dir / "lib" / "tiergate-hook.py")
        launcher = Path(front.launcher_of(exe) or exe).read_text()
        assert launcher.startswith("#!/usr/bin/python3 -IS\n") and "'/usr/lib/tiergate'" in launcher
        pinned = hooks.bin_dir / "lib" / "current" / "tiergate" / "hook" / "stages.py"  # the release install copied
        assert pinned.read_bytes() == Path("/usr/lib/tiergate/tiergate/hook/stages.py").read_bytes()
        doctor = run_cmd([CLI, "doctor", "--hooks-dir", hooks.hooks_dir])
        assert "podman hook" in doctor.stdout and "/usr/bin/python3" in doctor.stdout
        got = hooks.status(tg_images["restricted"])
        control = tg_control.status(tg_images["restricted"])
        assert control["NoNewPrivs"] == "0" and got["NoNewPrivs"] == "1"
        assert caps_from_hex(got["CapEff"]) < caps_from_hex(control["CapEff"])
        assert hooks.last()["tier"] == "restricted"
    finally:
        run_cmd([CLI, "uninstall", "--engine", "podman", "--hooks-dir", hooks.hooks_dir, "--bin-dir", hooks.bin_dir],
                check=True)
    assert not hooks.bin_dir.exists() and list(hooks.hooks_dir.iterdir()) == []


def test_purge_leaves_nothing(installed) -> None:
    """After `tiergate uninstall` (above), purge: no file of the package, no byte-compiled leftovers, nothing new."""
    listed = run_cmd(["dpkg", "-L", "tiergate"], check=True).stdout.split()
    assert os.listdir("/usr/lib/tiergate/tiergate/hook/__pycache__")  # py3compile ran: there is something to clean
    run_cmd([*APT, "purge", "tiergate"], env=APT_ENV, timeout=600, check=True)
    assert run_cmd(["dpkg-query", "-W", "tiergate"]).returncode != 0
    assert [p for p in listed if "tiergate" in p and os.path.lexists(p)] == []
    assert _tiergate_paths() == installed, "left behind (or removed) by install + purge"
