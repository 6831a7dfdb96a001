"""tiergate.core.harden and its modifiers: never weaker than the tier, idempotent, schema-valid, explained."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from helpers import (NON_PRIVILEGED, TIERS, all_caps, docker_bundle, linux_inputs, load_json, podman_precreate,
                     privileged_like, runc_default, shipped_policy, weaknesses, without_annotations)
from tiergate.core.errors import Refusal
from tiergate.core.harden import harden
from tiergate.core.spec import validate as validate_spec
from tiergate.oci.errors import SpecError
from spec_schema import validate_config

POLICY = shipped_policy()
INPUTS = linux_inputs()
SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
CID = "cea5d9f92cf0ff86e80c763e3496e9b71f1cd07729be8f9c342ad1cbc57de7fe"
PID = "ab7bff011bf0d14e22f159cffc3cdeb11185187e73806a16d1dab5a319998818"


def tier(name: str, **over) -> dict:
    t = copy.deepcopy(POLICY["tiers"][name])
    t.update(over)
    return t


def run(spec: dict, name_or_tier, facts: dict | None = None):
    t = POLICY["tiers"][name_or_tier] if isinstance(name_or_tier, str) else name_or_tier
    return harden(spec, t, POLICY, facts or {}, "test")


def bind(src: str, dest: str, **kw) -> dict:
    return {"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate"], **kw}


def with_mount(m: dict, spec: dict | None = None) -> dict:
    spec = copy.deepcopy(spec or runc_default())
    spec["mounts"].append(m)
    return spec


def test_inputs_cover_samples_and_linux_vectors() -> None:
    """The table below runs on every engine sample and every Linux good vector."""
    names = {p.name for p in INPUTS}
    assert {"docker-20.10-bundle-config.json", "podman-4.3-precreate-stdin.json", "runc-1.1-spec-default.json",
            "spec-example.json"} <= names
    assert not any("freebsd" in n or "zos" in n for n in names)


@pytest.mark.parametrize("name", TIERS)
@pytest.mark.parametrize("path", INPUTS, ids=[p.name for p in INPUTS])
def test_every_input_hardens_never_weaker_valid_and_idempotent(path: Path, name: str) -> None:
    """Per tier and input: refused only by a refusing tier, else never weaker, schema-valid, parseable, idempotent."""
    spec = load_json(path)
    t = POLICY["tiers"][name]
    try:
        out, changes, _ = run(spec, name)
    except Refusal as exc:
        assert t["on_escalation"] == "refuse", f"tier {name} refused: {exc}"
        assert str(exc).startswith(f"tier {name} refuses a container that ")
        return
    assert weaknesses(out, t, POLICY) == []
    assert validate_config(spec) == [] and validate_config(out) == []
    validate_spec(out)
    again, changes2, _ = run(out, name)
    assert changes2 == [] and again == out
    assert out["annotations"]["io.tiergate.tier"] == name
    for c in changes:
        assert set(c) == {"field", "what", "why"} and c["field"].startswith("$.") and c["why"]


def test_engine_samples_are_not_refused_by_restricted() -> None:
    """What podman/docker/runc produce by default runs under restricted: engine default caps are not 'asked for'."""
    for spec in (runc_default(), docker_bundle(), podman_precreate()):
        out, changes, _ = run(spec, "restricted")
        assert all(out["process"]["capabilities"][s] == ["CAP_NET_BIND_SERVICE"] or
                   out["process"]["capabilities"][s] == [] for s in out["process"]["capabilities"])


def test_privileged_tier_changes_nothing_but_annotations() -> None:
    """passthrough: even a --privileged spec is untouched apart from io.tiergate.* annotations."""
    for spec in (privileged_like(), podman_precreate(), docker_bundle()):
        out, changes, notes = run(spec, "privileged")
        assert changes == [] and notes == []
        assert without_annotations(out) == without_annotations(spec)
        extra = {k: v for k, v in out["annotations"].items() if k not in (spec.get("annotations") or {})}
        assert set(extra) == {"io.tiergate.tier", "io.tiergate.why", "io.tiergate.policy"}


def test_harden_does_not_mutate_its_input() -> None:
    """harden works on a copy: the caller's spec is unchanged."""
    spec = privileged_like()
    before = copy.deepcopy(spec)
    run(spec, "baseline")
    assert spec == before


# --- escalation requests: clamped under baseline, refused under restricted ----------------------------------


def _cap_add_all() -> dict:
    spec = runc_default()
    spec["process"]["capabilities"] = {s: all_caps() for s in SETS}
    return spec


def _pid_host() -> dict:
    spec = docker_bundle()
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"]
    return spec


def _docker_sock() -> dict:
    return with_mount(bind("/var/run/docker.sock", "/var/run/docker.sock"), docker_bundle())


def _unconfined() -> dict:
    spec = docker_bundle()
    del spec["linux"]["seccomp"]
    return spec


ESCALATIONS = [
    ("--privileged", privileged_like, ["$.process.capabilities.bounding", "$.linux.seccomp", "$.linux.devices",
                                       "$.linux.resources.devices", "$.linux.maskedPaths"], "CAP_SYS_ADMIN"),
    ("--cap-add ALL", _cap_add_all, ["$.process.capabilities.effective"], "CAP_SYS_ADMIN"),
    ("--pid host", _pid_host, ["$.linux.namespaces"], "shares the host's pid namespace (--pid host)"),
    ("-v /var/run/docker.sock", _docker_sock, ["$.mounts[10]"], "bind-mounts sensitive host path /var/run/docker.sock"),
    ("--security-opt seccomp=unconfined", _unconfined, ["$.linux.seccomp"], None),
]


@pytest.mark.parametrize(("make", "fields", "refusal"), [e[1:] for e in ESCALATIONS], ids=[e[0] for e in ESCALATIONS])
def test_escalation_is_clamped_under_baseline(make, fields: list[str], refusal) -> None:
    """Baseline strips what the tier forbids and says why in the change list."""
    out, changes, notes = run(make(), "baseline")
    assert weaknesses(out, POLICY["tiers"]["baseline"], POLICY) == []
    got = {c["field"] for c in changes}
    for f in fields:
        assert f in got, (f, got)
    assert all("baseline" in c["why"] or "privileges" in c["why"] for c in changes)
    if refusal:
        assert any(k == "clamped" for k, _ in notes)
        assert "clamped: " in out["annotations"]["io.tiergate.notes"]


@pytest.mark.parametrize(("make", "fields", "refusal"), [e[1:] for e in ESCALATIONS if e[3]],
                         ids=[e[0] for e in ESCALATIONS if e[3]])
@pytest.mark.parametrize("name", ["restricted", "isolated"])
def test_escalation_is_refused_under_restricted(make, fields, refusal: str, name: str) -> None:
    """Refusing tiers stop the container with one line naming what was asked for."""
    with pytest.raises(Refusal) as info:
        run(make(), name)
    msg = str(info.value)
    assert msg.startswith(f"tier {name} refuses a container that ") and refusal in msg
    assert "\n" not in msg


def test_seccomp_unconfined_is_replaced_not_refused() -> None:
    """Dropping the caller's (missing) seccomp profile is a replacement under every tier, never a refusal."""
    out, changes, _ = run(_unconfined(), "restricted")
    assert out["linux"]["seccomp"] == POLICY["tiers"]["restricted"]["seccomp"]
    assert {"field": "$.linux.seccomp", "what": "replaced no profile (unconfined) with restricted",
            "why": "tier restricted allows only its own syscall set"} in changes


# --- per modifier ---------------------------------------------------------------------------------------------


def test_capabilities_are_the_intersection_in_all_five_sets() -> None:
    """Each set keeps only what the tier allows; order of what is kept is the caller's."""
    spec = runc_default()
    spec["process"]["capabilities"] = {s: ["CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"] for s in SETS}
    out, changes, _ = run(spec, tier("baseline", on_escalation="clamp"))
    for s in SETS:
        assert out["process"]["capabilities"][s] == ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"]
    assert {"field": "$.process.capabilities.ambient", "what": "dropped CAP_SYS_ADMIN",
            "why": "tier baseline allows " + ", ".join(POLICY["tiers"]["baseline"]["capabilities"])} in changes


def test_engine_default_capabilities_are_dropped_silently_under_restricted() -> None:
    """Dropping CAP_CHOWN etc. (engine defaults) is a change, not an escalation: restricted does not refuse."""
    out, changes, notes = run(docker_bundle(), "restricted")
    assert out["process"]["capabilities"]["bounding"] == ["CAP_NET_BIND_SERVICE"]
    assert not any(k == "clamped" for k, _ in notes)


def test_isolated_drops_every_capability() -> None:
    out, _, _ = run(docker_bundle(), "isolated")
    assert all(v == [] for v in out["process"]["capabilities"].values())


def test_no_process_means_nothing_to_clamp() -> None:
    """A spec without process (createRuntime-only configs) is hardened without inventing one."""
    spec = runc_default()
    del spec["process"]
    out, _, _ = run(spec, "baseline")
    assert "process" not in out


@pytest.mark.parametrize("value", [None, False])
def test_no_new_privileges_is_set(value) -> None:
    spec = runc_default()
    if value is None:
        spec["process"].pop("noNewPrivileges", None)
    else:
        spec["process"]["noNewPrivileges"] = value
    out, changes, _ = run(spec, "baseline")
    assert out["process"]["noNewPrivileges"] is True
    assert {"field": "$.process.noNewPrivileges", "what": "set to true",
            "why": "setuid binaries and file capabilities must not raise privileges"} in changes


