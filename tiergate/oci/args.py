"""runc's command line, read the way runc (urfave/cli over Go's flag package) reads it.

The shim needs three things from an engine's argv: the subcommand (pass
through at once unless tiergate enforces it: core.names.SHIM_ENFORCED), the global flags (--root,
--log, --log-format) and the subcommand's options (--bundle, --process,
--cap ...). The original argv is kept untouched: the real runtime is exec'd
with it (or with a copy minus the options tiergate strips).

Go's flag syntax: `-name` and `--name` are the same flag; a value follows as
the next argument or after `=`; a boolean flag takes a value only after `=`.
Global flags end at the first non-flag argument (the subcommand). create and
run move flags that follow positionals to the front (urfave/cli's argument
reordering), so their options are read everywhere before `--`; exec sets
SkipArgReorder: its options end at the container id, the rest is the command.
Standard library only; this module is on the pass-through path.
"""

from __future__ import annotations

# Global flags that take a value (runc 1.1; crun's --cgroup-manager too). Every
# other global flag is boolean (--debug, --systemd-cgroup, --help, --version).
GLOBAL_VALUE_FLAGS = frozenset({"root", "log", "log-format", "criu", "rootless", "cgroup-manager"})

# Options that take a value, per subcommand (runc 1.1.5 `runc CMD --help`).
_CREATE_VALUES = frozenset({"bundle", "b", "console-socket", "pid-file", "preserve-fds"})
COMMAND_VALUE_FLAGS: dict[str, frozenset[str]] = {
    "create": _CREATE_VALUES,
    "run": _CREATE_VALUES,
    "exec": frozenset({"console-socket", "cwd", "env", "e", "user", "u", "additional-gids", "g",
                       "process", "p", "pid-file", "process-label", "l", "apparmor", "a", "cap", "c",
                       "preserve-fds", "cgroup"}),
    "restore": frozenset({"bundle", "b", "console-socket", "pid-file", "image-path", "work-path",
                          "manage-cgroups-mode", "empty-ns", "lsm-profile", "lsm-mount-context"}),
    "checkpoint": frozenset({"image-path", "work-path", "parent-path", "page-server",
                             "manage-cgroups-mode", "empty-ns", "status-fd"}),
    "ps": frozenset({"format", "f"}),
    "list": frozenset({"format", "f"}),
    "events": frozenset({"interval"}),
    "kill": frozenset(),
    "delete": frozenset(),
    "update": frozenset({"resources", "r", "blkio-weight", "cpu-period", "cpu-quota", "cpu-share",
                         "cpu-rt-period", "cpu-rt-runtime", "cpuset-cpus", "cpuset-mems", "kernel-memory",
                         "kernel-memory-tcp", "memory", "cpu-idle", "memory-reservation", "memory-swap",
                         "pids-limit", "l3-cache-schema", "mem-bw-schema"}),
}
# Subcommands whose options stop at the first positional (urfave/cli SkipArgReorder).
NO_REORDER = frozenset({"exec"})


class ArgsError(ValueError):
    """The command line cannot be read (a flag lacks its value)."""


def _split(arg: str) -> tuple[str, str | None] | None:
    """('name', value-or-None) for a flag argument, None for a positional (or `-`, `--`)."""
    if len(arg) < 2 or arg[0] != "-" or arg == "--":
        return None
    name = arg[2:] if arg.startswith("--") else arg[1:]
    if not name or name.startswith("-"):
        return None
    key, eq, value = name.partition("=")
    return key, (value if eq else None)


class Option:
    """One parsed option: its name, value (None for a boolean) and argv slice [start, end)."""

    __slots__ = ("name", "value", "start", "end")

    def __init__(self, name: str, value: str | None, start: int, end: int) -> None:
        self.name, self.value, self.start, self.end = name, value, start, end

    def __repr__(self) -> str:
        return f"Option({self.name!r}, {self.value!r}, {self.start}, {self.end})"


