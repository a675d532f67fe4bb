"""The one error type the builder raises for bad input; build.py prints it as one line.

It is a runtime.errors.UserError, the product's one base class for mistakes a user can fix, so the
builder and the executable share one boundary and one exit code (runtime/errors.py)."""
from __future__ import annotations

from pathlib import Path

from runtime.errors import UserError


class BuildError(UserError):
    """A build cannot go on because of one named input."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
