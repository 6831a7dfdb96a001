"""`tiergate install` / `uninstall`: register with an engine, idempotently; print what was done.

Engines:
  podman           the precreate hook in the hooks.d dir podman reads AND the shim as podman's
                   default runtime (a containers.conf.d drop-in), so `podman exec` is hardened
                   too; with --hooks-dir and no --config: the hook alone, where you said
  docker           a `tiergate` runtime in daemon.json, made the default runtime (--no-default: only added)
  containerd       a `tiergate` runtime handler in a config.toml drop-in (RuntimeClass, ctr)
  podman-runtime   a `tiergate` runtime in a containers.conf drop-in (hooks.d alternative)
The three runtime engines install the tiergate-runtime shim and the hook launcher in --bin-dir.
Run by a non-root user, podman and podman-runtime default to per-user paths (user_paths):
~/.local/libexec/tiergate, ~/.config/containers/{oci/hooks.d,containers.conf.d}, and the
hook is told its cache and log in its argv (rootless hooks run as uid 0 of a user namespace,
without HOME).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tiergate.engines import ENGINES


def register(sub) -> None:
    for name in ("install", "uninstall"):
        c = sub.add_parser(name, help=f"{name} tiergate for an engine (idempotent)")
        c.add_argument("--engine", required=True, choices=list(ENGINES), help="engine to register with")
        c.add_argument("--hooks-dir", type=Path, default=None, help="podman hooks.d directory")
        c.add_argument("--bin-dir", type=Path, default=None, help="where the hook launcher and runtime shim live")
        c.add_argument("--daemon-json", type=Path, default=None, help="docker: daemon.json (default /etc/docker/daemon.json)")
        c.add_argument("--config", type=Path, default=None,
                       help="containerd: config.toml (default /etc/containerd/config.toml); "
                            "podman, podman-runtime: containers.conf.d directory (default "
                            "/etc/containers/containers.conf.d, ~/.config/containers/containers.conf.d for a user)")
        c.add_argument("--dry-run", action="store_true",
                       help="print the exact changes (unified diffs of each file) and change nothing")
        if name == "install":
            c.add_argument("--policy", default=argparse.SUPPRESS, help="policy file the hook uses (checked first)")
            c.add_argument("--prestart", action="store_true", help="podman: also register the prestart verify hook")
            c.add_argument("--default", action="store_true",
                           help="containerd, podman-runtime: make tiergate the default runtime (docker: already the default)")
            c.add_argument("--no-default", action="store_true",
                           help="docker: only add the `tiergate` runtime (plain `docker run` stays unhardened)")
            c.add_argument("--runtime", help="the real runtime the shim hands over to (default: runc on PATH; crun works)")
            c.add_argument("--log", help="decision log file for the hook, or 'journal' for systemd-journald")
            c.add_argument("--cache-dir", help="compiled-policy cache directory for the hook")
            c.add_argument("--no-warm", action="store_true",
                           help="no warm helper: every start runs in the hook's own process (~2x a no-op hook's "
                                "cost instead of ~0.85x; no root process stays up to 120 s after a start)")
            c.set_defaults(func=_dry_run_aware(cmd_install))
        else:
            c.set_defaults(func=_dry_run_aware(lambda a: cmd_install(a, remove=True)))


def _dry_run_aware(func):
    """With --dry-run every file change the engine module makes is printed as a diff, none is made."""
    def run(args) -> int:
        if not args.dry_run:
            return func(args)
        from tiergate.engines import files

        with files.dry_run():
            return func(args)
    return run


def _settings(args, home: str | None = None) -> dict:
    """Hook settings from the flags; a non-root user's cache and log default to their home."""
    out = {}
    if getattr(args, "policy", None):
        from tiergate.policy.compile import compile_file

        compile_file(args.policy)  # refuse to install a broken policy
        # Absolute, symlinks kept: a ConfigMap-mounted policy is a link through ..data that
        # kubelet swaps on every update; its resolved target vanishes then.
        out["policy"] = os.path.abspath(args.policy)
    if getattr(args, "log", None) == "journal":
        from tiergate.telemetry import record
        from tiergate.core.errors import TiergateError

        sock = os.environ.get("TIERGATE_JOURNAL_SOCKET", record.JOURNAL_SOCKET)
        if not os.path.exists(sock):
            raise TiergateError(f"--log journal: systemd-journald is not running here (no {sock}); "
                                "give a log file instead")
    for flag in ("log", "cache_dir"):
        value = getattr(args, flag, None)
        if value:  # "journal" is a log target, not a path
            out[flag] = value if (flag, value) == ("log", "journal") else str(Path(value).resolve())
        elif home:
            out[flag] = user_paths(home)[flag]
    return out


def user_paths(home: str) -> dict:
    """A non-root user's defaults: nothing outside their home, nothing in a shared temp dir."""
    return {"bin_dir": Path(home, ".local/libexec/tiergate"),
            "conf_dir": Path(home, ".config/containers/containers.conf.d"),
            "log": str(Path(home, ".local/state/tiergate/decisions.jsonl")),
            "cache_dir": str(Path(home, ".cache/tiergate"))}


def _home() -> str | None:
    """The installing user's home (None for root: system paths)."""
    import os
    import pwd

    return None if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_dir


