"""`tiergate collect` / `suggest`: kernel records attributed by cgroup, a tier and a delta (no root)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import shipped_policy
from tiergate.cli import main as cli
from tiergate.cli import suggest as S
from tiergate.policy.compile import compile_policy
from tiergate.policy.load import parse

A, B = "a" * 64, "b" * 64
LINE = ('5,1234,99999,-;audit: type=1326 audit(1795942436.183:77): auid=4294967295 uid=0 gid=0 ses=4294967295 '
        'subj=unconfined pid={pid} comm="unshare" exe="/bin/busybox" sig=0 arch=c000003e syscall={nr} compat=0 '
        'ip=0x4a5b6c code=0x7ffc0000')


def test_parse_kmsg():
    assert S.parse_kmsg(LINE.format(pid=42, nr=272)) == {"pid": 42, "comm": "unshare", "arch": "X86_64", "nr": 272}
    assert S.parse_kmsg("6,1,2,-;eth0: link up") is None
    assert S.syscall_name("X86_64", 272) == "unshare" and S.syscall_name("X86_64", 161) == "chroot"


def test_pids_are_attributed_by_cgroup_then_by_the_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    proc = tmp_path / "proc"
    for pid, cg in ((10, f"12:pids:/tg/libpod-{A}\n0::/tg/libpod-{A}\n"), (11, f"0::/docker/{B}\n"), (12, "0::/user.slice\n"),
                    (15, f"0::/machine.slice/libpod-conmon-{A}.scope\n")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cg)
    pids = S.PidMap(str(proc))
    pids.refresh()
    assert pids.container(10) == (A, "cgroup") and pids.container(11) == (B, "cgroup")
    assert pids.container(12) == ("", "unattributed") and pids.container(15) == ("", "unattributed")  # conmon
    (proc / "10" / "cgroup").unlink()  # exited before its record was read: the map still knows it
    assert pids.container(10) == (A, "pid map")
    pids.forked(11, 13)  # a child of a docker container's process, gone before anyone looked at it
    assert pids.container(13) == (B, "pid map")
    pids.forked(12, 14)  # a host process's child: nothing to remember
    assert pids.container(14) == ("", "unattributed")
    (proc / "10").rmdir()
    pids.refresh()
    assert pids.container(10) == (A, "pid map")  # dead pids are kept a while (their records may come late)
    monkeypatch.setattr(S.PidMap, "KEEP", -1.0)
    pids.refresh()
    assert pids.container(10) == ("", "unattributed") and pids.container(13) == ("", "unattributed")


def _kernel(cid, syscall, n=1):
    return [{"kind": "syscall", "container": cid, "syscall": syscall, "time": f"2026-11-29T09:00:0{i}.000Z"}
            for i in range(n)]


def _records():
    return [{"stage": "precreate", "container": A, "name": "wa", "image": "localhost/app-a:latest", "image_id": "1" * 12,
             "tier": "restricted", "mode": "audit", "outcome": "allowed"},
            {"stage": "precreate", "container": B, "name": "wb", "image": "localhost/app-b:latest", "image_id": "2" * 12,
             "tier": "restricted", "mode": "audit", "outcome": "allowed"}]


def test_suggest_gives_exactly_the_targets_syscalls_and_inferred_caps():
    policy = shipped_policy()
    kernel = _kernel(A, "unshare", 2) + _kernel(A, "chroot") + _kernel(A, "mount") + _kernel(B, "sethostname")
    for target in ("localhost/app-a", "localhost/app-a:latest", A[:12], "wa"):
        r = S.suggest(policy, _records(), kernel, target)
        assert r["containers"] == [A] and r["audited_as"] == "restricted"
        assert r["delta"] == {"seccomp_allow": ["chroot", "mount", "unshare"],
                              "capabilities": ["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"], "egress": []}
        assert r["evidence"]["unshare"]["count"] == 2 and "sethostname" not in r["evidence"]
        assert r["least_privileged_fitting_tier"] == "privileged"
    assert S.suggest(policy, _records(), kernel, "wb")["delta"]["seccomp_allow"] == ["sethostname"]


def test_the_snippet_compiles_and_lets_exactly_those_through():
    policy = shipped_policy()
    r = S.suggest(policy, _records(), _kernel(A, "unshare") + _kernel(A, "chroot"), "wa")
    text = Path(policy["file"]).read_text() + "\n" + S.snippet(r, policy)
    compiled = compile_policy(parse(text), text, policy["file"])
    (name,) = [n for n in compiled["tiers"] if n not in policy["tiers"]]
    tier = compiled["tiers"][name]
    assert S.allows(tier, "unshare") and S.allows(tier, "chroot") and not S.allows(tier, "mount")
    assert not S.allows(policy["tiers"]["restricted"], "unshare")
    assert {"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_NET_BIND_SERVICE"} <= set(tier["capabilities"])
    assert S.delta(tier, {"unshare": {}, "chroot": {}}) == {"seccomp_allow": [], "capabilities": [], "egress": []}


def test_cli(tmp_path: Path, capsys):
    log = tmp_path / "d.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    Path(S.evidence_path(str(log))).write_text("".join(json.dumps(k) + "\n" for k in _kernel(A, "mount")))
    assert cli.main(["suggest", "--file", str(log), "wa"]) == 0
    out = capsys.readouterr().out
    assert 'seccomp_allow = ["mount"]' in out and "extends = \"restricted\"" in out and "# limits:" in out
    assert cli.main(["suggest", "--file", str(log), "nothing-here"]) == 2
    assert "no started container" in capsys.readouterr().err


# -- observed capabilities, AF_PACKET, flows -------------------------------------------------------

TRACE = """\
           mkdir-13435   [000] ..... 12010.452414: cap_capable: cred 0000000016dd7419, target_ns 00000000dde9e5bc, capable_ns 00000000dde9e5bc, cap 1, ret 0
          podman-99   [001] ..... 12010.452420: cap_capable: cred 00000000aaaaaaaa, target_ns 00000000dde9e5bc, capable_ns 00000000dde9e5bc, cap 21, ret 0
           mkdir-13435   [000] ..... 12010.452443: <stack trace>
 => trace_event_raw_event_cap_capable
 => cap_capable
 => security_capable
 => capable_wrt_inode_uidgid
 => generic_permission
 => ovl_permission
 => inode_permission
 => vfs_mkdir
           mkdir-13435   [000] .N... 12010.452443: cap_capable: cred 0000000020a0f87f, target_ns 00000000dde9e5bc, capable_ns 00000000dde9e5bc, cap 1, ret 0
           mkdir-13435   [000] .N... 12010.452445: <stack trace>
 => cap_capable
 => capable_wrt_inode_uidgid
 => generic_permission
 => inode_permission
 => ovl_permission
 => inode_permission
          podman-99   [001] ..... 12010.452450: <stack trace>
 => cap_capable
 => __vm_enough_memory
 => mmap_region
           mkdir-13435   [000] ..... 12010.452513: cap_capable: cred 000000009b9c41a8, target_ns 00000000dde9e5bc, capable_ns 00000000dde9e5bc, cap 1, ret 0
           mkdir-13435   [000] ..... 12010.452528: <stack trace>
 => cap_capable
 => generic_permission
 => inode_permission
 => vfs_mkdir
 => ovl_create_real
 => ovl_create_object
          tgprobe-7   [000] ..... 12010.6: cap_capable: cred 0000000016dd7419, target_ns 00000000dde9e5bc, capable_ns 00000000dde9e5bc, cap 13, ret 0
          tgprobe-7   [000] ..... 12010.6: <stack trace>
 => cap_capable
 => ns_capable
 => packet_create
