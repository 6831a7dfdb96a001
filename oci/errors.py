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
