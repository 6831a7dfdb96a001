"""One spec model: the hook's precreate, the shim's create and `render` refuse the same malformed
specs with the same line (core.spec.validate), whatever the tier and on_error say."""

from __future__ import annotations

import json

import pytest

from helpers import docker_bundle, podman_precreate, runc_default
from test_cli import tg
from test_runtime_enforce import _bundle, _main, _policy_conf, env  # noqa: F401 (env: the shim fixture)
from test_stages import Hook, refusal_line
from tiergate.core.spec import validate
from tiergate.oci.errors import SpecError


def _first(key: str, value):
    """Put `value` first in the list at spec[*key.split('.')] (made when absent)."""
    def mutate(spec: dict) -> None:
        *parents, last = key.split(".")
        for k in parents:
            spec = spec.setdefault(k, {})
        spec[last] = [value, *(spec.get(last) or [])]
    return mutate


def _set(key: str, value):
    def mutate(spec: dict) -> None:
        *parents, last = key.split(".")
        for k in parents:
            spec = spec.setdefault(k, {})
        spec[last] = value
    return mutate


MALFORMED = [
    ("bogus namespace type", _first("linux.namespaces", {"type": "bogus"}),
     "unknown namespace type 'bogus' @ $.linux.namespaces[0].type"),
    ("namespace without a type", _first("linux.namespaces", {"path": "/proc/1/ns/net"}),
     "missing @ $.linux.namespaces[0].type"),
    ("options a string", _first("mounts", {"destination": "/data", "type": "bind", "source": "/srv",
                                           "options": "rbind,rw"}),
     "expected an array @ $.mounts[0].options"),
    ("mount source an int", _first("mounts", {"destination": "/data", "type": "bind", "source": 7}),
     "expected a string @ $.mounts[0].source"),
    ("capability set a string", _set("process.capabilities", {"bounding": "CAP_SYS_ADMIN"}),
     "expected an array @ $.process.capabilities.bounding"),
    ("noNewPrivileges a string", _set("process.noNewPrivileges", "false"),
     "expected a boolean @ $.process.noNewPrivileges"),
    ("annotation value an int", _set("annotations", {"io.tiergate.tier": 3}),
     "expected a string @ $.annotations['io.tiergate.tier']"),
    ("seccomp action unknown", _set("linux.seccomp", {"defaultAction": "SCMP_ACT_BOGUS"}),
     "unknown seccomp action 'SCMP_ACT_BOGUS' @ $.linux.seccomp.defaultAction"),
    ("seccomp arch unknown", _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["x86"]}),
     "unknown seccomp architecture 'x86' @ $.linux.seccomp.architectures[0]"),
    ("pids limit a bool", _set("linux.resources", {"pids": {"limit": True}}),
     "expected an integer @ $.linux.resources.pids.limit"),
    ("root not an object", _set("root", "rootfs"), "expected an object @ $.root"),
]
IDS = [m[0] for m in MALFORMED]
CASES = [m[1:] for m in MALFORMED]


@pytest.mark.parametrize(("mutate", "line"), CASES, ids=IDS)
def test_validate_names_the_field(mutate, line: str) -> None:
    for base in (runc_default(), podman_precreate(), docker_bundle()):
        validate(base)  # the engines' own specs pass
        mutate(base)
        with pytest.raises(SpecError) as info:
            validate(base)
        assert str(info.value) == line


@pytest.mark.parametrize(("mutate", "line"), CASES, ids=IDS)
def test_hook_precreate_refuses(tmp_path, mutate, line: str) -> None:
    hook = Hook(tmp_path)
    spec = hook.spec({"io.tiergate.tier": "baseline"})
    mutate(spec)
    res = hook.precreate(json.dumps(spec).encode())
    assert res.returncode == 0  # podman drops a failing precreate's output: the refusal is a spec
    assert refusal_line(json.loads(res.stdout)) == f"tiergate: error: {line}"


@pytest.mark.parametrize("on_error", ["allow", "refuse"])
@pytest.mark.parametrize(("mutate", "line"), CASES, ids=IDS)
def test_shim_create_refuses(env, capsys, mutate, line: str, on_error: str) -> None:  # noqa: F811
    _policy_conf(env, on_error)
    b = _bundle(env["tmp"], {"io.tiergate.tier": "capped"})
    spec = json.loads((b / "config.json").read_text())
    mutate(spec)
    (b / "config.json").write_text(json.dumps(spec))
    assert _main(env, ["create", "--bundle", str(b), "m1"]) == 1
    assert env["calls"] == []  # the real runtime never ran
    assert capsys.readouterr().err.splitlines() == [f"tiergate: error: {line}"]


@pytest.mark.parametrize(("mutate", "line"), CASES, ids=IDS)
def test_render_refuses(capsys, monkeypatch, tmp_path, mutate, line: str) -> None:
    from helpers import SHIPPED_POLICY

    monkeypatch.setenv("TIERGATE_POLICY", str(SHIPPED_POLICY))
    monkeypatch.setenv("TIERGATE_CACHE_DIR", str(tmp_path / "cache"))
    spec = docker_bundle()
    mutate(spec)
    code, out, err = tg(capsys, monkeypatch, ["render", "--tier", "baseline"], json.dumps(spec).encode())
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"tiergate: {line}"]


def test_what_the_runtime_accepts_passes() -> None:
    """Values runc accepts beside the runtime-spec's tables pass: "" propagation (the default), null
    for an absent field (Go's nil), a device cgroup rule without access."""
    spec = runc_default()
    spec["linux"]["rootfsPropagation"] = ""
    spec["linux"]["resources"] = {"devices": [{"allow": False}], "pids": None}
    spec["process"]["capabilities"]["ambient"] = None
    validate(spec)
    spec["linux"]["rootfsPropagation"] = "bogus"
    with pytest.raises(SpecError, match=r"unknown rootfs propagation 'bogus' @ \$\.linux\.rootfsPropagation"):
        validate(spec)