"""


def test_captrace_keeps_checks_made_with_the_tasks_own_credentials(tmp_path: Path):
    from tiergate.telemetry import captrace

    t = captrace.CapTrace.__new__(captrace.CapTrace)  # the parser alone: no tracefs needed
    t.rest, t.pending, t.owner, t.frames, t.skipped = b"", {}, None, None, 0
    got = []
    for part in (TRACE[:700], TRACE[700:] + "\n"):  # read in two parts: a line split across reads
        (tmp_path / "pipe").write_text(part)
        with open(tmp_path / "pipe", "rb") as fh:
            t.fd = fh.fileno()
            got += t.read()
    # the task's own DAC check on the overlay inode, and the AF_PACKET socket's NET_RAW; not the checks
    # overlayfs made with its mounter's credentials, nor the overcommit probe
    assert got == [("mkdir", 13435, 1), ("tgprobe", 7, 13)] and t.skipped == 3


def _flow(cid, peer, port, n=1, t="2026-11-29T09:00:01.000Z"):
    return {"kind": "flow", "container": cid, "peer": peer, "proto": "tcp", "port": port, "count": n,
            "first": t, "last": t, "time": t}


def _cap(cid, cap, n=1):
    return {"kind": "capability", "container": cid, "capability": cap, "count": n, "first": "2026-11-29T09:00:01.000Z",
            "last": "2026-11-29T09:00:02.000Z", "time": "2026-11-29T09:00:02.000Z"}


def test_suggest_reports_flows_af_packet_and_observed_caps_and_the_snippet_lets_them_through():
    policy = shipped_policy()
    recs = [dict(r, tier="queue-worker") for r in _records()]
    kernel = (_kernel(A, "socket") + [_cap(A, "CAP_NET_RAW"), _cap(A, "CAP_SYS_PTRACE", 4), _cap(B, "CAP_SYS_TIME")]
              + [_flow(A, "10.213.0.1", 80, 2), _flow(A, "10.213.0.1", 80, 1, "2026-11-29T09:00:05.000Z"),
                 _flow(A, "203.0.113.10", 5672), _flow(B, "10.213.0.9", 443)])
    r = S.suggest(policy, recs, kernel, "wa")
    assert r["delta"] == {"seccomp_allow": [], "capabilities": ["CAP_NET_RAW", "CAP_SYS_PTRACE"],
                          "egress": [{"cidr": "10.213.0.1/32", "ports": [80], "proto": "tcp"}]}
    assert r["evidence"]["socket(AF_PACKET)"]["needs"] == "CAP_NET_RAW"
    (flow, _) = r["flows"]
    assert (flow["peer"], flow["count"], flow["first"], flow["last"]) == (
        "10.213.0.1", 3, "2026-11-29T09:00:01.000Z", "2026-11-29T09:00:05.000Z")
    text = Path(policy["file"]).read_text() + "\n" + S.snippet(r, policy)
    compiled = compile_policy(parse(text), text, policy["file"])
    (name,) = [n for n in compiled["tiers"] if n not in policy["tiers"]]
    tier = compiled["tiers"][name]
    assert not any(S.delta(tier, {"socket(AF_PACKET)": {}}, {"CAP_NET_RAW": {}, "CAP_SYS_PTRACE": {}},
                           {k: f for k, f in enumerate(r["flows"])}).values())
    assert not S.reaches(tier["network"], {"peer": "10.213.0.1", "proto": "tcp", "port": 81})
    assert not S.reaches(tier["network"], {"peer": "10.213.0.2", "proto": "tcp", "port": 80})
    assert S.reaches(tier["network"], {"peer": "203.0.113.10", "proto": "tcp", "port": 5672})  # the tier's own


def test_image_processor_socket_records_stay_a_seccomp_delta():
    """Where the tier denies AF_PACKET (and every family but AF_UNIX), a logged socket() is a filter change."""
    recs = [dict(r, tier="image-processor") for r in _records()]
    r = S.suggest(shipped_policy(), recs, _kernel(A, "socket"), "wa")
    assert r["delta"]["seccomp_allow"] == ["socket"] and "socket(AF_PACKET)" not in r["evidence"]


def test_evidence_lines_that_do_not_parse_are_skipped(tmp_path: Path):
    f = tmp_path / "k.jsonl"
    good = _flow(A, "10.0.0.1", 80)
    f.write_text("\n".join(json.dumps(x) for x in (good, {**good, "peer": "; rm -rf"}, {**good, "count": "x"},
                                                   _cap(A, "CAP_KILL"), {"kind": "capability", "time": "t"})) + "\nnope\n")
    assert [k["kind"] for k in S.read_evidence(str(f))] == ["flow", "capability"]
