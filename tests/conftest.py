"""Shared test data: the runtime-spec test vectors and the engine samples.

Tests ask for ``good_vector``, ``bad_vector``, ``sample_config`` or
``sample_state`` (a Path each) and are run once per file, with the file name
as the test id.  All of it lives in tests/data (see tests/data/README.md):
the tests read nothing outside the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testdata import DATA, SAMPLES, SPEC_VECTORS

VECTORS = {
    "good_vector": sorted((SPEC_VECTORS / "good").glob("*.json")),
    "bad_vector": sorted((SPEC_VECTORS / "bad").glob("*.json")),
    "sample_config": sorted(p for p in SAMPLES.glob("*.json") if "state" not in p.name),
    "sample_state": sorted(p for p in SAMPLES.glob("*.json") if "state" in p.name),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, paths in VECTORS.items():
        if name in metafunc.fixturenames:
            assert paths, f"no files for {name} under tests/data"
            metafunc.parametrize(name, paths, ids=[p.name for p in paths])


@pytest.fixture
def data_dir() -> Path:
    """tests/data: the runtime-spec copy and the engine samples."""
    return DATA


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory, monkeypatch):
    """Unit tests run as root in CI: a policy they compile without --cache-dir goes to a private
    cache dir, never the host's /var/cache/tiergate (a test of the default unsets this itself)."""
    monkeypatch.setenv("TIERGATE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tiergate-cache"))


@pytest.fixture(scope="session", autouse=True)
def warm_helpers(tmp_path_factory):
    """Launchers these tests install and run as root start warm helpers (engines/warm.py): the
    ones started by a launcher under this session's temp dir are stopped, by pid, at the end."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    from tiergate.engines import warm

    warm.stop("", under=base, say=lambda _line: None)
