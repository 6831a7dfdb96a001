"""Mounts judged by the host paths they really expose (issue 15: volumes, overlays, races, sockets, own state)."""

from __future__ import annotations

import copy
import os

import pytest

from helpers import podman_precreate, privileged_like, shipped_policy
from tiergate.host import facts as host
from tiergate.core.errors import Refusal
from tiergate.core.harden import harden
from tiergate.core.modifiers.mounts import host_paths, written_paths

POLICY = shipped_policy()
VOL = "/var/lib/containers/storage/volumes/v/_data"
PID = "ab7bff011bf0d14e22f159cffc3cdeb11185187e73806a16d1dab5a319998818"
UPPER = f"/var/lib/containers/storage/overlay-containers/{PID}/userdata/overlay/1/"


def tier(name: str, **over) -> dict:
    return {**copy.deepcopy(POLICY["tiers"][name]), **over}


def spec_with(*mounts: dict) -> dict:
    spec = copy.deepcopy(podman_precreate())
    spec["mounts"] += list(mounts)
    return spec


def bind(src: str, dest: str = "/x", *opts: str) -> dict:
    return {"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate", *opts]}


def overlay(lower: str, upper: str = UPPER + "upper", work: str = UPPER + "work") -> dict:
    return {"destination": "/host", "type": "overlay", "source": UPPER + "merge",
            "options": [f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}", "private"]}


def fact(real: str, aliases=(), mutable=None, socket=None) -> dict:
    return {"real": real, "aliases": list(aliases), "mutable": mutable, "socket": socket}


def run(spec: dict, t, facts: dict | None = None):
    t = POLICY["tiers"][t] if isinstance(t, str) else t
    return harden(spec, t, POLICY, facts or {}, "test")


def kept(out: dict, src: str) -> list[dict]:
    return [m for m in out["mounts"] if m.get("source") == src]


@pytest.mark.parametrize("mount,paths", [
    (bind("/srv"), ["/srv"]),
    ({"destination": "/x", "type": "none", "source": "/srv", "options": ["rbind"]}, ["/srv"]),
    (overlay("/a:/b"), ["/a", "/b", UPPER + "upper", UPPER + "work"]),
    ({"destination": "/d", "type": "devtmpfs", "source": "devtmpfs"}, ["/dev"]),
    ({"destination": "/d", "type": "ext4", "source": "/dev/vda"}, ["/dev/vda"]),
    ({"destination": "/t", "type": "tmpfs", "source": "/etc"}, []),
    ({"destination": "/proc", "type": "proc", "source": "proc"}, []),
])
def test_host_paths_of_each_mount_kind(mount: dict, paths: list[str]) -> None:
    assert host_paths(mount) == paths


def test_overlay_writes_only_to_its_upper_and_work_dirs() -> None:
    assert written_paths(overlay("/")) == [UPPER + "upper", UPPER + "work"]


@pytest.mark.parametrize("name", ["baseline", "restricted"])
def test_named_bind_volume_is_judged_by_what_it_mounts(name: str) -> None:
    """A volume made with device=/ and o=bind: its _data is the host's / (mountinfo alias)."""
    spec = spec_with(bind(VOL, "/host"))
    facts = {"mount_paths": {VOL: fact(VOL, aliases=["/"])}}
    if name == "restricted":
        with pytest.raises(Refusal, match=r"sensitive host path .*_data \(/, as /\) at /host"):
            run(spec, name, facts)
    else:
        out, _, _ = run(spec, name, facts)
        assert not kept(out, VOL)


def test_plain_named_volume_stays_writable_in_restricted() -> None:
    out, changes, _ = run(spec_with(bind(VOL, "/data")), "restricted", {"mount_paths": {VOL: fact(VOL)}})
    assert kept(out, VOL) == [bind(VOL, "/data")]


@pytest.mark.parametrize("lower", ["/", "/etc", "/srv:/", "/var"])
def test_overlay_volume_of_a_sensitive_lower_dir_is_removed(lower: str) -> None:
    """podman -v /:/host:O: an overlay mount with lowerdir=/ reads the whole host."""
    out, changes, _ = run(spec_with(overlay(lower)), "baseline")
    assert not [m for m in out["mounts"] if m["destination"] == "/host"]
    assert any(c["what"].startswith("removed overlay mount") for c in changes)
    with pytest.raises(Refusal, match=r"mounts \(overlay\) sensitive host path"):
        run(spec_with(overlay(lower)), "restricted")


def test_overlay_of_an_ordinary_dir_is_kept_and_a_caller_upper_dir_is_read_only() -> None:
    out, _, _ = run(spec_with(overlay("/srv/src")), "restricted")
    assert "ro" not in [m for m in out["mounts"] if m["destination"] == "/host"][0]["options"]
    out, _, _ = run(spec_with(overlay("/srv/src", "/srv/up", "/srv/work")), "restricted")
    assert "ro" in [m for m in out["mounts"] if m["destination"] == "/host"][0]["options"]


@pytest.mark.parametrize("src", ["/var/cache/tiergate", "/var/cache", "/var", "/opt/tg/bin", "/opt/tg/bin/tiergate-hook"])
def test_tiergate_own_state_and_its_parents_are_not_mountable(src: str) -> None:
    facts = {"own_paths": ["/var/cache/tiergate", "/opt/tg/bin"]}
    out, _, _ = run(spec_with(bind(src)), "baseline", facts)
    assert not kept(out, src)
    with pytest.raises(Refusal):
        run(spec_with(bind(src)), "restricted", facts)


def test_own_paths_name_policy_cache_log_and_code() -> None:
    paths = host.own_paths("/etc/tg2/policy.toml", "/var/cache/tg2", "/var/log/tg2/d.jsonl")
    import tiergate

    assert {"/etc/tiergate", "/etc/tg2", "/var/cache/tg2", "/var/log/tg2"} <= set(paths)
    assert os.path.dirname(os.path.realpath(tiergate.__file__)) in paths


def test_a_directory_holding_an_engine_socket_is_a_socket_mount() -> None:
    facts = {"mount_paths": {"/srv/d": fact("/srv/d", socket="/srv/d/run/docker.sock")}}
    out, changes, _ = run(spec_with(bind("/srv/d")), "baseline", facts)
    assert not kept(out, "/srv/d")
    assert "directory holding engine socket /srv/d/run/docker.sock" in [c["why"] for c in changes if "forbids" in c["why"]][0]


def test_swappable_source_is_refused_unless_the_policy_names_it() -> None:
    facts = {"mount_paths": {"/tmp/lnk": fact("/srv/x", mutable="passes through /tmp, writable by others")}}
    with pytest.raises(Refusal, match="swappable host path /tmp/lnk"):
        run(spec_with(bind("/tmp/lnk")), "restricted", facts)
    out, _, _ = run(spec_with(bind("/tmp/lnk")), "baseline", facts)
    assert not kept(out, "/tmp/lnk")
    out, _, _ = run(spec_with(bind("/tmp/lnk")), tier("baseline", mutable_bind_paths=["/srv/*"]), facts)
    assert kept(out, "/tmp/lnk")


def test_writable_binds_names_what_stays_writable() -> None:
    spec = spec_with(bind("/srv/data", "/d", "rw"), bind("/srv/logs", "/l"))
    out, _, _ = run(spec, tier("restricted", writable_binds=["/srv/data"]))
    assert kept(out, "/srv/data")[0]["options"] == ["rbind", "rprivate", "rw"]
    assert kept(out, "/srv/logs")[0]["options"] == ["rbind", "rprivate", "ro"]
    out, _, _ = run(spec, "baseline")  # no writable_binds: the caller's choice stands
    assert "ro" not in kept(out, "/srv/logs")[0]["options"]


def test_privileged_sysfs_and_cgroup_become_read_only() -> None:
    spec = privileged_like()
    for m in spec["mounts"]:
        if m["type"] in ("sysfs", "cgroup"):
            m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    out, _, _ = run(spec, "baseline")
    fs = {m["type"]: m["options"] for m in out["mounts"] if m["type"] in ("sysfs", "cgroup")}
    assert set(fs) == {"sysfs", "cgroup"}
    assert all("ro" in o and "rw" not in o for o in fs.values())


# --- the edge: resolving like the kernel, and who could change the path -------------------

def test_resolve_follows_links_and_flags_writable_dirs(tmp_path) -> None:
    (tmp_path / "safe").mkdir()
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)
    (tmp_path / "open" / "lnk").symlink_to(tmp_path / "safe")
    (tmp_path / "lnk2").symlink_to("safe/../safe")
    assert host.resolve(str(tmp_path / "safe")) == (str(tmp_path / "safe"), None)
    assert host.resolve(str(tmp_path / "lnk2")) == (str(tmp_path / "safe"), None)
    real, why = host.resolve(str(tmp_path / "open" / "lnk"))
    assert real == str(tmp_path / "safe") and why == f"passes through {tmp_path / 'open'}, writable by others"
    real, why = host.resolve(str(tmp_path / "open" / "missing"))
    assert real == str(tmp_path / "open" / "missing") and "writable by others" in why


