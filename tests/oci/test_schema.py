"""tests/spec_schema.py: the official draft-04 schema, refs resolved locally."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import spec_schema as schema


def test_good_vector_is_valid(good_vector: Path) -> None:
    assert schema.validate_config(json.loads(good_vector.read_bytes())) == []


def test_sample_config_is_valid(sample_config: Path) -> None:
    """The shipped engine samples happen to be schema-valid (engines need not be)."""
    assert schema.validate_config(json.loads(sample_config.read_bytes())) == []


def test_sample_state_is_valid(sample_state: Path) -> None:
    assert schema.validate_state(json.loads(sample_state.read_bytes())) == []


def test_bad_vector_is_invalid(bad_vector: Path) -> None:
    if bad_vector.name == "invalid-json.json":  # refused by the parser before any schema
        with pytest.raises(ValueError):
            json.loads(bad_vector.read_bytes())
        return
    errors = schema.validate_config(json.loads(bad_vector.read_bytes()))
    assert len(errors) == 1 and " @ $." in errors[0]


MUTATIONS = [
    ("seccomp action via cross-file ref", lambda d: d["linux"]["seccomp"].update(defaultAction="DENY"),
     "'DENY' is not one of ", "@ $.linux.seccomp.defaultAction"),
    ("uid below uint32 via defs.json", lambda d: d["process"]["user"].update(uid=-1),
     "-1 is less than the minimum of 0", "@ $.process.user.uid"),
    ("root without path", lambda d: d["root"].pop("path"), "'path' is a required property", "@ $.root"),
    ("sysctl key with dot", lambda d: d["linux"]["sysctl"].update({"net.ipv4.x": 1}),
     "1 is not of type 'string'", "@ $.linux.sysctl['net.ipv4.x']"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "start", "end"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_mutated_example_fails(data_dir: Path, mutate, start: str, end: str) -> None:
    data = json.loads((data_dir / "oci-runtime-spec/test/config/good/spec-example.json").read_bytes())
    data = copy.deepcopy(data)
    mutate(data)
    errors = schema.validate_config(data)
    assert len(errors) == 1
    assert errors[0].startswith(start) and errors[0].endswith(end)


def test_schema_is_the_repositorys_copy() -> None:
    """The schema comes from tests/data, never from a directory outside the repository."""
    repo = Path(__file__).resolve().parents[2]
    assert schema.schema_dir().resolve().is_relative_to(repo)
    assert (schema.schema_dir() / "config-schema.json").is_file()
