"""attrs models of the OCI runtime-spec (v1.3.0) config and of the hook State.

Models know nothing about JSON: ``tiergate.oci.convert`` does the format.
They are for code that validates once (policy check, render, explain, tests);
the hot path works on plain dicts and must not import this module.

Every field defaults to ``MISSING`` so that "absent" survives a round trip
distinct from ``None`` (JSON null, which Go engines emit for nil slices) and
from ``[]``.  Keys the model does not know are kept in ``extras``.  Integer
fields use range-checked NewTypes named after the schema's ``defs.json``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal, NewType, Optional

from attrs import define, field

from tiergate.oci.errors import SpecError, key_path


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing.MISSING
"""The key was absent from the document (not the same as null)."""

Int32 = NewType("Int32", int)
Int64 = NewType("Int64", int)
UInt16 = NewType("UInt16", int)
UInt32 = NewType("UInt32", int)
UInt64 = NewType("UInt64", int)

INT_RANGES: dict[Any, tuple[str, int, int]] = {
    int: ("int64", -(2**63), 2**63 - 1),  # Go int on 64-bit hosts
    Int32: ("int32", -(2**31), 2**31 - 1),
    Int64: ("int64", -(2**63), 2**63 - 1),
    UInt16: ("uint16", 0, 2**16 - 1),
    UInt32: ("uint32", 0, 2**32 - 1),
    UInt64: ("uint64", 0, 2**64 - 1),
}
"""Name and bounds of each integer type; the converter reads this table."""


def _opt() -> Any:
    return field(default=MISSING)


def _extras() -> Any:
    return field(factory=dict, kw_only=True)


# Optional[...] rather than "X | None": cattrs dispatches on the typing form.
S = Optional[str]
B = Optional[bool]
Strs = Optional[list[str]]


@define
class User:
    uid: Optional[UInt32] = _opt()
    gid: Optional[UInt32] = _opt()
    umask: Optional[UInt32] = _opt()
    additionalGids: Optional[list[UInt32]] = _opt()
    username: S = _opt()
    extras: dict[str, Any] = _extras()


@define
class Capabilities:
    bounding: Strs = _opt()
    effective: Strs = _opt()
    inheritable: Strs = _opt()
    permitted: Strs = _opt()
    ambient: Strs = _opt()
    extras: dict[str, Any] = _extras()


@define
class Rlimit:
    type: S = _opt()
    hard: Optional[UInt64] = _opt()
    soft: Optional[UInt64] = _opt()
    extras: dict[str, Any] = _extras()


@define
class ConsoleSize:
    height: Optional[UInt64] = _opt()
    width: Optional[UInt64] = _opt()
    extras: dict[str, Any] = _extras()


@define
class Process:
    """``ioPriority``, ``scheduler``, ``execCPUAffinity`` stay in extras."""

    terminal: B = _opt()
    consoleSize: Optional[ConsoleSize] = _opt()
    user: Optional[User] = _opt()
    args: Strs = _opt()
    commandLine: S = _opt()
    env: Strs = _opt()
    cwd: S = _opt()
    capabilities: Optional[Capabilities] = _opt()
    rlimits: Optional[list[Rlimit]] = _opt()
    noNewPrivileges: B = _opt()
    apparmorProfile: S = _opt()
    oomScoreAdj: Optional[int] = _opt()
    selinuxLabel: S = _opt()
    extras: dict[str, Any] = _extras()


@define
class Root:
    path: S = _opt()
    readonly: B = _opt()
    extras: dict[str, Any] = _extras()


@define
class IDMapping:
    containerID: Optional[UInt32] = _opt()
    hostID: Optional[UInt32] = _opt()
    size: Optional[UInt32] = _opt()
    extras: dict[str, Any] = _extras()


@define
class Mount:
    destination: S = _opt()
    type: S = _opt()
    source: S = _opt()
    options: Strs = _opt()
    uidMappings: Optional[list[IDMapping]] = _opt()
    gidMappings: Optional[list[IDMapping]] = _opt()
    extras: dict[str, Any] = _extras()


@define
class Hook:
    path: S = _opt()
    args: Strs = _opt()
    env: Strs = _opt()
    timeout: Optional[int] = _opt()
    extras: dict[str, Any] = _extras()


HookList = Optional[list[Hook]]


@define
class Hooks:
    """The six spec stages; podman's precreate is configured elsewhere, not in the spec."""

    prestart: HookList = _opt()
    createRuntime: HookList = _opt()
    createContainer: HookList = _opt()
    startContainer: HookList = _opt()
    poststart: HookList = _opt()
    poststop: HookList = _opt()
    extras: dict[str, Any] = _extras()


