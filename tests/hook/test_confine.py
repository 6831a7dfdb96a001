"""The hook's self-confinement, in a process of its own: what /proc/self/status says afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tiergate.host.confine import KEEP

CODE = ("from tiergate.host.confine import confine\nprint(confine())\n"
        "print(open('/proc/self/status').read())")


def _bits(names) -> int:
    import _prctl

    return sum(1 << getattr(_prctl, n) for n in names)


def test_confine_keeps_only_what_the_hook_needs() -> None:
    pytest.importorskip("_prctl")
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=30, check=True)
    problem, _, status = proc.stdout.partition("\n")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    if os.geteuid() != 0:
        assert "not running as root" in problem
        return
    assert problem == "None"
    keep = _bits(KEEP)
    assert int(fields["CapBnd"], 16) == keep
    assert int(fields["CapPrm"], 16) & ~keep == 0 and int(fields["CapEff"], 16) & ~keep == 0
    assert int(fields["CapEff"], 16) == keep  # root keeps what it needs, effective
