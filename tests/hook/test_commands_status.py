"""`tiergate status`: container discovery and kernel facts from a fake /proc tree (no root)."""

from __future__ import annotations

import json
import os

import pytest

from tiergate.cli import main as cli
from tiergate.cli import status as S

CID = "13dc0b9ac8f1628054a03c964e446f91b0b11c72845356716c69b7cd4de14221"
DOCKER_ID = "f" * 64
STATUS = ("Name:\tsleep\nPid:\t{pid}\nCapInh:\t0000000000000000\nCapEff:\t{cap}\nNoNewPrivs:\t{nnp}\n"
          "Seccomp:\t{sc}\nSeccomp_filters:\t{nf}\n")


def _proc(root, pid, *, ppid, pidns, cmdline=(), cap="0000000000000400", nnp=1, sc=2, nf=1, cgroup="",
          environ="", cwd=None, apparmor=None):
    d = root / str(pid)
    (d / "ns").mkdir(parents=True)
    (d / "ns" / "pid").symlink_to(f"pid:[{pidns}]")
    (d / "stat").write_text(f"{pid} (some (odd) name) S {ppid} 1 1 0 -1\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    (d / "status").write_text(STATUS.format(pid=pid, cap=cap, nnp=nnp, sc=sc, nf=nf))
    (d / "cgroup").write_text(cgroup)
    (d / "environ").write_text(environ)
    if cwd:
        (d / "cwd").symlink_to(cwd)
    if apparmor is not None:
        (d / "attr").mkdir()
        (d / "attr" / "current").write_text(apparmor)
    return d


@pytest.fixture
def fake(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").symlink_to("100")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"annotations": {
        "io.tiergate.tier": "isolated", "io.tiergate.why": "label asks", "io.tiergate.network": "none"}}))
    moby = tmp_path / "state" / "moby" / DOCKER_ID
    moby.mkdir(parents=True)
    (moby / "config.json").write_text(json.dumps({"annotations": {}}))
    _proc(proc, 1, ppid=0, pidns=1, cmdline=["/sbin/init"])
    _proc(proc, 100, ppid=1, pidns=1, cmdline=["tiergate"])
    _proc(proc, 200, ppid=1, pidns=1, cmdline=["/usr/bin/conmon", "--api-version", "1", "-c", CID, "-n", "web",
                                                "-b", str(bundle), "-r", "/usr/bin/runc"])
    _proc(proc, 201, ppid=200, pidns=7, cap="0000000000000000", apparmor="unconfined\n")
    _proc(proc, 202, ppid=201, pidns=7)  # a process inside the container: not its init
    _proc(proc, 300, ppid=1, pidns=1, cmdline=["/usr/bin/containerd-shim-runc-v2", "-id", DOCKER_ID], cwd=str(moby))
    _proc(proc, 301, ppid=300, pidns=8, cap="00000000a80425fb", nnp=0)
    _proc(proc, 400, ppid=1, pidns=1, cmdline=["unshare", "--pid", "--fork", "sh"])
    _proc(proc, 401, ppid=400, pidns=9)  # unshare child: no id, no bundle -> not a container
    _proc(proc, 500, ppid=1, pidns=1, cmdline=["/usr/bin/other-shim"])
    _proc(proc, 501, ppid=500, pidns=10, cgroup=f"0::/system.slice/x-{'a' * 64}.scope\n")
    _proc(proc, 600, ppid=1, pidns=1, cmdline=["ctr-ish"])
    _proc(proc, 601, ppid=600, pidns=11, environ="PATH=/bin\0HOSTNAME=abc123def456\0")
    return proc, bundle


def test_find_containers(fake):
    proc, bundle = fake
    found = {i["pid"]: i for i in S.find_containers(str(proc))}
    assert sorted(found) == [201, 301, 501, 601]
    assert found[201] == {"pid": 201, "id": CID, "name": "web", "bundle": str(bundle), "engine": "podman"}
    assert found[301]["engine"] == "docker" and found[301]["id"] == DOCKER_ID
    assert found[501]["id"] == "a" * 64 and found[501]["engine"] == ""
    assert found[601]["id"] == "abc123def456"


def test_kernel_facts(fake):
    proc, _ = fake
    f = S.kernel_facts(201, str(proc))
    assert f == {"cap_eff": "0000000000000000", "capabilities": [], "no_new_privs": "1", "seccomp": "filter",
                 "seccomp_filters": "1", "apparmor": "unconfined"}
    f = S.kernel_facts(301, str(proc))
    assert "CAP_NET_RAW" in f["capabilities"] and len(f["capabilities"]) == 14 and f["apparmor"] is None
    with pytest.raises(FileNotFoundError):
        S.kernel_facts(999, str(proc))


def test_report_prefers_annotations_and_reads_counters(fake):
    proc, _ = fake
    info = S.describe(201, str(proc))
    seen = []

    def counters(path):
        seen.append(path)
        return [{"chain": "output", "name": "egress-default", "packets": 3, "bytes": 180}]

    records = [{"stage": "precreate", "container": CID[:12], "tier": "baseline", "image": "localhost/x:1"},
               {"stage": "createRuntime", "container": CID, "tier": "isolated"}]
    r = S.report(info, records, str(proc), counters=counters)
    assert r["tier"] == "isolated" and r["tier_source"] == "bundle annotations"
    assert r["image"] == "localhost/x:1" and seen == [f"{proc}/201/ns/net"]
    text = S.render([r])
    assert "container 13dc0b9ac8f1 (web)  pid 201  engine podman" in text
    assert "CapEff:        0000000000000000 (none)" in text
    assert "output            3 pkts        180 bytes  egress-default" in text

    def broken(path):
        raise RuntimeError("nsenter failed")

    assert S.report(info, [], str(proc), counters=broken)["network_counters"] == "cannot read: nsenter failed"


def test_report_falls_back_to_the_log(fake):
    proc, _ = fake
    info = S.describe(301, str(proc))
    r = S.report(info, [{"stage": "create", "container": DOCKER_ID[:12], "tier": "baseline", "why": "default"}],
                 str(proc), counters=lambda p: pytest.fail("no network policy"))
    assert r["tier"] == "baseline" and r["tier_source"] == "decision log" and r["network_policy"] is None
    assert "CapEff:        00000000a80425fb (CHOWN, " in S.render([r])
    r = S.report(info, [], str(proc))
    assert r["tier"] is None and "unknown" in S.render([r])


def test_report_marks_audit_mode(fake):
    proc, _ = fake
    info = S.describe(301, str(proc))
    base = {"stage": "create", "container": DOCKER_ID, "tier": "restricted"}
    r = S.report(info, [{**base, "mode": "audit"}], str(proc))
    assert r["mode"] == "audit" and "AUDIT MODE (logged, not enforced)" in S.render([r])
    r = S.report(info, [{**base, "mode": "enforce"}], str(proc))
    assert r["mode"] == "enforce" and "AUDIT MODE" not in S.render([r])


def test_cli_pid_and_missing(tmp_path, capsys):
    log = tmp_path / "d.jsonl"
    log.write_text("")
    assert cli.main(["status", "--pid", str(os.getpid()), "--log", str(log), "--json"]) == 0
    [r] = json.loads(capsys.readouterr().out)
    mine = open(f"/proc/{os.getpid()}/status").read()
    assert f"CapEff:\t{r['cap_eff']}" in mine and r["tier"] is None
    assert cli.main(["status", "--pid", "999999999", "--log", str(log)]) == 2
    assert cli.main(["status", "no-such-container-name-xyz", "--log", str(log)]) == 2
    assert "no running container matches" in capsys.readouterr().err