@define
class Namespace:
    type: S = _opt()
    path: S = _opt()
    extras: dict[str, Any] = _extras()


@define
class Device:
    type: S = _opt()
    path: S = _opt()
    major: Optional[Int64] = _opt()
    minor: Optional[Int64] = _opt()
    fileMode: Optional[UInt32] = _opt()
    uid: Optional[UInt32] = _opt()
    gid: Optional[UInt32] = _opt()
    extras: dict[str, Any] = _extras()


@define
class DeviceCgroup:
    allow: B = _opt()
    type: S = _opt()
    major: Optional[Int64] = _opt()
    minor: Optional[Int64] = _opt()
    access: S = _opt()
    extras: dict[str, Any] = _extras()


@define
class Pids:
    limit: Optional[Int64] = _opt()
    extras: dict[str, Any] = _extras()


@define
class Memory:
    limit: Optional[Int64] = _opt()
    reservation: Optional[Int64] = _opt()
    swap: Optional[Int64] = _opt()
    kernel: Optional[Int64] = _opt()
    kernelTCP: Optional[Int64] = _opt()
    swappiness: Optional[UInt64] = _opt()
    disableOOMKiller: B = _opt()
    useHierarchy: B = _opt()
    checkBeforeUpdate: B = _opt()
    extras: dict[str, Any] = _extras()


@define
class HugepageLimit:
    pageSize: S = _opt()
    limit: Optional[UInt64] = _opt()
    extras: dict[str, Any] = _extras()


@define
class Rdma:
    hcaHandles: Optional[UInt32] = _opt()
    hcaObjects: Optional[UInt32] = _opt()
    extras: dict[str, Any] = _extras()


@define
class Resources:
    """``cpu``, ``blockIO``, ``network``, ``unified`` stay in extras."""

    devices: Optional[list[DeviceCgroup]] = _opt()
    pids: Optional[Pids] = _opt()
    memory: Optional[Memory] = _opt()
    hugepageLimits: Optional[list[HugepageLimit]] = _opt()
    rdma: Optional[dict[str, Rdma]] = _opt()
    extras: dict[str, Any] = _extras()


@define
class SyscallArg:
    index: Optional[UInt32] = _opt()
    value: Optional[UInt64] = _opt()
    valueTwo: Optional[UInt64] = _opt()
    op: S = _opt()
    extras: dict[str, Any] = _extras()


@define
class SyscallRule:
    names: Strs = _opt()
    action: S = _opt()
    errnoRet: Optional[UInt32] = _opt()
    args: Optional[list[SyscallArg]] = _opt()
    extras: dict[str, Any] = _extras()


@define
class Seccomp:
    defaultAction: S = _opt()
    defaultErrnoRet: Optional[UInt32] = _opt()
    architectures: Strs = _opt()
    flags: Strs = _opt()
    listenerPath: S = _opt()
    listenerMetadata: S = _opt()
    syscalls: Optional[list[SyscallRule]] = _opt()
    extras: dict[str, Any] = _extras()


@define
class NetDevice:
    name: S = _opt()
    extras: dict[str, Any] = _extras()


