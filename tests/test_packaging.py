"""The distribution ships every package directory (a regular install, not only an editable one)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject() -> None:
    """Each directory with an __init__.py under oci/, hook/ and configs/ is a listed tiergate.* package."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    roots = {src: pkg for pkg, src in tool["package-dir"].items()}
    found = set()
    for src, pkg in roots.items():
        for init in (REPO / src).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / src)
            found.add(".".join([pkg, *rel.parts]))
    assert found == listed


def test_import_name_is_not_a_bare_oci() -> None:
    """PyPI's `oci` is Oracle's SDK: every package lives under tiergate.*."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p.startswith("tiergate.") for p in tool["packages"])


def test_debian_package_version_is_pyprojects() -> None:
    """debian/changelog's top entry (the .deb's version) is pyproject's version (what --version prints)."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"tiergate ({version}) ")


def test_repository_license_is_apache() -> None:
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
