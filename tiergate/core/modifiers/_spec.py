"""Typed access to a spec held as plain JSON: wrong types fail closed, naming the field."""

from __future__ import annotations

from tiergate.oci.errors import SpecError

_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer"}


def get(parent: dict, key: str, kind: type, path: str, create: bool = False):
    """parent[key] checked to be of `kind`; None when absent (or a new empty one when create)."""
    value = parent.get(key)
    if value is None:
        if create:
            value = parent[key] = kind()
        return value
    if type(value) is not kind:
        raise SpecError(f"expected {_TYPES[kind]}", f"{path}.{key}")
    return value


def strings(parent: dict, key: str, path: str) -> list[str] | None:
    value = get(parent, key, list, path)
    if value is not None:
        for i, item in enumerate(value):
            if type(item) is not str:
                raise SpecError("expected a string", f"{path}.{key}[{i}]")
    return value


def objects(parent: dict, key: str, path: str) -> list[dict]:
    value = get(parent, key, list, path) or []
    for i, item in enumerate(value):
        if type(item) is not dict:
            raise SpecError("expected an object", f"{path}.{key}[{i}]")
    return value
