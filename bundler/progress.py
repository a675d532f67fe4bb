"""How build steps report progress without printing: the CLI supplies the sink."""
from __future__ import annotations

from typing import Callable, Optional

# step name, units done, units in all (None when unknown)
ProgressCallback = Callable[[str, int, Optional[int]], None]


def no_progress(step: str, done: int, total: Optional[int]) -> None:
    """Progress sink for library callers that do not want reports."""