@define
class Linux:
    """``intelRdt``, ``memoryPolicy``, ``personality``, ``timeOffsets`` stay in extras."""

    namespaces: Optional[list[Namespace]] = _opt()
    uidMappings: Optional[list[IDMapping]] = _opt()
    gidMappings: Optional[list[IDMapping]] = _opt()
    devices: Optional[list[Device]] = _opt()
    netDevices: Optional[dict[str, NetDevice]] = _opt()
    resources: Optional[Resources] = _opt()
    cgroupsPath: S = _opt()
    sysctl: Optional[dict[str, str]] = _opt()
    seccomp: Optional[Seccomp] = _opt()
    maskedPaths: Strs = _opt()
    readonlyPaths: Strs = _opt()
    mountLabel: S = _opt()
    rootfsPropagation: S = _opt()
    extras: dict[str, Any] = _extras()


@define
class Spec:
    """A config.json; other platforms (windows, solaris, vm, zos, freebsd) stay in extras."""

    ociVersion: S = _opt()
    hooks: Optional[Hooks] = _opt()
    annotations: Optional[dict[str, str]] = _opt()
    hostname: S = _opt()
    domainname: S = _opt()
    mounts: Optional[list[Mount]] = _opt()
    root: Optional[Root] = _opt()
    process: Optional[Process] = _opt()
    linux: Optional[Linux] = _opt()
    extras: dict[str, Any] = _extras()


@define
class State:
    """The container state a runtime hands to hooks on stdin."""

    ociVersion: S = _opt()
    id: S = _opt()
    status: S = _opt()
    pid: Optional[int] = _opt()
    bundle: S = _opt()
    annotations: Optional[dict[str, str]] = _opt()
    extras: dict[str, Any] = _extras()


# --- checks the types cannot express (runc's validator style) --------------

