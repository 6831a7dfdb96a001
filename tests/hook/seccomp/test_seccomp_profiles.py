"""Static proofs about the shipped seccomp profiles and their compiler."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from seccomp_testlib import bpf_program, bpf_verdict, config_with_seccomp

from spec_schema import validate_config
from tiergate.seccomp import profiles as P
from tiergate.seccomp.build import to_filter
from tiergate.seccomp.syscalls import check_names, syscall_number

PROFILES = P.list_profiles()
EXPECTED = {"baseline", "restricted", "isolated", "image-processor", "node-worker", "scheduler"}

# Syscalls Docker's default profile does not allow unconditionally for a
# container without extra capabilities (chroot aside: Docker grants
# CAP_SYS_CHROOT and so do we in baseline).  None may be allowed without
# conditions in any profile here.
DOCKER_BLOCKED = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "clone3", "create_module",
    "delete_module", "fanotify_init", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load",
    "kexec_load", "keyctl", "lookup_dcookie", "mbind", "migrate_pages", "mount", "mount_setattr",
    "move_mount", "move_pages", "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree",
    "perf_event_open", "pidfd_getfd", "pivot_root", "process_madvise", "query_module", "quotactl",
    "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setdomainname", "sethostname", "setns",
    "settimeofday", "stime", "swapoff", "swapon", "syslog", "sysfs", "_sysctl", "umount", "umount2",
    "unshare", "uselib", "userfaultfd", "ustat", "vhangup", "vm86", "vm86old", "adjtimex",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
]
# Allowed only under argument conditions, never unconditionally.
CONDITIONAL_ONLY = ["clone", "personality", "socket"]
# What restricted and everything above it must additionally refuse.
RESTRICTED_BLOCKED = ["ptrace", "process_vm_readv", "process_vm_writev", "chroot", "modify_ldt"]
STRICTER = {"restricted": "baseline", "isolated": "restricted", "image-processor": "isolated",
            "node-worker": "restricted", "scheduler": "restricted"}


def rules_for(oci: dict, name: str) -> list[dict]:
    return [r for r in oci["syscalls"] if name in r["names"]]


def unconditional_allow(oci: dict) -> set[str]:
    return {n for r in oci["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
            for n in r["names"]}


def allowed_somehow(oci: dict) -> set[str]:
    return {n for r in oci["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}


def test_expected_profiles_exist():
    assert EXPECTED <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_compiles_to_schema_valid_oci(name):
    oci = P.compile_profile(name)
    errors = validate_config(config_with_seccomp(oci))
    assert not errors, "\n".join(errors)
    # only OCI keys, no source-format leftovers
    assert set(oci) <= {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls"}
    for rule in oci["syscalls"]:
        assert set(rule) <= {"names", "action", "errnoRet", "args"}
        for arg in rule.get("args", []):
            assert set(arg) <= {"index", "value", "valueTwo", "op"}
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO" and oci["defaultErrnoRet"] == 38


@pytest.mark.parametrize("name", PROFILES)
def test_deterministic_and_merged(name):
    a = json.dumps(P.compile_profile(name))
    b = json.dumps(P.compile_profile(name))
    assert a == b
    oci = json.loads(a)
    keys = [(r["action"], r.get("errnoRet"), json.dumps(r.get("args"))) for r in oci["syscalls"]]
    assert len(keys) == len(set(keys)), "rules with the same action and args must be merged"
    for r in oci["syscalls"]:
        assert r["names"] == sorted(set(r["names"]))
    assert len(oci["syscalls"]) <= 20


@pytest.mark.parametrize("name", PROFILES)
def test_every_name_known_to_libseccomp(name):
    src_names = set()
    for pname in P.resolve(name)["chain"]:
        src = P.load_source(pname)
        for g in src.get("groups", []):
            src_names.update(g["names"])
        src_names.update(src.get("remove", []))
    assert check_names(src_names) == []


@pytest.mark.parametrize("name", PROFILES)
def test_every_group_documented(name):
    src = P.load_source(name)
    assert src.get("description")
    for g in src.get("groups", []):
        assert g["why"].strip() and "\n" not in g["why"], g["name"]


@pytest.mark.parametrize("name", PROFILES)
def test_builds_for_every_listed_architecture(name):
    oci = P.compile_profile(name)
    to_filter(oci)
    to_filter(oci, all_arches=True)  # what runc does: conflicts on any ABI would raise


@pytest.mark.parametrize("name", PROFILES)
def test_docker_blocked_stays_blocked(name):
    oci = P.compile_profile(name)
    free = unconditional_allow(oci)
    assert not free & set(DOCKER_BLOCKED)
    assert not free & set(CONDITIONAL_ONLY)
    assert not allowed_somehow(oci) & set(DOCKER_BLOCKED)


@pytest.mark.parametrize("name", [n for n in PROFILES if n != "baseline"])
def test_restricted_and_above_block_more(name):
    oci = P.compile_profile(name)
    assert not allowed_somehow(oci) & set(RESTRICTED_BLOCKED)
    pers = rules_for(oci, "personality")
    assert {r["args"][0]["value"] for r in pers if r["action"] == "SCMP_ACT_ALLOW"} == {0, 8, 0xFFFFFFFF}


@pytest.mark.parametrize("child,parent", sorted(STRICTER.items()))
def test_children_allow_no_more_than_parents(child, parent):
    c, p = P.compile_profile(child), P.compile_profile(parent)
    assert unconditional_allow(c) <= unconditional_allow(p)
    assert allowed_somehow(c) <= allowed_somehow(p)


@pytest.mark.parametrize("name", PROFILES)
def test_clone3_enosys_and_io_uring_denied(name):
    """ENOSYS (glibc then falls back to clone), by the default action: rules repeating it are left out."""
    oci = P.compile_profile(name)
    assert (oci["defaultAction"], oci["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    prog = bpf_program(oci)
    for n in ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert not rules_for(oci, n)
        assert bpf_verdict(prog, "SCMP_ARCH_X86_64", syscall_number(n, "SCMP_ARCH_X86_64")) == 0x00050000 | 38, n


@pytest.mark.parametrize("name", PROFILES)
def test_clone_never_creates_namespaces(name):
    oci = P.compile_profile(name)
    for r in rules_for(oci, "clone"):
        if r["action"] != "SCMP_ACT_ALLOW":
            continue
        masked = [a for a in r["args"] if a["index"] == 0 and a["op"] == "SCMP_CMP_MASKED_EQ"]
        assert any(a["value"] & 0x7E020000 == 0x7E020000 and a["valueTwo"] & 0x7E020000 == 0 for a in masked), r


def test_network_free_profiles_allow_only_af_unix():
    for name in ("isolated", "image-processor"):
        oci = P.compile_profile(name)
        assert "SCMP_ARCH_X86" not in oci["architectures"]  # socketcall would bypass the filter
        assert "socketcall" not in allowed_somehow(oci)
        for n in ("socket", "socketpair"):
            allow = [r for r in rules_for(oci, n) if r["action"] == "SCMP_ACT_ALLOW"]
            assert [r["args"] for r in allow] == [[{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]]
        assert not {"mknod", "mknodat"} & allowed_somehow(oci)


def test_node_worker_clone_rule_is_one_anded_condition():
    oci = P.compile_profile("node-worker")
    allow = [r for r in rules_for(oci, "clone") if r["action"] == "SCMP_ACT_ALLOW"]
    assert [r["args"] for r in allow] == [[
        {"index": 0, "value": 0x7E030000, "valueTwo": 0x10000, "op": "SCMP_CMP_MASKED_EQ"}]]
    for n in ("fork", "vfork"):
        (rule,) = rules_for(oci, n)
        assert rule["action"] == "SCMP_ACT_ERRNO" and rule["errnoRet"] == 1


def test_extra_deny():
    oci = P.compile_profile("baseline", extra_deny=["ptrace", "clone", "mknod"])
    for n in ("ptrace", "clone", "mknod"):
        (rule,) = rules_for(oci, n)
        assert rule["action"] == "SCMP_ACT_ERRNO" and rule["errnoRet"] == 1 and not rule.get("args")
    to_filter(oci, all_arches=True)
    with pytest.raises(P.SeccompProfileError, match="not_a_syscall"):
        P.compile_profile("baseline", extra_deny=["not_a_syscall"])


def test_profiles_module_imports_only_stdlib():
    code = ("import sys; import tiergate.seccomp.profiles as p; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyseccomp', 'attrs', 'cattrs', 'jsonschema')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_explain_lists_groups():
    groups = P.explain("node-worker")
    names = {g["group"] for g in groups}
    assert {"fork-eperm", "clone-threads-only", "file-io", "debugging-eperm"} <= names
    assert all(g["why"] for g in groups)


# --- errors -----------------------------------------------------------------

def write(tmp_path, name, obj):
    (tmp_path / f"{name}.json").write_text(json.dumps(obj))


ROOT = {"description": "r", "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "groups": [{"name": "g", "why": "w", "names": ["read", "write", "socketcall"]}]}


def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("obj,needle", [
    ({"extends": "nope"}, "unknown seccomp profile 'nope'"),
    ({"extends": "child"}, "cycle"),
    ({"extends": "root", "groups": [{"name": "g2", "why": "w", "names": ["reed"]}]}, "unknown syscall names: reed"),
    ({"extends": "root", "groups": [{"name": "g2", "names": ["read"]}]}, "why"),
    ({"extends": "root", "groups": [{"name": "g2", "why": "w", "names": ["read"], "action": "SCMP_ACT_NOPE"}]}, "unknown action"),
    ({"extends": "root", "remove": ["openat"]}, "remove names no inherited rule: openat"),
    ({"extends": "root", "groups": [{"name": "g2", "why": "w", "names": ["read"], "extra": 1}]}, "unknown keys"),
    ({"extends": "root", "groups": [
        {"name": "a", "why": "w", "names": ["clone"]},
        {"name": "b", "why": "w", "names": ["clone"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "op": "SCMP_CMP_MASKED_EQ", "value": "0x20000", "valueTwo": "0x20000"}]}]},
     "unconditional rule and other rules"),
    ({"extends": "root", "remove": ["socketcall"], "groups": [
        {"name": "a", "why": "w", "names": ["socket"], "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1}]}]},
     "SCMP_ARCH_X86"),
])
def test_errors_are_clear(tmp_path, obj, needle):
    write(tmp_path, "root", ROOT)
    write(tmp_path, "child", obj)
    with pytest.raises(P.SeccompProfileError) as exc:
        P.compile_profile("child", search_dirs=[tmp_path])
    assert needle in one_line(exc)


def test_unknown_profile_and_search_dirs(tmp_path):
    with pytest.raises(P.SeccompProfileError, match="unknown seccomp profile"):
        P.compile_profile("no-such-profile")
    write(tmp_path, "root", ROOT)
    write(tmp_path, "kid", {"extends": "root", "remove": ["write"],
                            "groups": [{"name": "x", "why": "w", "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                                        "names": ["read"]}]})
    oci = P.compile_profile("kid", search_dirs=[tmp_path])
    assert oci["syscalls"] == [
        {"names": ["socketcall"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
    ]
    assert P.list_profiles([tmp_path]) == ["kid", "root"]


def test_check_names():
    assert check_names(["read", "arch_prctl", "mmap2", "bogus_call", "vm86"]) == ["bogus_call"]
    assert check_names(["vm86"], arches=("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64")) == ["vm86"]


def test_schema_validator_rejects_bad_seccomp():
    bad = {"defaultAction": "NOPE", "architectures": ["SCMP_ARCH_BOGUS"],
           "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}
    assert len(validate_config(config_with_seccomp(bad))) == 3
