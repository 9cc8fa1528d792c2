"""Errors an author can act on: every one names file, line, column and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column in a rule file."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class RuleError:
    """One problem in one rule or value-set file."""

    file: str
    position: Position | None
    message: str

    def __str__(self) -> str:
        if self.position is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.position.line}:{self.position.column}: {self.message}"


class RuleFileError(Exception):
    """Raised when a guideline set cannot be built; carries every error found, not just the first."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