@pytest.mark.parametrize("name", NON_PRIVILEGED)
def test_seccomp_is_the_intersection_with_the_callers(name: str) -> None:
    """The caller's seccomp profile is intersected with the tier's, never swapped for it."""
    from tiergate.seccomp.intersect import intersect

    spec = docker_bundle()
    out, changes, _ = run(spec, name)
    t = POLICY["tiers"][name]
    assert out["linux"]["seccomp"] == intersect(t["seccomp"], spec["linux"]["seccomp"])
    assert any(c["what"] == f"intersected the caller's profile with {t['seccomp_profile']}" for c in changes)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the shipped tiers' ABIs are x86_64's family here")
@pytest.mark.parametrize("name", [n for n in NON_PRIVILEGED if len(POLICY["tiers"][n]["seccomp"]["architectures"]) > 1])
def test_a_pods_sandbox_gets_its_filter_for_the_native_abi_alone(name: str) -> None:
    """pause (containerd's sandbox_image) gets the tier's syscalls for x86_64 only: no i386 copy of
    the filter for runc to build, and an i386 call is killed (tighter). Unconfined or intersected
    with the caller's (RuntimeDefault at pod level) alike; any other container keeps both ABIs."""
    from tiergate.seccomp.intersect import intersect

    t = POLICY["tiers"][name]
    out, changes, _ = run(_unconfined(), name, {"sandbox": True})
    assert out["linux"]["seccomp"] == dict(t["seccomp"], architectures=["SCMP_ARCH_X86_64"])
    assert any(c["what"].endswith("native ABI only (the pod's sandbox)") for c in changes)
    spec = docker_bundle()
    out, _, _ = run(spec, name, {"sandbox": True})
    assert out["linux"]["seccomp"] == dict(intersect(t["seccomp"], spec["linux"]["seccomp"]),
                                           architectures=["SCMP_ARCH_X86_64"])
    assert run(_unconfined(), name)[0]["linux"]["seccomp"]["architectures"] == t["seccomp"]["architectures"]
    again, changes, _ = run(out, name, {"sandbox": True})  # a second pass: nothing more to do
    assert again["linux"]["seccomp"] == out["linux"]["seccomp"] and not any("seccomp" in c["field"] for c in changes)


@pytest.mark.parametrize("empty", [
    pytest.param("absent", id="namespaces absent"),
    pytest.param([], id="namespaces []"),
])
def test_missing_namespaces_are_added_under_baseline(empty) -> None:
    """No pid/network/ipc/uts/mount entry means the host's: each is added, each a change."""
    spec = runc_default()
    if empty == "absent":
        del spec["linux"]["namespaces"]
    else:
        spec["linux"]["namespaces"] = empty
    out, changes, notes = run(spec, "baseline")
    assert {ns["type"] for ns in out["linux"]["namespaces"]} == {"pid", "network", "ipc", "uts", "mount"}
    assert sum(c["field"] == "$.linux.namespaces" for c in changes) == 5
    assert ("clamped", "shares the host's network namespace (--net host)") in notes


def test_host_namespace_path_is_removed_when_facts_identify_the_host() -> None:
    """A namespace path whose identity equals the host's (facts) loses its path under baseline, refuses under restricted."""
    spec = runc_default()
    spec["linux"]["namespaces"][0] = {"type": "pid", "path": "/proc/1/ns/pid"}
    facts = {"host_ns": {"pid": ["4:1"]}, "ns_paths": {"/proc/1/ns/pid": "4:1"}}
    out, changes, _ = run(spec, "baseline", facts)
    assert out["linux"]["namespaces"][0] == {"type": "pid"}
    assert {"field": "$.linux.namespaces[0].path", "what": "removed /proc/1/ns/pid",
            "why": "tier baseline forbids host namespaces"} in changes
    with pytest.raises(Refusal, match=r"joins the host's pid namespace \(/proc/1/ns/pid\)"):
        run(spec, "restricted", facts)


def test_other_namespace_paths_are_kept() -> None:
    """A path to a pod's namespace (not the host's) is the engine's business: kept."""
    spec = runc_default()
    spec["linux"]["namespaces"][1] = {"type": "network", "path": "/run/netns/pod1"}
    facts = {"host_ns": {"network": ["4:1"]}, "ns_paths": {"/run/netns/pod1": "4:99"}}
    out, changes, _ = run(spec, "restricted", facts)
    assert out["linux"]["namespaces"][1] == {"type": "network", "path": "/run/netns/pod1"}


def test_host_namespace_allowed_by_tier_is_kept() -> None:
    """A tier with host_namespaces = [pid] leaves --pid host alone."""
    out, changes, _ = run(_pid_host(), tier("restricted", host_namespaces=["pid"]))
    assert "pid" not in {ns["type"] for ns in out["linux"]["namespaces"]}


