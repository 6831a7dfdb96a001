"""tiergate.oci.convert and model: exact round trips, strict types, one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiergate.oci import model
from tiergate.oci.convert import dump_spec, dump_state, make_converter, parse_spec, parse_state
from tiergate.oci.errors import SpecError

MINIMAL = {"ociVersion": "1.3.0", "root": {"path": "rootfs"}, "process": {"cwd": "/", "args": ["sh"]}}


def load(path: Path) -> dict:
    return json.loads(path.read_bytes())


class TestRoundTrip:
    def test_good_vector(self, good_vector: Path) -> None:
        """Every runtime-spec good vector comes back as the same JSON value."""
        data = load(good_vector)
        assert dump_spec(parse_spec(data)) == data

    def test_good_vector_from_bytes(self, good_vector: Path) -> None:
        """Bytes go through jsonio first and give the same result as a dict."""
        assert dump_spec(parse_spec(good_vector.read_bytes())) == load(good_vector)

    def test_sample_config(self, sample_config: Path) -> None:
        """Engine-written configs (docker, podman, runc) round-trip exactly."""
        data = load(sample_config)
        assert dump_spec(parse_spec(data)) == data

    def test_sample_state(self, sample_state: Path) -> None:
        data = load(sample_state)
        assert dump_state(parse_state(data)) == data

    @pytest.mark.parametrize(
        "value", [None, [], {}, "", 0, False], ids=["null", "empty-list", "empty-obj", "empty-str", "zero", "false"]
    )
    def test_absent_null_and_empty_stay_distinct(self, value: Any) -> None:
        """An unknown key keeps any value; a typed field keeps null vs [] vs absent."""
        data = {**MINIMAL, "x-engine": value}
        assert dump_spec(parse_spec(data)) == data
        for typed in ({**MINIMAL, "mounts": None}, {**MINIMAL, "mounts": []}, MINIMAL):
            assert dump_spec(parse_spec(typed)) == typed

    def test_typed_fields_are_typed(self, data_dir: Path) -> None:
        """Known sections become model classes, not extras."""
        spec = parse_spec(load(data_dir / "samples" / "docker-20.10-bundle-config.json"))
        assert isinstance(spec.linux.seccomp, model.Seccomp)
        assert isinstance(spec.linux.seccomp.syscalls[0], model.SyscallRule)
        assert isinstance(spec.process.capabilities, model.Capabilities)
        assert spec.extras == {}
        assert spec.hostname is model.MISSING or isinstance(spec.hostname, str)
        assert spec.domainname is model.MISSING

    def test_dump_does_not_alias_input(self) -> None:
        """Mutating the dump (or the input) never changes the parsed Spec's extras."""
        data = {**MINIMAL, "vm": {"hypervisor": {"path": "/x"}}}
        spec = parse_spec(data)
        data["vm"]["hypervisor"]["path"] = "/changed"
        dump_spec(spec)["vm"]["hypervisor"]["path"] = "/again"
        assert spec.extras["vm"] == {"hypervisor": {"path": "/x"}}

    def test_typed_field_wins_over_stray_extra(self) -> None:
        spec = parse_spec(MINIMAL)
        spec.extras["hostname"] = "from-extras"
        spec.hostname = "typed"
        assert dump_spec(spec)["hostname"] == "typed"


# (description, path into MINIMAL-based spec, value, expected message)
WRONG_TYPES = [
    ("top-level string field", ["ociVersion"], 1, "expected str @ $.ociVersion"),
    ("object expected", ["root"], [], "expected an object @ $.root"),
    ("bool is not int-like", ["process", "terminal"], 1, "expected bool @ $.process.terminal"),
    ("string list is a string", ["process", "capabilities"], {"bounding": "CAP_CHOWN"},
     "expected a list of strings @ $.process.capabilities.bounding"),
    ("string list has a number", ["process", "env"], ["A=1", 2], "expected a list of strings @ $.process.env"),
    ("uid as string", ["process", "user"], {"uid": "0"}, "expected int @ $.process.user.uid"),
    ("uid out of range", ["process", "user"], {"uid": -1}, "expected uint32, got -1 @ $.process.user.uid"),
    ("gid list", ["process", "user"], {"additionalGids": [1, "2"]}, "expected int @ $.process.user.additionalGids[1]"),
    ("rlimits not a list", ["process", "rlimits"], {}, "expected a list @ $.process.rlimits"),
    ("rlimit hard float", ["process", "rlimits"], [{"type": "RLIMIT_NOFILE", "hard": 1.0, "soft": 1}],
     "expected int @ $.process.rlimits[0].hard"),
    ("oomScoreAdj bool", ["process", "oomScoreAdj"], True, "expected int @ $.process.oomScoreAdj"),
    ("mount options", ["mounts"], [{"destination": "/x", "options": "ro"}], "expected a list of strings @ $.mounts[0].options"),
    ("hook timeout", ["hooks"], {"prestart": [{"path": "/x", "timeout": "5"}]}, "expected int @ $.hooks.prestart[0].timeout"),
    ("annotation value", ["annotations"], {"a.b/c": 1}, "expected str @ $.annotations['a.b/c']"),
    ("sysctl value", ["linux"], {"sysctl": {"net.ipv4.ip_forward": 1}}, "expected str @ $.linux.sysctl['net.ipv4.ip_forward']"),
    ("namespace entry", ["linux"], {"namespaces": ["pid"]}, "expected an object @ $.linux.namespaces[0]"),
    ("device major", ["linux"], {"devices": [{"type": "c", "path": "/dev/x", "major": "1"}]},
     "expected int @ $.linux.devices[0].major"),
    ("cgroup device allow", ["linux"], {"resources": {"devices": [{"allow": "yes"}]}},
     "expected bool @ $.linux.resources.devices[0].allow"),
    ("pids limit", ["linux"], {"resources": {"pids": {"limit": "max"}}}, "expected int @ $.linux.resources.pids.limit"),
    ("seccomp errnoRet", ["linux"], {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO"}] * 3 + [{"names": ["b"], "action": "SCMP_ACT_ERRNO", "errnoRet": "1"}]}},
     "expected int @ $.linux.seccomp.syscalls[3].errnoRet"),
    ("seccomp arg value", ["linux"], {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}},
     "expected uint64, got -1 @ $.linux.seccomp.syscalls[0].args[0].value"),
    ("rdma map value", ["linux"], {"resources": {"rdma": {"mlx5": []}}}, "expected an object @ $.linux.resources.rdma.mlx5"),
]  # fmt: skip

# Values the types allow but the spec does not (model.CHECKS).
BAD_VALUES = [
    ("namespace type", ["linux"], {"namespaces": [{"type": "net"}]}, "unknown namespace type 'net' @ $.linux.namespaces[0].type"),
    ("rlimit type", ["process", "rlimits"], [{"type": "NOFILE", "hard": 1, "soft": 1}],
     "invalid rlimit type 'NOFILE' @ $.process.rlimits[0].type"),
    ("propagation", ["linux"], {"rootfsPropagation": "everywhere"}, "invalid rootfs propagation 'everywhere' @ $.linux.rootfsPropagation"),
    ("device type", ["linux"], {"devices": [{"type": "x", "path": "/dev/x"}]}, "invalid device type 'x' @ $.linux.devices[0].type"),
    ("cgroup access", ["linux"], {"resources": {"devices": [{"allow": False, "access": "rwx"}]}},
     "invalid device cgroup access 'rwx' @ $.linux.resources.devices[0].access"),
    ("seccomp default", ["linux"], {"seccomp": {}}, "invalid seccomp action missing @ $.linux.seccomp.defaultAction"),
    ("seccomp action", ["linux"], {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "DENY"}]}},
     "invalid seccomp action 'DENY' @ $.linux.seccomp.syscalls[0].action"),
    ("seccomp op", ["linux"], {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "=="}]}]}},
     "invalid seccomp operator '==' @ $.linux.seccomp.syscalls[0].args[0].op"),
    ("netdevice host name", ["linux"], {"netDevices": {"eth0/x": {}}}, "invalid network device name 'eth0/x' @ $.linux.netDevices['eth0/x']"),
    ("netdevice name too long", ["linux"], {"netDevices": {"eth0": {"name": "x" * 16}}},
     f"invalid network device name '{'x' * 16}' @ $.linux.netDevices.eth0.name"),
]  # fmt: skip


def _with(path: list[str], value: Any) -> dict:
    data = copy.deepcopy(MINIMAL)
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


class TestErrors:
    @pytest.mark.parametrize(("path", "value", "message"), [c[1:] for c in WRONG_TYPES], ids=[c[0] for c in WRONG_TYPES])
    def test_wrong_type(self, path: list[str], value: Any, message: str) -> None:
        """A wrong type anywhere gives one SpecError naming the first failing field."""
        with pytest.raises(SpecError) as info:
            parse_spec(_with(path, value))
        assert str(info.value) == message

    @pytest.mark.parametrize(("path", "value", "message"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
    def test_bad_value(self, path: list[str], value: Any, message: str) -> None:
        with pytest.raises(SpecError) as info:
            parse_spec(_with(path, value))
        assert str(info.value) == message

    def test_first_error_wins(self) -> None:
        """Several bad fields: the first in model order is named, nothing else escapes."""
        data = {**MINIMAL, "hostname": 1, "linux": {"sysctl": []}}
        with pytest.raises(SpecError) as info:
            parse_spec(data)
        assert str(info.value) == "expected str @ $.hostname"
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no group in tracebacks

    @pytest.mark.parametrize("data", [5, None, [], b"[]", "1"], ids=repr)
    def test_not_an_object(self, data: Any) -> None:
        with pytest.raises(SpecError) as info:
            parse_spec(data)
        assert str(info.value) == "expected an object @ $"

    def test_state_errors(self) -> None:
        with pytest.raises(SpecError) as info:
            parse_state(b'{"id": "x", "pid": "1"}')
        assert str(info.value) == "expected int @ $.pid"
        with pytest.raises(SpecError, match=r"^invalid JSON in state: .* @ \$$"):
            parse_state(b'{"id": ')


BAD_VECTOR_MESSAGES = {
    "freebsd-vnet-disable.json": "invalid jail vnet mode 'disable' @ $.freebsd.jail.vnet",
    "invalid-json.json": "invalid JSON in config: Expecting property name enclosed in double quotes at line 1 column 2 @ $",
    "linux-hugepage.json": "invalid hugepage page size '64kB' @ $.linux.resources.hugepageLimits[0].pageSize",
    "linux-netdevice.json": "expected str @ $.linux.netDevices.eth0.name",
    "linux-rdma.json": "expected int @ $.linux.resources.rdma.mlx5_1.hcaHandles",
}


def test_bad_vector_rejected(bad_vector: Path) -> None:
    """Every runtime-spec bad vector is refused, naming the field at fault."""
    with pytest.raises(SpecError) as info:
        parse_spec(bad_vector.read_bytes())
    assert str(info.value) == BAD_VECTOR_MESSAGES[bad_vector.name]


def test_validate_lists_every_problem() -> None:
    """validate() returns all problems; parse_spec raises the first."""
    spec = parse_spec(MINIMAL)
    spec.linux = model.Linux(namespaces=[model.Namespace(type="a"), model.Namespace(type="b")])
    assert [str(e) for e in model.validate(spec)] == [
        "unknown namespace type 'a' @ $.linux.namespaces[0].type",
        "unknown namespace type 'b' @ $.linux.namespaces[1].type",
    ]


# --- property: unknown keys anywhere survive a round trip -------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=10,
)
# Objects the model types (and so would split into fields + extras).
MODEL_OBJECTS = [
    [], ["process"], ["process", "user"], ["process", "capabilities"], ["root"], ["linux"],
    ["linux", "resources"], ["linux", "seccomp"], ["mounts", 0], ["linux", "namespaces", 0],
    ["linux", "seccomp", "syscalls", 0], ["hooks"], ["linux", "resources", "devices", 0],
]  # fmt: skip


_BASE = {
    "ociVersion": "1.3.0",
    "root": {"path": "rootfs"},
    "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "capabilities": {"bounding": []}},
    "mounts": [{"destination": "/proc", "type": "proc"}],
    "hooks": {"prestart": []},
    "linux": {
        "namespaces": [{"type": "pid"}],
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
    },
}


@settings(max_examples=150, deadline=None)
@given(
    where=st.sampled_from(MODEL_OBJECTS),
    extras=st.dictionaries(st.text(min_size=1, max_size=12), JSON, min_size=1, max_size=4),
)
def test_extras_survive_round_trip(where: list, extras: dict) -> None:
    """Random unknown keys added to any modelled object come back unchanged."""
    data = copy.deepcopy(_BASE)
    node: Any = data
    for key in where:
        node = node[key]
    known = {a.name for a in type(_model_at(where)).__attrs_attrs__}
    for key, value in extras.items():
        if key not in known:
            node[key] = value
    assert dump_spec(parse_spec(data)) == data


def test_converters_are_independent() -> None:
    """make_converter() builds a fresh converter that behaves like the module one."""
    assert make_converter().unstructure(parse_spec(_BASE)) == _BASE


def _model_at(where: list) -> Any:
    obj: Any = parse_spec(_BASE)
    for key in where:
        obj = obj[key] if isinstance(key, int) else getattr(obj, key)
    return obj


def test_json_key_named_extras_is_just_an_unknown_key() -> None:
    data = {**MINIMAL, "extras": {"a": 1}, "process": {**MINIMAL["process"], "extras": []}}
    assert dump_spec(parse_spec(data)) == data