def cmd_install(args, remove: bool = False) -> int:
    from tiergate.engines import podman

    home = _home()
    bin_dir = args.bin_dir or (user_paths(home)["bin_dir"] if home else podman.DEFAULT_BIN_DIR)
    if args.engine == "podman":
        return _podman(args, bin_dir, home, remove)
    return _runtime_engine(args, bin_dir, home, remove)


def _podman(args, bin_dir: Path, home: str | None, remove: bool) -> int:
    """The hook where podman reads hooks, plus (unless only --hooks-dir was named) the shim as its runtime."""
    from tiergate.engines import files, podman, podman_runtime

    conf_dir = args.config or (None if args.hooks_dir else
                               user_paths(home)["conf_dir"] if home else podman_runtime.DEFAULT_DROP_IN_DIR)
    read, _ = podman.hooks_dirs_read(podman.containers_confs(home), skip=podman_runtime.DROP_IN)
    if args.hooks_dir:
        hooks_dir, listed = args.hooks_dir, None
    elif home:  # the user can write no dir podman reads: list theirs after podman's own
        hooks_dir = Path(podman.user_hooks_dir(home))
        listed = list(dict.fromkeys([*read, str(hooks_dir)]))
    else:  # the last dir podman reads: a same-named file in a later dir would override ours
        hooks_dir, listed = Path(read[-1]), None
    if remove:
        dirs = [args.hooks_dir] if args.hooks_dir else [*read, *podman.PODMAN_BUILTIN_HOOKS_DIRS,
                                                       *podman.OTHER_HOOKS_DIRS, hooks_dir]
        podman.uninstall(dirs, bin_dir)
        if conf_dir:
            podman_runtime.uninstall(conf_dir, bin_dir)
        return 0
    _check_runnable(hooks_dir, bin_dir)
    settings = _settings(args, home)
    if conf_dir:  # no runc (or a loop) must fail before anything is written
        from tiergate.engines import shim

        shim.real_runtime(args.runtime, bin_dir / shim.SHIM)
    extra = []
    for key, value in settings.items():
        extra += ["--" + key.replace("_", "-"), value]
    warm = not args.no_warm and not home  # a rootless hook cannot reach /run/tiergate/warm
    podman.install(hooks_dir, bin_dir, extra, args.prestart, warm=warm)
    if not args.hooks_dir:  # ours left where an older install wrote (podman 4 does not read /etc/...)
        stale = [d for d in (*podman.PODMAN_BUILTIN_HOOKS_DIRS, *podman.OTHER_HOOKS_DIRS) if Path(d) != hooks_dir]
        for path in podman.hooks_using(bin_dir / "tiergate-hook", dirs=stale):
            files.remove(path, str(bin_dir / "tiergate-hook"))
    if conf_dir:
        podman_runtime.install(conf_dir, bin_dir, default=True, runtime=args.runtime, hooks_dirs=listed, warm=warm,
                               **settings)
    _precompile(bin_dir, settings)
    if not conf_dir:
        import sys

        print("tiergate: note: hooks.d only: `podman exec` is not hardened and a missing hook program is skipped; "
              "add --config DIR to install the runtime too", file=sys.stderr)
    return 0


def _check_runnable(hooks_dir: Path, bin_dir: Path) -> None:
    """Refuse to register a hook that the users who run it cannot execute (rootless podman runs hooks as
    the user, from the system hooks dirs too): the interpreter and every directory it imports from."""
    from tiergate.host import access
    from tiergate.engines import launcher
    from tiergate.core.errors import TiergateError

    existing = Path(os.path.abspath(bin_dir))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    for uid, who in access.hook_users(hooks_dir).items():
        for path, want in [(str(existing), os.X_OK), *launcher.needs()]:
            found = access.problem(path, uid, want)
            if found:
                raise TiergateError(f"{who} could not run the hook: {found} (install tiergate with /usr/bin/python3 "
                                    "where every user can read it: the Debian package, or a venv outside /root)")


def _runtime_engine(args, bin_dir: Path, home: str | None, remove: bool) -> int:
    from tiergate.engines import containerd, docker, podman_runtime

    module, target = {
        "docker": (docker, args.daemon_json or docker.DEFAULT_DAEMON_JSON),
        "containerd": (containerd, args.config or containerd.DEFAULT_CONFIG),
        "podman-runtime": (podman_runtime, args.config or (user_paths(home)["conf_dir"] if home
                                                           else podman_runtime.DEFAULT_DROP_IN_DIR)),
    }[args.engine]
    if remove:
        module.uninstall(target, bin_dir)
    else:
        default = not args.no_default if args.engine == "docker" else args.default  # secure by default
        settings = _settings(args, home if args.engine == "podman-runtime" else None)
        module.install(target, bin_dir, default=default, runtime=args.runtime,
                       warm=not args.no_warm and not (home and args.engine == "podman-runtime"), **settings)
        _precompile(bin_dir, settings)
    return 0


def _precompile(bin_dir: Path, settings: dict) -> None:
    """The policy compiled into the hook's cache now, by the hook's own release: no start compiles."""
    from tiergate.engines import files, launcher

    if files._dry is not None:
        print(f"would compile the policy for {bin_dir}/tiergate-hook")
    else:
        launcher.precompile(bin_dir, settings)
