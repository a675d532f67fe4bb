"""The one error type the builder raises for bad input; the CLI prints it as one line."""
from __future__ import annotations

from pathlib import Path


class BuildError(Exception):
    """A build cannot go on because of one named input."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
