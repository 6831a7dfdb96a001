"""Errors of the enforcement layer: one base; the CLI and stages turn each into one line."""

from __future__ import annotations


class TiergateError(Exception):
    """Base of every error tiergate raises on purpose (exit code 2: bad input or setup)."""


class PolicyError(TiergateError):
    """The policy file is broken or contradicts itself: names file, line and reason."""

    def __init__(self, reason: str, file: str = "<policy>", line: int | None = None) -> None:
        super().__init__(reason, file, line)
        self.reason = reason
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}"


class Refusal(TiergateError):
    """Policy decided this container must not start (exit code 1)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason
