"""The one spec model: a spec stays plain JSON, read through these typed accessors, and
`validate` refuses, before anything reads it, a spec whose fields tiergate reads are malformed.

Every path (the hook's stages, the shim's create/run/restore, `render`/`explain`) calls
`validate` first, so each refuses the same specs with the same line (``reason @ $.field``).
Fields tiergate does not read pass through unchecked: they are the runtime's business.
Wrong types fail closed, naming the field: a string where an array belongs is never split
into characters. null counts as absent (Go engines write null for nil slices).
"""

from __future__ import annotations

from tiergate.core.names import NAMESPACES, SECCOMP_ACTIONS, SECCOMP_ARCHES, SECCOMP_OPERATORS
from tiergate.oci.errors import SpecError, key_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer"}


def get(parent: dict[str, Any], key: str, kind: type, path: str, create: bool = False) -> Any:
    """parent[key] checked to be of `kind`; None when absent (or a new empty one when create)."""
    value = parent.get(key)
    if value is None:
        if create:
            value = parent[key] = kind()
        return value
    if type(value) is not kind:
        raise SpecError(f"expected {_TYPES[kind]}", f"{path}.{key}")
    return value


def strings(parent: dict[str, Any], key: str, path: str) -> list[str] | None:
    value: list[str] | None = get(parent, key, list, path)
    if value is not None:
        for i, item in enumerate(value):
            if type(item) is not str:
                raise SpecError("expected a string", f"{path}.{key}[{i}]")
    return value


