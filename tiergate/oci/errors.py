"""Errors of the OCI layer: one base, and a SpecError that names the field."""

from __future__ import annotations


class OciError(Exception):
    """Base of every error raised by tiergate.oci."""


class SpecError(OciError):
    """A spec, state or bundle file is not what the runtime-spec allows.

    ``str()`` gives one line in cattrs' style: ``reason @ $.json.path``.
    """

    def __init__(self, reason: str, path: str = "$") -> None:
        super().__init__(reason, path)
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return f"{self.reason} @ {self.path}"


class BundleError(OciError):
    """A bundle file cannot be read or written safely (symlink, not a file, I/O).

    The message is one line and names the file, e.g.
    ``refusing to follow symlink /b/config.json``.
    """


def key_path(path: str, key: object) -> str:
    """Append ``key`` to a ``$``-path: ``.name`` for identifiers, ``[3]`` or ``['a.b']`` else.

    Shared so that jsonio (duplicate keys) and the spec validator (core/spec.py)
    print the same path for the same place.
    """
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"
