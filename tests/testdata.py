"""Where the tests' data lives: tests/data/ in this repository, nothing outside it.

See tests/data/README.md for provenance (runtime-spec v1.3.0 release, engine samples).
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SPEC = DATA / "oci-runtime-spec"
SCHEMA_DIR = SPEC / "schema"
SPEC_VECTORS = SPEC / "test" / "config"
SAMPLES = DATA / "samples"
