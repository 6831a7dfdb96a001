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
    for pid, cg in ((10, f"12:pids:/tg/libpod-{A}\n0::/tg/libpod-{A}\n"), (11, f"0::/docker/{B}\n"), (12, "0::/user.slice\n")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cg)
    pids = S.PidMap(str(proc))
    pids.refresh()
    assert pids.container(10) == (A, "cgroup") and pids.container(11) == (B, "cgroup")
    assert pids.container(12) == ("", "unattributed")
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
                              "capabilities": ["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"]}
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
    assert S.delta(tier, {"unshare": {}, "chroot": {}}) == {"seccomp_allow": [], "capabilities": []}


def test_cli(tmp_path: Path, capsys):
    log = tmp_path / "d.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    Path(S.evidence_path(str(log))).write_text("".join(json.dumps(k) + "\n" for k in _kernel(A, "mount")))
    assert cli.main(["suggest", "--file", str(log), "wa"]) == 0
    out = capsys.readouterr().out
    assert 'seccomp_allow = ["mount"]' in out and "extends = \"restricted\"" in out and "# limits:" in out
    assert cli.main(["suggest", "--file", str(log), "nothing-here"]) == 2
    assert "no started container" in capsys.readouterr().err