NAMESPACE_TYPES = frozenset({"mount", "pid", "network", "uts", "ipc", "user", "cgroup", "time"})
PROPAGATIONS = frozenset({"private", "shared", "slave", "unbindable", "rprivate", "rshared", "rslave", "runbindable"})
SECCOMP_ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
    }
)  # fmt: skip
SECCOMP_OPERATORS = frozenset(
    {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"}
)
FREEBSD_SHARING = {"vnet": frozenset({"new", "inherit"})}
"""FreeBSD jail fields whose mode may not be "disable" (the section is otherwise extras)."""

_HUGEPAGE = re.compile(r"[1-9][0-9]*[KMG]B")
_RLIMIT = re.compile(r"RLIMIT_[A-Z]+")
_DEVICE_TYPES = frozenset("cbup")
_CGROUP_DEVICE_TYPES = frozenset("acb")
_ACCESS = re.compile(r"[rwm]{0,3}")

Check = Callable[[Spec], Iterator[SpecError]]


def _show(value: object) -> str:
    return "missing" if value is MISSING else repr(value)


def _each(items: Any, path: str) -> Iterator[tuple[Any, str]]:
    for i, item in enumerate(items or ()):
        yield item, f"{path}[{i}]"


def check_namespaces(spec: Spec) -> Iterator[SpecError]:
    for ns, p in _each(spec.linux and spec.linux.namespaces, "$.linux.namespaces"):
        if ns is not None and ns.type not in NAMESPACE_TYPES:
            yield SpecError(f"unknown namespace type {_show(ns.type)}", p + ".type")


def check_rlimits(spec: Spec) -> Iterator[SpecError]:
    for rl, p in _each(spec.process and spec.process.rlimits, "$.process.rlimits"):
        if rl is not None and not (isinstance(rl.type, str) and _RLIMIT.fullmatch(rl.type)):
            yield SpecError(f"invalid rlimit type {_show(rl.type)}", p + ".type")


def check_propagation(spec: Spec) -> Iterator[SpecError]:
    prop = spec.linux.rootfsPropagation if spec.linux else MISSING
    if isinstance(prop, str) and prop not in PROPAGATIONS:
        yield SpecError(f"invalid rootfs propagation {prop!r}", "$.linux.rootfsPropagation")


def check_devices(spec: Spec) -> Iterator[SpecError]:
    for dev, p in _each(spec.linux and spec.linux.devices, "$.linux.devices"):
        if dev is not None and dev.type not in _DEVICE_TYPES:
            yield SpecError(f"invalid device type {_show(dev.type)}", p + ".type")
    res = spec.linux and spec.linux.resources
    for rule, p in _each(res and res.devices, "$.linux.resources.devices"):
        if rule is None:
            continue
        if isinstance(rule.type, str) and rule.type not in _CGROUP_DEVICE_TYPES:
            yield SpecError(f"invalid device cgroup type {rule.type!r}", p + ".type")
        if isinstance(rule.access, str) and not _ACCESS.fullmatch(rule.access):
            yield SpecError(f"invalid device cgroup access {rule.access!r}", p + ".access")


def check_hugepages(spec: Spec) -> Iterator[SpecError]:
    res = spec.linux and spec.linux.resources
    for hp, p in _each(res and res.hugepageLimits, "$.linux.resources.hugepageLimits"):
        if hp is not None and not (isinstance(hp.pageSize, str) and _HUGEPAGE.fullmatch(hp.pageSize)):
            yield SpecError(f"invalid hugepage page size {_show(hp.pageSize)}", p + ".pageSize")


def _bad_netdev_name(name: str) -> bool:
    # The kernel's dev_valid_name(): 1..15 bytes, not . or .., no / : or space.
    return not 0 < len(name.encode()) < 16 or name in (".", "..") or any(c in name for c in "/: \t\n")


def check_netdevices(spec: Spec) -> Iterator[SpecError]:
    devs = spec.linux.netDevices if spec.linux else MISSING
    for host, dev in (devs or {}).items():
        p = key_path("$.linux.netDevices", host)
        if _bad_netdev_name(host):
            yield SpecError(f"invalid network device name {host!r}", p)
        if dev is not None and isinstance(dev.name, str) and _bad_netdev_name(dev.name):
            yield SpecError(f"invalid network device name {dev.name!r}", p + ".name")


def check_seccomp(spec: Spec) -> Iterator[SpecError]:
    sc = spec.linux.seccomp if spec.linux else MISSING
    if not sc:
        return
    if sc.defaultAction not in SECCOMP_ACTIONS:
        yield SpecError(f"invalid seccomp action {_show(sc.defaultAction)}", "$.linux.seccomp.defaultAction")
    for rule, p in _each(sc.syscalls, "$.linux.seccomp.syscalls"):
        if rule is None:
            continue
        if rule.action not in SECCOMP_ACTIONS:
            yield SpecError(f"invalid seccomp action {_show(rule.action)}", p + ".action")
        for arg, ap in _each(rule.args, p + ".args"):
            if arg is not None and arg.op not in SECCOMP_OPERATORS:
                yield SpecError(f"invalid seccomp operator {_show(arg.op)}", ap + ".op")


def check_freebsd(spec: Spec) -> Iterator[SpecError]:
    freebsd = spec.extras.get("freebsd")
    jail = freebsd.get("jail") if isinstance(freebsd, dict) else None
    if not isinstance(jail, dict):
        return
    for key, allowed in FREEBSD_SHARING.items():
        if key in jail and jail[key] not in allowed:
            yield SpecError(f"invalid jail {key} mode {jail[key]!r}", f"$.freebsd.jail.{key}")


CHECKS: list[Check] = [
    check_namespaces,
    check_rlimits,
    check_propagation,
    check_devices,
    check_hugepages,
    check_netdevices,
    check_seccomp,
    check_freebsd,
]
"""Each check yields SpecErrors for values the types allow but the spec does not."""


def validate(spec: Spec) -> list[SpecError]:
    """Run every check in CHECKS; an empty list means the spec is acceptable."""
    return [err for check in CHECKS for err in check(spec)]
