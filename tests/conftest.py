"""Shared test data: the runtime-spec test vectors and the engine samples.

Tests ask for ``good_vector``, ``bad_vector``, ``sample_config`` or
``sample_state`` (a Path each) and are run once per file, with the file name
as the test id.  ``shared_dir`` is found from $TIERGATE_SHARED_DIR, else by
walking up from here to a ``shared/`` beside the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _shared_dir() -> Path:
    env = os.environ.get("TIERGATE_SHARED_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "oci-runtime-spec").is_dir():
            return parent / "shared"
    raise RuntimeError("shared/ test data not found: set TIERGATE_SHARED_DIR")


SHARED = _shared_dir()
SPEC_VECTORS = SHARED / "oci-runtime-spec" / "test" / "config"
SAMPLES = SHARED / "samples"

VECTORS = {
    "good_vector": sorted((SPEC_VECTORS / "good").glob("*.json")),
    "bad_vector": sorted((SPEC_VECTORS / "bad").glob("*.json")),
    "sample_config": sorted(p for p in SAMPLES.glob("*.json") if "state" not in p.name),
    "sample_state": sorted(p for p in SAMPLES.glob("*.json") if "state" in p.name),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, paths in VECTORS.items():
        if name in metafunc.fixturenames:
            assert paths, f"no files for {name} under {SHARED}"
            metafunc.parametrize(name, paths, ids=[p.name for p in paths])


@pytest.fixture
def shared_dir() -> Path:
    return SHARED
