"""Unit tests of apply.py / shaping.py that need no root: target resolution, host refusal, errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tiergate.network import apply as A
from tiergate.network.shaping import rate_bits


def test_netns_path_forms():
    assert A.netns_path("/run/netns/x") == "/run/netns/x"
    assert A.netns_path(1234) == "/proc/1234/ns/net"
    assert A.netns_path("1234") == "/proc/1234/ns/net"
    for bad in ("relative/path", "", True, None, "/x\0y"):
        with pytest.raises(A.NetworkApplyError):
            A.netns_path(bad)
    with pytest.raises(A.NetworkApplyError, match="host"):
        A.netns_path(1)


def test_refuses_own_namespace():
    # the test runs in the host's (or at least its own) namespace: never a target
    with pytest.raises(A.NetworkApplyError, match="host's network namespace"):
        A.apply({"nftables": []}, "/proc/self/ns/net")
    with pytest.raises(A.NetworkApplyError, match="host's network namespace"):
        A.apply({"nftables": []}, os.getpid())
    with pytest.raises(A.NetworkApplyError, match="host's network namespace"):
        A.read_counters(os.getpid())


def test_missing_namespace():
    with pytest.raises(A.NetworkApplyError, match="No such file"):
        A.apply({"nftables": []}, "/run/netns/tiergate-does-not-exist")


def test_error_is_one_line_with_first_nft_error(tmp_path, monkeypatch):
    fake = tmp_path / "nsenter"
    fake.write_text("#!/bin/sh\ncat >/dev/null\necho '' >&2\necho 'Error: Could not process rule: No such file' >&2\n"
                    "echo 'second line' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(A, "NSENTER", str(fake))
    monkeypatch.setattr(A, "check_not_host", lambda path: None)
    with pytest.raises(A.NetworkApplyError) as ei:
        A.read_counters("/run/netns/whatever")
    msg = str(ei.value)
    assert "\n" not in msg and "Could not process rule" in msg and "rc 1" in msg


def test_timeout(tmp_path, monkeypatch):
    fake = tmp_path / "nsenter"
    fake.write_text("#!/bin/sh\nexec /bin/sleep 5\n")
    fake.chmod(0o755)
    monkeypatch.setattr(A, "NSENTER", str(fake))
    monkeypatch.setattr(A, "check_not_host", lambda path: None)
    with pytest.raises(A.NetworkApplyError, match="timed out"):
        A.read_counters("/run/netns/whatever", timeout=0.3)


def test_nft_process_runs_with_empty_env_and_absolute_paths(tmp_path, monkeypatch):
    out = tmp_path / "argv"
    fake = tmp_path / "nsenter"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {out}\nenv | /usr/bin/sort >> {out}\necho '{{\"nftables\": []}}'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(A, "NSENTER", str(fake))
    monkeypatch.setattr(A, "check_not_host", lambda path: None)
    assert A.read_counters("/run/netns/c1") == []
    lines = out.read_text().splitlines()
    assert lines[0] == "--net=/run/netns/c1 /usr/sbin/nft -j list table inet tiergate"
    assert not any(l.startswith("PATH=") and "/usr" in l for l in lines[1:])


def test_rate_bits():
    assert rate_bits("10mbit") == 10_000_000
    assert rate_bits("500kbit") == 500_000
    assert rate_bits("1kbps") == 8000
    for bad in ("10", "mbit", "0mbit", "10 mbit", None):
        with pytest.raises(ValueError):
            rate_bits(bad)


def test_apply_module_imports_only_stdlib():
    code = ("import sys; import tiergate.network.apply; "
            "bad = [m for m in ('attrs', 'cattrs', 'pyroute2', 'nftables', 'ctypes') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
