"""Typed access to a spec held as plain JSON: wrong types fail closed, naming the field."""

from __future__ import annotations

from tiergate.oci.errors import SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
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
