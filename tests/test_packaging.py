"""The distribution ships every package directory (a regular install, not only an editable one)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_a_package() -> None:
    """setuptools finds packages by their __init__.py: a directory of modules without one
    would be left out of a regular (non-editable) install."""
    root = REPO / "tiergate"
    for py in root.rglob("*.py"):
        assert (py.parent / "__init__.py").exists(), py.parent


def test_import_name_is_not_a_bare_oci() -> None:
    """PyPI's `oci` is Oracle's SDK: every package lives under tiergate.*."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["tiergate*"]
    assert not (REPO / "oci").exists()


def test_debian_package_version_is_pyprojects() -> None:
    """debian/changelog's top entry (the .deb's version) is pyproject's version (what --version prints)."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"tiergate ({version}) ")


def test_repository_license_is_apache() -> None:
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