def test_host_namespace_join_is_caught_even_when_pid1_is_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Joining the hook's own (host) pid namespace is refused under restricted, even if /proc/1/ns is unreadable."""
    from tiergate.host import facts as host

    real_stat = os.stat

    def stat(path, *a, **kw):
        if str(path).startswith("/proc/1/"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(host.os, "stat", stat)
    spec = runc_default()
    spec["linux"]["namespaces"][0] = {"type": "pid", "path": "/proc/self/ns/pid"}
    t = POLICY["tiers"]["restricted"]
    with pytest.raises(Refusal):
        harden(spec, t, POLICY, host.gather(spec, t), "test")


def test_host_devices_are_removed_and_cgroup_denied() -> None:
    """linux.devices outside the tier go; an allow-all device rule becomes deny-all plus standard rules."""
    out, changes, _ = run(privileged_like(), "baseline")
    assert out["linux"].get("devices") == []
    assert out["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    what = {c["field"]: c["what"] for c in changes}
    assert what["$.linux.devices"] == "removed 3 host devices (/dev/sda, /dev/mem, /dev/kmsg)"


def test_host_device_without_a_path_is_removed_not_a_crash() -> None:
    """A device entry lacking `path` is removed like any other (the change line shows None)."""
    spec = privileged_like()
    del spec["linux"]["devices"][0]["path"]
    out, changes, _ = run(spec, "baseline")
    assert out["linux"].get("devices") == []
    assert {c["field"]: c["what"] for c in changes}["$.linux.devices"].startswith("removed 3 host devices (None, ")


def test_tier_device_is_kept_with_its_cgroup_rule() -> None:
    """A device the tier lists survives, and gets exactly one allow rule after deny-all."""
    spec = privileged_like()
    out, _, _ = run(spec, tier("baseline", devices=["/dev/kmsg"]), {"devices": {"/dev/kmsg": ["c", 1, 11]}})
    assert [d["path"] for d in out["linux"]["devices"]] == ["/dev/kmsg"]
    assert out["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "rwm"}]


@pytest.mark.parametrize("dev", [
    {"path": "/dev/fuse", "type": "b", "major": 254, "minor": 0},   # --device /dev/vda:/dev/fuse
    {"path": "/dev/fuse", "type": "c", "major": 1, "minor": 1},     # /dev/mem renamed
    {"path": "/dev/vda", "type": "c", "major": 10, "minor": 229},   # the real fuse, but is it allowed? yes: below
])
def test_devices_match_the_host_device_not_the_path_inside(dev: dict) -> None:
    """devices = ["/dev/fuse"] allows the host's fuse (c 10:229) under any name, and nothing else under its name."""
    spec = privileged_like()
    spec["linux"]["devices"] = [dev]
    facts = {"devices": {"/dev/fuse": ["c", 10, 229]}}
    out, _, _ = run(spec, tier("baseline", devices=["/dev/fuse"]), facts)
    allowed = (dev["type"], dev["major"], dev["minor"]) == ("c", 10, 229)
    assert out["linux"]["devices"] == ([dev] if allowed else [])
    rules = out["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert any(r.get("major") == dev["major"] and r.get("minor") == dev["minor"] for r in rules) == allowed


def test_device_allow_list_without_host_facts_keeps_nothing() -> None:
    """No stat of the host device (the edge did not run): fail closed, every device goes."""
    out, _, _ = run(privileged_like(), tier("baseline", devices=["/dev/kmsg"]))
    assert out["linux"]["devices"] == []


def test_host_devices_fact_is_the_hosts() -> None:
    """The edge reports the host's own numbers for allowed paths; missing ones are absent."""
    from tiergate.host import facts as host

    st = os.stat("/dev/null")
    assert host.host_devices(["/dev/null", "/nonexistent-dev"]) == {"/dev/null": ["c", os.major(st.st_rdev),
                                                                                  os.minor(st.st_rdev)]}


def test_standard_device_rules_are_kept() -> None:
    """docker's standard rules (null, zero, tty, ...) and its denies are left as they are."""
    spec = docker_bundle()
    out, changes, _ = run(spec, "restricted")
    assert out["linux"]["resources"]["devices"] == spec["linux"]["resources"]["devices"]
    assert not any(c["field"] == "$.linux.resources.devices" for c in changes)


@pytest.mark.parametrize("rule", [
    {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "rw"},
    {"allow": True, "type": "c", "major": 1, "minor": 1, "access": "r"},
    {"allow": True, "type": "a", "access": "rwm"},
    {"allow": True, "type": "c", "access": "w"},
    {"allow": True},
], ids=["sda rw", "mem r", "all", "every char dev", "bare allow"])
def test_device_rules_beyond_the_standard_set_are_clamped(rule: dict) -> None:
    """Any allow rule granting r or w outside the standard set is an escalation."""
    spec = docker_bundle()
    spec["linux"]["resources"]["devices"].append(rule)
    out, _, notes = run(spec, "baseline")
    assert rule not in out["linux"]["resources"]["devices"]
    assert ("clamped", "asks for device-cgroup access to host devices") in notes
    assert weaknesses(out, POLICY["tiers"]["baseline"], POLICY) == []
    with pytest.raises(Refusal, match="device-cgroup access"):
        run(spec, "restricted")


def test_mknod_only_rule_is_not_an_escalation() -> None:
    """An allow rule with access 'm' only grants no read or write: kept."""
    spec = docker_bundle()
    rule = {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "m"}
    spec["linux"]["resources"]["devices"].append(rule)
    out, _, _ = run(spec, "restricted")
    assert rule in out["linux"]["resources"]["devices"]


SENSITIVE = [
    ("docker.sock by source", bind("/var/run/docker.sock", "/sock")),
    ("docker.sock by destination", bind("/home/u/tmp/x", "/var/run/docker.sock")),
    ("podman.sock under /run/user", bind("/run/user/1000/podman/podman.sock", "/p.sock")),
    ("containerd.sock", bind("/run/containerd/containerd.sock", "/c.sock")),
    ("host root", bind("/", "/host")),
    ("host /etc", bind("/etc", "/host-etc")),
    ("a file under /etc", bind("/etc/shadow", "/shadow")),
    ("/var/lib/docker", bind("/var/lib/docker", "/d")),
    ("/var/lib/containers/storage", bind("/var/lib/containers/storage", "/s")),
    ("/proc via bind", bind("/proc", "/hostproc")),
    ("dot segments", bind("/srv/../etc", "/e")),
    ("trailing slash", bind("/etc/", "/e")),
    ("double slashes inside", bind("/var//lib/docker", "/d")),
    ("bind by option, no type", {"destination": "/r", "source": "/root", "options": ["bind"]}),
]


@pytest.mark.parametrize("mount", [s[1] for s in SENSITIVE], ids=[s[0] for s in SENSITIVE])
def test_sensitive_bind_mounts_are_removed(mount: dict) -> None:
    """Sensitive host paths and engine sockets never reach a baseline container; restricted refuses them."""
    spec = with_mount(mount)
    out, changes, _ = run(spec, "baseline")
    assert mount not in out["mounts"]
    assert len(out["mounts"]) == len(spec["mounts"]) - 1
    (c,) = [c for c in changes if c["field"] == f"$.mounts[{len(spec['mounts']) - 1}]"]
    assert c["what"] == f"removed bind mount {mount['source']} -> {mount['destination']}"
    assert c["why"].startswith("tier baseline forbids mounting ")
    with pytest.raises(Refusal, match="bind-mounts sensitive host path"):
        run(spec, "restricted")


@pytest.mark.parametrize("src", ["//", "//etc", "//var/run/docker.sock/../../../etc"])
def test_leading_double_slash_is_still_sensitive(src: str) -> None:
    """'//etc' is /etc to the kernel: removed even without host facts (the engine is pure)."""
    out, _, _ = run(with_mount(bind(src, "/h")), "baseline")
    assert all(m["source"] != src for m in out["mounts"])


@pytest.mark.parametrize("src", ["/var/lib/docker/volumes/x/_data/../../../../../../etc",
                                 "/var/lib/docker/volumes/x/_data/../../../../..",
                                 "/var/lib/containers/storage/volumes/v/_data/../../../../../../../root"])
def test_dot_dot_out_of_a_named_volume_is_sensitive(src: str) -> None:
    """A 'named volume' path that climbs out with .. is judged by where it lands."""
    from tiergate.host import facts as host

    spec = with_mount(bind(src, "/v"))
    t = POLICY["tiers"]["restricted"]
    with pytest.raises(Refusal):
        harden(spec, t, POLICY, host.gather(spec, t), "test")


def test_realpath_fact_catches_symlinks() -> None:
    """A harmless-looking source whose real path (host fact) is sensitive is removed."""
    spec = with_mount(bind("/home/u/link", "/l"))
    out, _, _ = run(spec, "baseline", {"mount_paths": {"/home/u/link": {"real": "/var/lib/docker", "mutable": None}}})
    assert all(m["source"] != "/home/u/link" for m in out["mounts"])


ENGINE_OWNED = [
    ("podman userdata hosts", bind(f"/run/containers/storage/overlay-containers/{PID}/userdata/hosts", "/etc/hosts")),
    ("podman userdata shm", bind(f"/var/lib/containers/storage/overlay-containers/{PID}/userdata/shm", "/dev/shm")),
    ("docker hostname", bind(f"/var/lib/docker/containers/{CID}/hostname", "/etc/hostname")),
    ("docker resolv.conf", bind(f"/var/lib/docker/containers/{CID}/resolv.conf", "/etc/resolv.conf")),
    ("docker named volume", bind("/var/lib/docker/volumes/data/_data", "/data")),
    ("podman named volume", bind("/var/lib/containers/storage/volumes/data/_data", "/data")),
    ("ordinary host dir", bind("/srv/www", "/usr/share/nginx/html")),
    ("tmpfs source named like /etc (not a bind)", {"destination": "/etc/x", "type": "tmpfs", "source": "/etc"}),
]


@pytest.mark.parametrize("mount", [e[1] for e in ENGINE_OWNED], ids=[e[0] for e in ENGINE_OWNED])
@pytest.mark.parametrize("name", NON_PRIVILEGED)
def test_engine_owned_and_ordinary_mounts_are_kept(mount: dict, name: str) -> None:
    """Engine per-container files, named volumes and ordinary dirs are not 'sensitive host paths';
    a tier with writable_binds = [] (restricted) keeps an ordinary host dir, read-only."""
    out, changes, _ = run(with_mount(mount, podman_precreate()), name)
    host_bind = mount["source"] == "/srv/www" and POLICY["tiers"][name]["writable_binds"] is not None
    want = {**mount, "options": mount["options"] + ["ro"]} if host_bind else mount
    assert want in out["mounts"]
    assert [c["what"] for c in changes if c["field"].startswith("$.mounts[")] == (
        ["made host path /srv/www at /usr/share/nginx/html read-only"] if host_bind else [])


def test_sensitive_mounts_tier_keeps_them() -> None:
    """A tier with sensitive_mounts = true may mount the engine socket."""
    spec = _docker_sock()
    out, _, _ = run(spec, tier("baseline", sensitive_mounts=True))
    assert spec["mounts"][-1] in out["mounts"]


def test_masked_and_readonly_paths_are_a_superset() -> None:
    """The caller's masked/read-only paths are kept; the tier's are added after them."""
    spec = runc_default()
    spec["linux"]["maskedPaths"] = ["/proc/kcore", "/my/secret"]
    out, changes, _ = run(spec, "baseline")
    t = POLICY["tiers"]["baseline"]
    assert out["linux"]["maskedPaths"][:2] == ["/proc/kcore", "/my/secret"]
    assert set(out["linux"]["maskedPaths"]) == set(t["masked_paths"]) | {"/my/secret"}
    assert set(t["readonly_paths"]) <= set(out["linux"]["readonlyPaths"])


@pytest.mark.parametrize(("name", "sysctl", "kept"), [
    ("baseline", "net.core.somaxconn", True),
    ("baseline", "kernel.shmmax", True),
    ("baseline", "kernel.core_pattern", False),
    ("baseline", "vm.overcommit_memory", False),
    ("restricted", "net.ipv4.ping_group_range", True),
    ("restricted", "net.core.somaxconn", False),
])
def test_sysctls_only_allowed_ones(name: str, sysctl: str, kept: bool) -> None:
    """Sysctls outside the tier's patterns are removed (baseline) or refused (restricted)."""
    spec = runc_default()
    spec["linux"]["sysctl"] = {sysctl: "1"}
    if not kept and POLICY["tiers"][name]["on_escalation"] == "refuse":
        with pytest.raises(Refusal, match=f"sets sysctl {sysctl}"):
            run(spec, name)
        return
    out, changes, _ = run(spec, name)
    assert (sysctl in out["linux"]["sysctl"]) is kept
    if not kept:
        assert {"field": f"$.linux.sysctl.{sysctl}", "what": "removed",
                "why": f"tier {name} does not allow this sysctl"} in changes


@pytest.mark.parametrize(("have", "want"), [(None, 256), (-1, 256), (0, 256), (100_000, 256), (100, 100), (256, 256)])
def test_pids_limit_is_at_most_the_tiers(have, want: int) -> None:
    """Isolated caps pids at 256: missing, unlimited (-1, 0) or higher become 256; lower is kept."""
    spec = runc_default()
    if have is not None:
        spec["linux"]["resources"]["pids"] = {"limit": have}
    out, changes, _ = run(spec, "isolated")
    assert out["linux"]["resources"]["pids"]["limit"] == want
    assert any(c["field"] == "$.linux.resources.pids.limit" for c in changes) is (have != want)


def test_readonly_rootfs_tmpfs_and_writable_mounts() -> None:
    """A tier with readonly_rootfs, tmpfs and writable_mounts: root ro, tmpfs added, other mounts ro (kernel fs kept, /dev too)."""
    t = tier("baseline", readonly_rootfs=True, tmpfs={"/tmp": "size=64m"}, writable_mounts=["/data"])
    spec = with_mount(bind("/srv/data", "/data"), with_mount(bind("/srv/cfg", "/cfg")))
    spec["root"]["readonly"] = False
    out, changes, _ = run(spec, t)
    assert out["root"]["readonly"] is True
    by_dest = {m["destination"]: m for m in out["mounts"]}
    assert by_dest["/tmp"] == {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "nodev", "noexec", "size=64m"]}
    assert "ro" in by_dest["/cfg"]["options"] and "ro" not in by_dest["/data"]["options"]
    assert "ro" not in (by_dest["/proc"].get("options") or []) and "ro" in by_dest["/dev"]["options"]  # runc remounts /dev ro after mknod
    again, changes2, _ = run(out, t)
    assert changes2 == [] and again == out


def test_apparmor_profile_set_when_loaded() -> None:
    """With the profile loaded by the edge (facts), the process gets it."""
    out, changes, _ = run(runc_default(), "baseline", {"apparmor": "tiergate-baseline"})
    assert out["process"]["apparmorProfile"] == "tiergate-baseline"


def test_apparmor_required_but_unavailable_refuses() -> None:
    with pytest.raises(Refusal, match="requires AppArmor, which this host does not offer"):
        run(runc_default(), tier("baseline", apparmor="require"))


def test_apparmor_preferred_but_unavailable_is_a_note() -> None:
    out, _, notes = run(runc_default(), "baseline")
    assert ("apparmor", "unavailable on this host: the tier runs without its profile") in notes
    assert "apparmorProfile" not in out["process"]


def test_network_tier_adds_its_createruntime_hook_once() -> None:
    """Isolated (network policy) adds the network hook and records the policy; twice adds it once."""
    hook = {"path": "/usr/bin/tiergate-hook", "args": ["tiergate-hook", "createRuntime"]}
    out, changes, _ = run(runc_default(), "isolated", {"network_hook": hook})
    assert out["hooks"]["createRuntime"] == [hook]
    assert out["annotations"]["io.tiergate.network"] == "none"
    again, changes2, _ = run(out, "isolated", {"network_hook": hook})
    assert again["hooks"]["createRuntime"] == [hook] and changes2 == []


def test_network_hook_skipped_when_applied_at_the_edge() -> None:
    hook = {"path": "/x", "args": ["x"]}
    out, _, _ = run(runc_default(), "isolated", {"network_hook": hook, "network_applied": True})
    assert "hooks" not in out


def test_isolated_refuses_host_network() -> None:
    """A network policy cannot be enforced in the host's netns: refused with that reason."""
    spec = runc_default()
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
    with pytest.raises(Refusal, match=r"has a network policy, which cannot be enforced in the host's network namespace"):
        run(spec, "isolated")


def test_refusal_gives_every_reason_on_one_line() -> None:
    """Several refusals become one line holding each of them (the log keeps them all, never "(and 1 more)")."""
    with pytest.raises(Refusal) as info:
        run(privileged_like(), "restricted")
    reasons = str(info.value).split("; tier restricted refuses")
    assert str(info.value).startswith("tier restricted refuses a container that ") and "\n" not in str(info.value)
    assert len(reasons) >= 2 and "more)" not in str(info.value)
    assert "device-cgroup access to host devices" in str(info.value)


# --- malformed specs: SpecError naming the field, never another exception --------------------------------


def _set(path: list, value):
    def mutate(spec: dict) -> dict:
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return spec
    return mutate


MALFORMED = [
    ("capabilities.bounding a string", ["process", "capabilities", "bounding"], "CAP_SYS_ADMIN",
     "expected an array @ $.process.capabilities.bounding"),
    ("capability name an int", ["process", "capabilities", "bounding", 0], 21,
     "expected a string @ $.process.capabilities.bounding[0]"),
    ("capabilities a list", ["process", "capabilities"], ["CAP_SYS_ADMIN"], "expected an object @ $.process.capabilities"),
    ("process a string", ["process"], "sh", "expected an object @ $.process"),
    ("noNewPrivileges a string", ["process", "noNewPrivileges"], "false", "expected a boolean @ $.process.noNewPrivileges"),
    ("namespaces[0] a string", ["linux", "namespaces", 0], "pid", "expected an object @ $.linux.namespaces[0]"),
    ("namespaces an object", ["linux", "namespaces"], {"pid": {}}, "expected an array @ $.linux.namespaces"),
    ("namespace type an int", ["linux", "namespaces", 0, "type"], 1, "expected a string @ $.linux.namespaces[0].type"),
    ("mounts[2].options a string", ["mounts", 2, "options"], "ro,nosuid", "expected an array @ $.mounts[2].options"),
    ("mounts[2] a string", ["mounts", 2], "/dev/pts", "expected an object @ $.mounts[2]"),
    ("mounts[1].source a list", ["mounts", 1, "source"], ["/etc"], "expected a string @ $.mounts[1].source"),
    ("mounts an object", ["mounts"], {"/proc": {}}, "expected an array @ $.mounts"),
    ("linux.sysctl a list", ["linux", "sysctl"], ["kernel.core_pattern=|/x"], "expected an object @ $.linux.sysctl"),
    ("linux a list", ["linux"], [], "expected an object @ $.linux"),
    ("annotations a list", ["annotations"], ["io.tiergate.tier=privileged"], "expected an object @ $.annotations"),
    ("annotations a string", ["annotations"], "x", "expected an object @ $.annotations"),
    ("devices[0] a string", ["linux", "devices"], ["/dev/sda"], "expected an object @ $.linux.devices[0]"),
    ("device path an int", ["linux", "devices"], [{"path": 1, "type": "b"}], "expected a string @ $.linux.devices[0].path"),
    ("resources.devices an object", ["linux", "resources", "devices"], {"allow": True},
     "expected an array @ $.linux.resources.devices"),
    ("maskedPaths item an int", ["linux", "maskedPaths", 0], 0, "expected a string @ $.linux.maskedPaths[0]"),
    ("seccomp a string", ["linux", "seccomp"], "unconfined", "expected an object @ $.linux.seccomp"),
    ("pids limit a string", ["linux", "resources", "pids"], {"limit": "max"}, "expected an integer @ $.linux.resources.pids.limit"),
    ("pids limit a bool", ["linux", "resources", "pids"], {"limit": True}, "expected an integer @ $.linux.resources.pids.limit"),
]


@pytest.mark.parametrize(("path", "value", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_spec_is_a_spec_error_naming_the_field(path: list, value, message: str) -> None:
    """Wrong types fail closed with SpecError(`reason @ $.path`), under every tier that inspects them."""
    spec = _set(path, value)(runc_default())
    name = "isolated" if "pids" in path else "baseline"
    with pytest.raises(SpecError) as info:
        run(spec, name)
    assert str(info.value) == message


BAD_DEVICE_RULES = [
    ("type a list", {"allow": True, "type": ["c"], "access": "rw"}),
    ("major an object", {"allow": True, "type": "c", "major": {}, "access": "rw"}),
    ("minor a list", {"allow": True, "type": "c", "major": 1, "minor": [3], "access": "rw"}),
]


@pytest.mark.parametrize("rule", [b[1] for b in BAD_DEVICE_RULES], ids=[b[0] for b in BAD_DEVICE_RULES])
def test_malformed_device_rule_is_a_spec_error(rule: dict) -> None:
    """A device-cgroup rule with a non-scalar type/major/minor is a SpecError naming it."""
    spec = runc_default()
    spec["linux"]["resources"]["devices"].append(rule)
    with pytest.raises(SpecError, match=r"@ \$\.linux\.resources\.devices\[1\]"):
        run(spec, "baseline")


def test_malformed_destination_is_a_spec_error_in_every_tier() -> None:
    """Even a tier that skips the sensitive-mount check reports a bad destination as SpecError."""
    spec = _set(["mounts", 1, "destination"], ["/dev"])(runc_default())
    with pytest.raises(SpecError, match=r"@ \$\.mounts\[1\]\.destination"):
        run(spec, tier("baseline", sensitive_mounts=True))


def test_kubernetes_host_namespace_refused_not_clamped() -> None:
    """A hostNetwork pod under baseline: elsewhere clamped to a private namespace; under Kubernetes
    (refuse_host_ns) refused, since the pod would run without its network."""
    spec = {"process": {"args": ["/pause"]}, "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]}}
    out, _, _ = run(copy.deepcopy(spec), "baseline")
    assert {"type": "network"} in out["linux"]["namespaces"]
    with pytest.raises(Refusal, match="hostNetwork"):
        run(copy.deepcopy(spec), "baseline", {"refuse_host_ns": True})
    out, _, _ = run(copy.deepcopy(spec), tier("baseline", host_namespaces=["network"]), {"refuse_host_ns": True})
    assert {"type": "network"} not in out["linux"]["namespaces"]


@pytest.mark.parametrize("tier", ["privileged", "baseline", "web"])
def test_callers_io_tiergate_annotations_never_survive(tier: str) -> None:
    """A caller's io.tiergate.* annotation (ports, notes, refused, anything) is dropped: what later
    stages read back (createRuntime: tier, ports) is only what tiergate wrote."""
    spec = runc_default()
    forged = {"io.tiergate.ports": "2222/tcp", "io.tiergate.notes": "all fine", "io.tiergate.refused": "x",
              "io.tiergate.network": "none", "io.tiergate.anything": "1", "org.example.keep": "yes"}
    spec["annotations"] = dict(forged, **{"io.tiergate.tier": "privileged"})
    out, _, _ = harden(spec, POLICY["tiers"][tier], POLICY, {"ports": [{"port": 80, "proto": "tcp"}]}, "test")
    ann = out["annotations"]
    assert ann["org.example.keep"] == "yes" and ann["io.tiergate.tier"] == tier
    assert ann.get("io.tiergate.ports") in (None, "80/tcp")  # only the image's own exposed ports, for a network tier
    assert ann.get("io.tiergate.notes") != "all fine"
    assert tier != "privileged" or "io.tiergate.network" not in ann
    assert "io.tiergate.refused" not in ann and "io.tiergate.anything" not in ann