def test_resolve_trusts_a_sticky_dir_only_for_entries_root_owns(tmp_path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "mine").mkdir()
    assert host.resolve(str(sticky / "mine"))[1] is None  # owned by this (trusted) user
    if os.geteuid() == 0:
        os.chown(sticky / "mine", 4242, 4242)
        assert "writable by others" in host.resolve(str(sticky / "mine"))[1]
        os.chown(sticky, 4242, 4242)
        assert "owned by uid 4242" in host.resolve(str(sticky / "mine"))[1]


MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:21 / /proc rw - proc proc rw
166 27 254:0 / /var/lib/containers/storage/volumes/v/_data rw - ext4 /dev/vda rw
167 27 0:55 / /var/lib/containers/storage/volumes/p/_data rw - proc proc rw
168 27 254:0 /srv/x /var/lib/containers/storage/volumes/s/_data rw - ext4 /dev/vda rw
169 27 254:16 / /var/lib/containers/storage/volumes/d/_data rw - ext4 /dev/vdb rw
170 27 0:60 / /var/lib/containers/storage/volumes/t/_data rw - tmpfs tmpfs rw
171 22 254:0 /home/a\\040b /mnt/sp rw - ext4 /dev/vda rw
172 27 0:61 / /var/lib/docker/volumes/o/_data rw - overlay overlay rw,lowerdir=/:/srv,upperdir=/tmp/u,workdir=/tmp/w
"""


@pytest.mark.parametrize("path,aliases", [
    ("/var/lib/containers/storage/volumes/v/_data", ["/"]),
    ("/var/lib/containers/storage/volumes/v/_data/etc", ["/etc"]),
    ("/var/lib/containers/storage/volumes/p/_data", ["/proc"]),
    ("/var/lib/containers/storage/volumes/s/_data/y", ["/srv/x/y"]),
    ("/var/lib/containers/storage/volumes/d/_data", ["/dev/vdb"]),
    ("/var/lib/containers/storage/volumes/t/_data", []),
    ("/var/lib/containers/storage/volumes/plain/_data", []),
    ("/mnt/sp/f", ["/home/a b/f"]),
    ("/var/lib/docker/volumes/o/_data/etc", ["/etc", "/srv/etc", "/tmp/u/etc"]),
    ("/var/lib/docker/volumes/o/_data", ["/", "/srv", "/tmp/u"]),
])
def test_aliases_from_mountinfo(path: str, aliases: list[str]) -> None:
    table = host._MountTable(MOUNTINFO, "")
    got = [a for a in table.aliases(path, {}) if "/volumes/" not in a and not a.startswith("/mnt/")]
    assert got == aliases


def test_socket_under_finds_bound_sockets_at_any_depth(tmp_path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    unix = ("Num       RefCount Protocol Flags    Type St Inode Path\n"
            f"0000: 00000002 00000000 00010000 0001 01 34939 {tmp_path}/a/b/docker.sock\n"
            "0000: 00000002 00000000 00010000 0001 01   626\n")
    table = host._MountTable("", unix)
    assert table.socket_under(str(tmp_path), ("docker.sock",)) == f"{tmp_path}/a/b/docker.sock"
    assert table.socket_under(str(tmp_path / "a" / "b" / "x"), ("docker.sock",)) is None
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "podman.sock").write_text("")
    assert host._MountTable("", "").socket_under(str(tmp_path / "c"), ("podman.sock",)) == f"{tmp_path}/c/podman.sock"


@pytest.mark.parametrize("src", ["../../../../etc", "data", "/../../etc", "//etc/../etc"])
def test_relative_and_dotted_sources_are_judged_where_they_land(src: str) -> None:
    """A relative bind source is resolved by runc against the bundle: unknowable here, so refused."""
    with pytest.raises(Refusal):
        run(spec_with(bind(src)), "restricted")
    out, _, _ = run(spec_with(bind(src)), "baseline")
    assert not kept(out, src)


SID = "e1913d52df8ff901fee98e990c27e7cce5efc496ef0d4142fe55ec54e06c56f2"


@pytest.mark.parametrize("src,owned", [
    (f"/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{SID}/hostname", True),
    (f"/run/containerd/io.containerd.grpc.v1.cri/sandboxes/{SID}/shm", True),
    (f"/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{SID}/../../../../../../etc", False),
    (f"/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{SID}/secret", False),
    ("/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/short/hostname", False),
])
def test_containerd_cri_sandbox_files_are_the_engines(src: str, owned: bool) -> None:
    """containerd's CRI per-pod files live under /var/lib/containerd and /run but are not the host's."""
    spec = spec_with(bind(src, "/etc/hostname"))
    out, _, _ = run(spec, "restricted") if owned else (None, None, None)
    if owned:
        assert kept(out, src)
    else:
        with pytest.raises(Refusal):
            run(spec, "restricted")