def objects(parent: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    value = get(parent, key, list, path) or []
    for i, item in enumerate(value):
        if type(item) is not dict:
            raise SpecError("expected an object", f"{path}.{key}[{i}]")
    return value


# -- the fields tiergate reads, and what each must be ---------------------------------------
# A schema is a type (str, bool, int), a dict {key: schema} for an object, ("array", schema),
# ("map", schema[, key schema]) for an object of any keys, ("one of", names, what) for a string from a table,
# or ("string", test, what) for a string the test accepts. A key written "!key" must be present.
# Beyond the fields tiergate reads: the value rules of the runtime-spec's own bad vectors.

def _one_of(names: Iterable[str], what: str) -> tuple[str, frozenset[str], str]:
    return ("one of", frozenset(names), what)


def _netdev_name(name: str) -> bool:
    """The kernel's dev_valid_name(): 1..15 bytes, not . or .., no / : or whitespace."""
    return 0 < len(name.encode()) < 16 and name not in (".", "..") and not any(c in name for c in "/: \t\n")


def _page_size(size: str) -> bool:
    return size[-2:] in ("KB", "MB", "GB") and size[:-2].isascii() and size[:-2].isdigit() and size[0] != "0"


def _access(access: str) -> bool:
    return len(access) <= 3 and set(access) <= {"r", "w", "m"}


def _rlimit(kind: str) -> bool:
    return kind.startswith("RLIMIT_") and kind[7:].isalpha() and kind[7:].isupper()


_STRINGS = ("array", str)
PROPAGATIONS = ("private", "shared", "slave", "unbindable", "rprivate", "rshared", "rslave", "runbindable")
_HOOKS = ("array", {"path": str, "args": _STRINGS, "env": _STRINGS, "timeout": int})
_NETDEV = ("string", _netdev_name, "network device name")
_DEVICE_RULE = {"allow": bool, "type": _one_of("acb", "device cgroup type"), "major": int, "minor": int,
                "access": ("string", _access, "device cgroup access")}
_SECCOMP = {
    "!defaultAction": _one_of(SECCOMP_ACTIONS, "seccomp action"),
    "defaultErrnoRet": int,
    "architectures": ("array", _one_of(SECCOMP_ARCHES, "seccomp architecture")),
    "flags": _STRINGS,
    "listenerPath": str,
    "syscalls": ("array", {
        "!names": _STRINGS,
        "!action": _one_of(SECCOMP_ACTIONS, "seccomp action"),
        "errnoRet": int,
        "args": ("array", {"!index": int, "value": int, "valueTwo": int,
                           "!op": _one_of(SECCOMP_OPERATORS, "seccomp operator")}),
    }),
}
SCHEMA = {
    "annotations": ("map", str),
    "root": {"path": str, "readonly": bool},
    "mounts": ("array", {"destination": str, "type": str, "source": str, "options": _STRINGS}),
    "hooks": {"prestart": _HOOKS, "createRuntime": _HOOKS, "createContainer": _HOOKS,
              "startContainer": _HOOKS, "poststart": _HOOKS, "poststop": _HOOKS},
    "process": {
        "capabilities": {name: _STRINGS for name in ("bounding", "effective", "inheritable", "permitted", "ambient")},
        "noNewPrivileges": bool,
        "apparmorProfile": str,
        "rlimits": ("array", {"!type": ("string", _rlimit, "rlimit type"), "hard": int, "soft": int}),
    },
    "linux": {
        "namespaces": ("array", {"!type": _one_of(NAMESPACES, "namespace type"), "path": str}),
        "devices": ("array", {"!type": _one_of("cbup", "device type"), "path": str, "major": int, "minor": int}),
        "resources": {"devices": ("array", _DEVICE_RULE), "pids": {"limit": int},
                      "hugepageLimits": ("array", {"!pageSize": ("string", _page_size, "hugepage page size"),
                                                   "limit": int}),
                      "rdma": ("map", {"hcaHandles": int, "hcaObjects": int})},
        "netDevices": ("map", {"name": _NETDEV}, _NETDEV),
        "rootfsPropagation": _one_of(("", *PROPAGATIONS), "rootfs propagation"),  # "": the runtime's default
        "sysctl": ("map", str),
        "seccomp": _SECCOMP,
        "maskedPaths": _STRINGS,
        "readonlyPaths": _STRINGS,
    },
    "freebsd": {"jail": {"vnet": _one_of(("new", "inherit"), "jail vnet mode")}},
}


def validate(spec: object) -> None:
    """Raise SpecError (one line: ``reason @ $.field``) for the first field SCHEMA refuses."""
    if type(spec) is not dict:
        raise SpecError("expected an object", "$")
    _object(spec, SCHEMA, "$")


# A field's place is built only for the error: (parent place, ".key" | index | map key).
def _where(at: str | tuple[Any, Any]) -> str:
    if isinstance(at, str):
        return at
    parent, piece = at
    if type(piece) is int:
        return f"{_where(parent)}[{piece}]"
    if type(piece) is tuple:  # a map's key
        return key_path(_where(parent), piece[0])
    return _where(parent) + str(piece)


def _object(value: dict[str, Any], fields: dict[str, Any], at: Any) -> None:
    # SCHEMA as written, not compiled first: a start validates one spec, and compiling the
    # schema cost more (~0.5 M instructions) than reading "!" off each key does.
    for name, schema in fields.items():
        required = name[0] == "!"
        key = name[1:] if required else name
        item = value.get(key)
        if item is None:
            if required:
                raise SpecError("missing", _where((at, "." + key)))
        elif type(schema) is type:
            if type(item) is not schema:
                raise SpecError(f"expected {_TYPES[schema]}", _where((at, "." + key)))
        else:
            _check(item, schema, (at, "." + key))


def _check(value: object, schema: Any, at: Any) -> None:
    if type(schema) is type:
        if type(value) is not schema:
            raise SpecError(f"expected {_TYPES[schema]}", _where(at))
        return
    if type(schema) is dict:  # an object
        if type(value) is not dict:
            raise SpecError("expected an object", _where(at))
        _object(value, schema, at)
        return
    kind = schema[0]
    if kind == "one of":
        if type(value) is not str or value not in schema[1]:
            raise SpecError(f"unknown {schema[2]} {_show(value)}", _where(at))
    elif kind == "string":
        if type(value) is not str or not schema[1](value):
            raise SpecError(f"invalid {schema[2]} {_show(value)}", _where(at))
    else:  # "array" or "map"
        array = kind == "array"
        items: Iterable[tuple[Any, Any]]
        if array and type(value) is list:
            items = enumerate(value)
        elif not array and type(value) is dict:
            items = value.items()
        else:
            raise SpecError(f"expected {'an array' if array else 'an object'}", _where(at))
        inner = schema[1]
        if type(inner) is type:  # the common case (names, options, annotations): no call per item
            for i, item in items:
                if type(item) is not inner:
                    raise SpecError(f"expected {_TYPES[inner]}", _where((at, i if array else (i,))))
        else:
            for i, item in items:
                _check(item, inner, (at, i if array else (i,)))
        if len(schema) > 2 and type(value) is dict:  # the keys of a map
            for key in value:
                _check(key, schema[2], (at, (key,)))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
