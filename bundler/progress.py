"""How long build steps report progress without printing: the CLI supplies the sink."""
from __future__ import annotations

from typing import Callable, Optional, Protocol


class Progress(Protocol):
    def __call__(self, step: str, done: int, total: Optional[int]) -> None: ...


def no_progress(step: str, done: int, total: Optional[int]) -> None:
    """Progress sink for library callers that do not want reports."""


ProgressCallback = Callable[[str, int, Optional[int]], None]
