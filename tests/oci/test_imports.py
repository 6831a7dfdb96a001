"""Import boundaries: the hot-path modules must not pull in attrs/cattrs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tiergate.oci

HOT = "import tiergate.oci.jsonio, tiergate.oci.bundle, tiergate.oci.stdio, sys; "


def test_hot_path_imports_no_attrs() -> None:
    """Importing attrs costs ~23 ms, more than the start-time budget allows."""
    code = HOT + "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'attrs', 'attr', 'cattrs', 'jsonschema'}); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_init_is_empty() -> None:
    """tiergate/oci/__init__.py must stay free of eager imports."""
    init = Path(tiergate.oci.__file__)
    code = [line for line in init.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert all(not line.startswith(("import ", "from ")) for line in code), code


def test_start_path_imports_no_typing() -> None:
    """Annotations on the start path are for mypy only (under TYPE_CHECKING): typing costs ms to import."""
    code = ("import sys, tiergate.hook.stages, tiergate.shim.runtime; "
            "assert 'typing' not in sys.modules, 'the start path imports typing'")
    subprocess.run([sys.executable, "-c", code], check=True)
