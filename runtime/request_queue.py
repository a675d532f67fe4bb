"""Admission to the one shared model: one request generates at a time, a bounded number wait.

The model holds a single KV cache, so generations must not interleave. Rather than let
an unbounded number of HTTP threads pile up behind it, a request that finds the queue
full is refused at once (429), and one that waits longer than the timeout gives up (503).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class QueueFull(Exception):
    """Too many requests are already waiting for the model."""


class QueueTimeout(Exception):
    """The model did not become free in time."""


class ModelQueue:
    def __init__(self, max_waiting: int, timeout_s: float):
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the model for the body of the with-block; raise QueueFull / QueueTimeout."""
        with self._cond:
            if self._busy:
                if self._waiting >= self.max_waiting:
                    raise QueueFull(f"{self._waiting} requests are already waiting for the model")
                self._waiting += 1
                try:
                    if not self._cond.wait_for(lambda: not self._busy, timeout=self.timeout_s):
                        raise QueueTimeout(f"the model stayed busy for {self.timeout_s:g} s")
                finally:
                    self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify()
