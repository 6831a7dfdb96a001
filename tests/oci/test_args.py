"""runc argv parsing: the subcommand, global flags and options, read as runc reads them."""

from __future__ import annotations

import pytest

from tiergate.oci import args

SUBCOMMANDS = [
    ("docker create", ["--root", "/r", "--log", "/b/log.json", "--log-format", "json", "create", "--bundle", "/b",
                       "--pid-file", "/b/init.pid", "abc"], "create"),
    ("equals form", ["--root=/r", "--log-format=json", "run", "x"], "run"),
    ("single dash", ["-root", "/r", "exec", "x", "sh"], "exec"),
    ("bool globals", ["--debug", "--systemd-cgroup", "state", "x"], "state"),
    ("rootless takes a value", ["--rootless", "true", "create", "x"], "create"),
    ("value that looks like a command", ["--root", "create", "state", "x"], "state"),
    ("double dash ends flags", ["--", "create", "x"], "create"),
    ("version", ["--version"], None),
    ("nothing", [], None),
    ("dash alone", ["-", "create"], "-"),
]


@pytest.mark.parametrize("argv, want", [(a, w) for _, a, w in SUBCOMMANDS], ids=[d for d, _, _ in SUBCOMMANDS])
def test_subcommand(argv, want):
    assert args.subcommand(argv) == want
    assert args.parse(argv).command == want


def test_docker_create():
    p = args.parse(["--root", "/r", "--log", "/b/log.json", "--log-format", "json", "create", "--bundle", "/b",
                    "--pid-file", "/b/init.pid", "abc"])
    assert (p.root, p.log, p.log_format, p.bundle, p.container_id) == ("/r", "/b/log.json", "json", "/b", "abc")


def test_create_options_after_id_are_read():
    """urfave/cli reorders create's flags: `create ID --bundle B` has a bundle."""
    p = args.parse(["create", "abc", "-b", "/b"])
    assert p.bundle == "/b" and p.container_id == "abc"


def test_exec_options_stop_at_the_id():
    p = args.parse(["exec", "--cap", "CAP_KILL", "-c", "CAP_SYS_ADMIN", "--tty", "--no-new-privs", "id", "sh", "-c", "x"])
    assert p.values("cap", "c") == ["CAP_KILL", "CAP_SYS_ADMIN"]
    assert p.flag("tty") and p.flag("no-new-privs") and not p.flag("detach")
    assert p.positionals == ["id", "sh", "-c", "x"] and p.container_id == "id"


def test_exec_process_and_bool_false():
    p = args.parse(["exec", "--process=/tmp/p", "--detach=false", "id"])
    assert p.value("process", "p") == "/tmp/p" and not p.flag("detach")


def test_without_keeps_the_rest_verbatim():
    argv = ["--root", "/r", "exec", "--cap", "CAP_SYS_ADMIN", "-c=CAP_KILL", "--tty", "id", "sh", "--cap", "x"]
    p = args.parse(argv)
    out = p.without(lambda o: o.name in ("cap", "c"))
    assert out == ["--root", "/r", "exec", "--tty", "id", "sh", "--cap", "x"]
    assert p.argv == argv
    assert p.with_options(["--no-new-privs"], out)[:4] == ["--root", "/r", "exec", "--no-new-privs"]


def test_default_log_format_is_text():
    assert args.parse(["create", "x"]).log_format == "text"


@pytest.mark.parametrize("argv", [["--root"], ["exec", "--process"]])
def test_dangling_value(argv):
    with pytest.raises(args.ArgsError, match="needs an argument"):
        args.parse(argv)
