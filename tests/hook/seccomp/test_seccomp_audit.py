"""Audit mode's filter (seccomp/audit.py), loaded with libseccomp in a forked child.

SCMP_ACT_LOG is swapped for ERRNO(77) here so that "would be logged" is visible
to the probe without writing kernel log records.
"""

from __future__ import annotations

import json

import pytest

from seccomp_testlib import errno_of, in_child
from tiergate.seccomp.audit import AF_PACKET, admits, log_mode
from tiergate.seccomp.profiles import compile_profile, list_profiles

LOGGED = 77
AF_UNIX, AF_INET, AF_VSOCK, SOCK_DGRAM, SOCK_RAW = 1, 2, 40, 2, 3


def visible(profile: dict) -> dict:
    out = json.loads(json.dumps(profile).replace('"SCMP_ACT_LOG"', f'"SCMP_ACT_ERRNO", "errnoRet": {LOGGED}'))
    if out.pop("errnoRet", None):  # the default action's
        out["defaultErrnoRet"] = LOGGED
    return out


def sockets() -> dict:
    return {fam: errno_of("socket", fam, SOCK_RAW if fam == AF_PACKET else SOCK_DGRAM, 0)
            for fam in (AF_UNIX, AF_INET, AF_PACKET, AF_VSOCK)}


@pytest.mark.parametrize("name", list_profiles())
def test_af_packet_is_logged_where_the_tier_allows_it_and_nothing_else_changes(name):
    profile = compile_profile(name)
    audit = in_child(sockets, visible(log_mode(profile)))
    assert audit[AF_PACKET] == LOGGED
    for fam in (AF_UNIX, AF_INET, AF_VSOCK):
        assert (audit[fam] == LOGGED) == (not admits(profile, "socket", fam)), (fam, audit)


def test_control_an_allow_on_arg0_beats_a_log_on_the_same_syscall():
    """Why the rules are rewritten: adding `socket(AF_PACKET) -> LOG` to restricted changes nothing."""
    profile = visible(log_mode(compile_profile("restricted")))
    naive = compile_profile("restricted")
    naive["syscalls"].append({"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": LOGGED,
                              "args": [{"index": 0, "value": AF_PACKET, "op": "SCMP_CMP_EQ"}]})
    assert in_child(sockets, naive)[AF_PACKET] != LOGGED
    assert in_child(sockets, profile)[AF_PACKET] == LOGGED


def test_default_allow_filters_get_an_explicit_rule():
    out = log_mode({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]})
    got = in_child(sockets, visible(out))
    assert got[AF_PACKET] == LOGGED and got[AF_UNIX] == got[AF_INET] == 0 and got[AF_VSOCK] != LOGGED
