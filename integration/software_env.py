"""Debian's own nginx, PHP-FPM, PostgreSQL, Node.js, ImageMagick and Python in one
image, and the environment the role proofs on real software run in
(test_roles_software.py).

No registry is reachable, so the image is built from the Debian mirror with
``debootstrap --variant=minbase --include=PACKAGES SUITE DIR MIRROR``, trimmed
(apt caches, docs, man pages, locales) and packed into one tar cached outside
the repository, in a root-owned directory keyed by suite, mirror and package
list: ``/var/cache/tiergate-tests/roles-<hash>.tar`` (TIERGATE_IT_CACHE moves
it). The first run builds it (about 3.5 minutes here, under a lock so parallel
runs build it once); later runs only import it. One image holds every role's
software: one debootstrap and one import are much cheaper than one per role,
and the packages share most of their libraries. Each role's image is that
base plus its label (and EXPOSE), made with `podman build` from a Containerfile
with no RUN step, so the layer is shared and nothing is modified; the one
variant docs/roles.md gives for web (nginx and PHP-FPM as www-data) is the
base with that RUN line applied in a container and committed.

SoftwareEnv reuses roles_env: the same peers netns and macvlan network and
tiergate installed with the shipped policy whose documentation CIDRs point at
the peers. Its controls run the very same image, label and flags through the
same scratch podman with an empty hooks dir: tiergate is the only difference.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from harness import _change_flags, _unavailable, require_binary, run_cmd
from roles_env import IMAGE_PREFIX, Peers, RoleEnv, skip_unless_tools, wait_for
from tiergate_fixtures import podman_argv

SUITE = "bookworm"
PACKAGES = ("nginx", "php-fpm", "postgresql", "nodejs", "imagemagick", "python3", "openssl",
            "busybox", "iproute2", "procps")
# the packages docs/roles.md names, with the versions the tests print
SOFTWARE = ("nginx", "php8.2-fpm", "postgresql-15", "nodejs", "imagemagick-6.q16", "python3", "openssl")
LABEL = "io.tiergate.tier"
# docs/roles.md, web: the change that lets Debian's nginx and PHP-FPM run with no capability at all
# (as www-data from the start, so they need no chown and no setuid/setgid)
WEB_RUN = ("chown -R www-data: /var/lib/nginx /var/log/nginx && "
           "sed -i -e '/^user /d' -e 's#^pid .*#pid /tmp/nginx.pid;#' /etc/nginx/nginx.conf && "
           "install -o www-data -m 640 /dev/null /var/log/php8.2-fpm.log")
WEB_USER = "www-data"
WEB_UNPRIVILEGED = f"RUN {WEB_RUN}\nUSER {WEB_USER}"  # as docs/roles.md shows it
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_DIR = Path(os.environ.get("TIERGATE_IT_CACHE", "/var/cache/tiergate-tests"))
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/locale", "usr/share/info")
BUILD_VERSION = "1"  # bump when the build steps below change what goes into the tar


def debian_mirror(sources: tuple[str, ...] = ("/etc/apt/sources.list.d/debian.sources",
                                               "/etc/apt/sources.list")) -> str:
    """The host's configured Debian mirror (a URI ending in /debian), else deb.debian.org."""
    if os.environ.get("TIERGATE_IT_DEBIAN_MIRROR"):
        return os.environ["TIERGATE_IT_DEBIAN_MIRROR"]
    for path in sources:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for word in text.split():
            if word.startswith(("http://", "https://")) and word.rstrip("/").endswith("/debian"):
                return word.rstrip("/")
    return DEFAULT_MIRROR


def cache_key(mirror: str) -> str:
    text = "\n".join((BUILD_VERSION, SUITE, mirror, *sorted(PACKAGES)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def software_rootfs_tar() -> Path:
    """The cached tar of the Debian rootfs, built first if it is missing."""
    mirror = debian_mirror()
    tar = CACHE_DIR / f"roles-{cache_key(mirror)}.tar"
    CACHE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    for path in (CACHE_DIR, tar):  # root runs what is in the tar: only root may have written it
        if path.exists() and (path.stat().st_uid != 0 or path.stat().st_mode & 0o022):
            raise RuntimeError(f"{path} is not root-owned or is group/world-writable: remove it")
    if tar.exists():
        return tar
    debootstrap = require_binary("debootstrap", "/usr/sbin/debootstrap")
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same tar
        if tar.exists():
            return tar
        work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_DIR))
        try:
            started = time.monotonic()
            root = work / "root"
            proc = run_cmd([debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}",
                            SUITE, root, mirror], timeout=1500)
            if proc.returncode != 0:
                _unavailable(f"debootstrap from {mirror} failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
            for sub in TRIM:
                shutil.rmtree(root / sub, ignore_errors=True)
                (root / sub).mkdir(parents=True, exist_ok=True)
            part = work / "roles.tar"
            run_cmd(["tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", part, "."], timeout=600, check=True)
            os.replace(part, tar)
            print(f"\nbuilt {tar} from {mirror} in {time.monotonic() - started:.0f} s")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tar


def package_versions(tar: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of `names` read from the tar's dpkg status file."""
    out = run_cmd(["tar", "-xOf", tar, "./var/lib/dpkg/status"], timeout=60, check=True).stdout
    versions = {}
    for stanza in out.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") in names:
            versions[fields["Package"]] = fields.get("Version", "")
    return versions


class SoftwareEnv(RoleEnv):
    """Peers + tiergate (as RoleEnv) + the Debian image as role images; runs with and without the hook."""

    def __init__(self, podman, peer_ports: tuple[int, ...]) -> None:
        super().__init__(podman, rootfs_dir=None)
        self.peers = Peers(podman, self.dir, ports=peer_ports)
        self.no_hooks = self.dir / "no-hooks"
        self.files = self.dir / "files"  # mounted read-only at /srv/tg
        self.base = IMAGE_PREFIX + "software"
        self.versions: dict[str, str] = {}

    def start(self) -> SoftwareEnv:
        t = time.monotonic()
        self.no_hooks.mkdir()
        self.files.mkdir(mode=0o755)
        self.files.chmod(0o755)
        tar = software_rootfs_tar()
        self.versions = package_versions(tar, SOFTWARE)
        self.podman.import_image(self.base, {}, tar=tar)
        self.images.append(self.base)
        for role in (*self.ROLES, "restricted"):  # restricted: the roles' base
            self.derive(role, {LABEL: role}, expose=[5432] if role == "database" else [80] if role == "web" else [])
        self.derive("web-unprivileged", {LABEL: "web"}, expose=[80], run=WEB_RUN, user=WEB_USER)
        self.install()
        print(f"\nsoftware env ready in {time.monotonic() - t:.1f} s; versions {self.versions}")
        return self

    def derive(self, name: str, labels: dict, expose=(), run: str = "", user: str = "") -> str:
        """IMAGE_PREFIX+name: the base image plus labels and EXPOSE (podman build, no container), or,
        with run, what `sh -c run` left in a container of it (podman commit, USER user)."""
        ref = IMAGE_PREFIX + name
        if run:  # as a Containerfile's RUN, without podman build's RUN container (it ignores our cgroup parent)
            tmp = f"tg-sw-build-{secrets.token_hex(4)}"
            run_cmd(self.argv(False, "run", "--name", tmp, self.base, "/bin/sh", "-c", run), env=self.podman.env,
                    check=True, timeout=120)
            changes = _change_flags(labels, expose, None) + (["--change", f"USER {user}"] if user else [])
            run_cmd(self.argv(False, "commit", "-q", *changes, tmp, ref), env=self.podman.env, check=True, timeout=300)
            self.podman.podman("rm", "-f", tmp, timeout=60)
        else:
            ctx = self.dir / f"build-{name}"
            ctx.mkdir()
            lines = [f"FROM {self.base}", *(f'LABEL "{k}"="{v}"' for k, v in labels.items()),
                     *(f"EXPOSE {p}" for p in expose)]
            (ctx / "Containerfile").write_text("\n".join(lines) + "\n")
            run_cmd(self.argv(False, "build", "-q", "-t", ref, str(ctx)), env=self.podman.env, check=True, timeout=300)
        self.images.append(ref)
        return ref

    def file(self, name: str, text: str, mode: int = 0o644) -> str:
        """A file under /srv/tg in every container (mounted read-only); returns its path there."""
        path = self.files / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text(text)
        path.chmod(mode)
        return f"/srv/tg/{name}"

    def argv(self, hooked: bool, *args: str) -> list[str]:
        return podman_argv(self.podman, self.podman.hooks_dir if hooked else self.no_hooks, *args)

    def run(self, image: str, *cmd: str, args=(), hooked: bool = True, timeout: float = 90):
        ref = image if "/" in image else IMAGE_PREFIX + image
        return run_cmd(self.argv(hooked, "run", "--rm", "-v", f"{self.files}:/srv/tg:ro", *args, ref, *cmd),
                       env=self.podman.env, timeout=timeout)

    def serve(self, image: str, script: str, *, args=(), hooked: bool = True, secs: float = 60) -> str:
        """A detached container running script, once its output shows READY; returns its name."""
        name = f"tg-sw-{secrets.token_hex(4)}"
        ref = image if "/" in image else IMAGE_PREFIX + image
        run_cmd(self.argv(hooked, "run", "-d", "--name", name, "-v", f"{self.files}:/srv/tg:ro", *args, ref,
                          "/bin/sh", "-c", script), env=self.podman.env, timeout=60, check=True)

        def ready():
            logs = self.logs(name)
            if "READY" in logs:
                return True
            state = self.podman.podman("inspect", "--format", "{{.State.Running}}", name, timeout=20).stdout
            assert "true" in state, f"{image} exited before READY: {logs[-1500:]}"
            return False
        wait_for(ready, secs, f"{image} to be ready")
        return name

    def logs(self, name: str) -> str:
        proc = self.podman.podman("logs", name, timeout=20)
        return proc.stdout + proc.stderr

    def exec(self, name: str, *cmd: str, timeout: float = 60):
        return self.podman.podman("exec", name, *cmd, timeout=timeout)


def software_env_fixture(peer_ports: tuple[int, ...]):
    """A module-scoped `env` fixture: SoftwareEnv started, stopped after the module."""
    import pytest

    @pytest.fixture(scope="module")
    def env(podman_env):
        skip_unless_tools()
        e = SoftwareEnv(podman_env, peer_ports)
        try:
            yield e.start()
        finally:
            e.stop()

    return env
