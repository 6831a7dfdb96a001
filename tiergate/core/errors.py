"""Errors of the enforcement layer: one base; the CLI and stages turn each into one line."""

from __future__ import annotations


class TiergateError(Exception):
    """Base of every error tiergate raises on purpose (exit code 2: bad input or setup)."""


class FileError(TiergateError):
    """A file tiergate reads is broken: one line naming file, line and reason."""

    def __init__(self, reason: str, file: str = "<policy>", line: int | None = None) -> None:
        super().__init__(reason, file, line)
        self.reason = reason
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}"


class PolicyError(FileError):
    """The policy file is broken or contradicts itself: names file, line and reason."""


class EngineConfigError(FileError):
    """An engine's config file (daemon.json, config.toml, containers.conf) does not parse: install leaves it as it is."""


class Refusal(TiergateError):
    """Policy decided this container must not start (exit code 1)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason
