"""Test tooling: check documents against the official runtime-spec JSON schema (draft-04).

The schema is the copy in tests/data (runtime-spec v1.3.0); jsonschema is a
test-only dependency.  Relative ``$ref``s ("defs.json#/...",
"config-linux.json#/linux") are resolved from a Registry of that directory,
never fetched.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from testdata import SCHEMA_DIR
from tiergate.oci.errors import key_path



def schema_dir() -> Path:
    """The schema files, from the repository's tests/data."""
    return SCHEMA_DIR


@functools.lru_cache(maxsize=4)
def _validator(directory: str, root: str) -> Any:
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    resources = []
    for path in sorted(Path(directory).glob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((path.name, Resource.from_contents(contents, default_specification=DRAFT4)))
    registry = Registry().with_resources(resources)
    schema = registry.contents(root)
    # Give the root its file name as base URI so relative refs land in the registry.
    return Draft4Validator({**schema, "id": root}, registry=registry)


def _path(parts: Any) -> str:
    path = "$"
    for part in parts:
        path = key_path(path, part)
    return path


def _validate(obj: dict, root: str) -> list[str]:
    validator = _validator(str(schema_dir()), root)
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{e.message} @ {_path(e.absolute_path)}" for e in errors]


def validate_config(obj: dict) -> list[str]:
    """Schema errors of a config.json value as ``msg @ $.path`` lines; empty means valid."""
    return _validate(obj, "config-schema.json")


def validate_state(obj: dict) -> list[str]:
    """Schema errors of a hook State value; empty means valid."""
    return _validate(obj, "state-schema.json")