class RuncArgs:
    """A runtime command line (without the program name), parsed; `argv` is the original."""

    __slots__ = ("argv", "globals", "command", "command_index", "options", "positionals", "rest_index")

    def __init__(self, argv: list[str]) -> None:
        self.argv = list(argv)
        self.globals: dict[str, str | None] = {}
        self.command: str | None = None
        self.command_index = -1
        self.options: list[Option] = []
        self.positionals: list[str] = []
        self.rest_index = len(self.argv)  # exec: where the process's own argv starts

    # -- reading ---------------------------------------------------------------
    def value(self, *names: str) -> str | None:
        """The last value given for any of `names` (runc keeps the last)."""
        found = None
        for opt in self.options:
            if opt.name in names:
                found = opt.value
        return found

    def values(self, *names: str) -> list[str]:
        return [opt.value for opt in self.options if opt.name in names and opt.value is not None]

    def flag(self, *names: str) -> bool:
        """A boolean option: present and not `=false`."""
        on = False
        for opt in self.options:
            if opt.name in names:
                on = (opt.value or "true").lower() not in ("false", "0", "f")
        return on

    @property
    def container_id(self) -> str | None:
        return self.positionals[0] if self.positionals else None

    @property
    def bundle(self) -> str | None:
        return self.value("bundle", "b")

    @property
    def log(self) -> str | None:
        return self.globals.get("log")

    @property
    def log_format(self) -> str:
        return self.globals.get("log-format") or "text"

    @property
    def root(self) -> str | None:
        return self.globals.get("root")

    # -- rewriting -------------------------------------------------------------
    def without(self, drop) -> list[str]:
        """A copy of argv without the options for which drop(option) is true."""
        gone: set[int] = set()
        for opt in self.options:
            if drop(opt):
                gone.update(range(opt.start, opt.end))
        return [a for i, a in enumerate(self.argv) if i not in gone]

    def with_options(self, extra: list[str], argv: list[str] | None = None) -> list[str]:
        """argv (default: the original) with `extra` inserted right after the subcommand."""
        argv = list(self.argv if argv is None else argv)
        at = self.command_index + 1
        return argv[:at] + list(extra) + argv[at:]


def subcommand(argv: list[str]) -> str | None:
    """Only the subcommand (cheap: the pass-through test); None for `--version`, `--help`, no args."""
    skip = end = False
    for arg in argv:
        if end:
            return arg
        if skip:
            skip = False
            continue
        if arg == "--":  # ends the global flags: what follows is the subcommand, dash or not
            end = True
            continue
        flag = None if end else _split(arg)
        if flag is None:
            return arg
        if flag[1] is None and flag[0] in GLOBAL_VALUE_FLAGS:
            skip = True
    return None


def parse(argv: list[str]) -> RuncArgs:
    """Parse global flags, the subcommand and its options. Raises ArgsError for a dangling value flag."""
    out = RuncArgs(argv)
    i, n = 0, len(argv)
    while i < n:
        if argv[i] == "--":
            i += 1
            break
        flag = _split(argv[i])
        if flag is None:
            break
        name, value = flag
        if value is None and name in GLOBAL_VALUE_FLAGS:
            if i + 1 >= n:
                raise ArgsError(f"flag needs an argument: -{name}")
            value = argv[i + 1]
            i += 1
        out.globals[name] = value
        i += 1
    if i >= n:
        return out
    out.command, out.command_index = argv[i], i
    values = COMMAND_VALUE_FLAGS.get(out.command, frozenset())
    reorder = out.command not in NO_REORDER
    i += 1
    while i < n:
        arg = argv[i]
        if arg == "--":
            out.positionals.extend(argv[i + 1:])
            out.rest_index = i + 1
            break
        flag = _split(arg)
        if flag is None:
            out.positionals.append(arg)
            if not reorder:
                out.positionals.extend(argv[i + 1:])
                out.rest_index = i + 1
                break
            i += 1
            continue
        name, value = flag
        start = i
        if value is None and name in values:
            if i + 1 >= n:
                raise ArgsError(f"flag needs an argument: -{name}")
            value = argv[i + 1]
            i += 1
        out.options.append(Option(name, value, start, i + 1))
        i += 1
    return out
