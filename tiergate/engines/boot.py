"""The launcher's second half (engines.launcher.script): the module finder, main, the exit.

It runs from the release's code file, already compiled: an installed launcher is a script,
which the interpreter compiles on every start (~30 lines of it cost a hook ~1 M
instructions, issue 20), so the script itself only pins the release and runs this.
"""

import gc
import marshal
import os
import sys


class Release:
    """tiergate's modules from the release's code file (one read; each module unmarshalled when
    first imported): no importlib path search or .pyc checks, ~0.1 M instructions per module.
    Anything not in it (the dependencies) is found on sys.path as usual."""

    code: dict = {}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        entry = cls.code.get(name)
        if entry is None:
            return None
        spec = sys.modules["_frozen_importlib"].ModuleSpec(name, cls, origin=entry[1], is_package=entry[0])
        spec.has_location = True  # __file__: modules find their data files beside them
        spec.cached = entry[3] if len(entry) > 3 else None  # computed at install: ~12 K instructions a module
        if entry[0]:
            spec.submodule_search_locations = [os.path.dirname(entry[1])]
        return spec

    @staticmethod
    def create_module(spec):
        return None

    @classmethod
    def exec_module(cls, module):
        exec(marshal.loads(cls.code[module.__spec__.name][2]), module.__dict__)


def run(code: dict, entry: str, kwargs: dict) -> None:
    """`entry.main(**kwargs)`, its modules from `code` (launcher.write_code); then, with stdout
    and stderr flushed (the decision log is written with os.write), os._exit: the interpreter's
    teardown would cost a start ~8 M instructions (issue 20). No cyclic garbage collection: one
    short run frees what it drops by reference counting, and a collection costs ~0.7 M."""
    gc.disable()
    Release.code = code
    sys.meta_path.insert(0, Release)
    status = status_of(__import__(entry, fromlist=["main"]).main(**kwargs))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def status_of(value) -> int:
    """main's return value as an exit status (engines/warm.py's children exit the same way)."""
    return value if isinstance(value, int) else 0 if value is None else 1


def spawn() -> bool:
    """Start a warm helper (engines/warm.py) for the next starts, when the front found none:
    double fork, its own session, every fd of the launcher's closed first (the engine reads the
    start's stdout until EOF), before the start confines itself (the helper keeps its privileges).
    True in the helper's process, False in the launcher's (which then runs the start)."""
    try:
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            return False
    except OSError:
        return False
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 1 << 16)
        os.setsid()
        if os.fork():
            os._exit(0)
    except OSError:
        os._exit(0)
    return True
