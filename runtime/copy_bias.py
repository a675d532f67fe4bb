"""Copy bias: a small logit bonus for tokens that continue a span of the passages.

A small model given the answer in its sources still drifts into its own words, and the gold
fact goes with them. Pointer-style grounding in its cheapest form: when the answer's last
`n` tokens (n >= `min_match`, the longest that occurs) also occur in a passage, every token
that followed them there gets `bonus` added to its logit, so extending a quote is a little
likelier than leaving it. The sources are the passages alone: with the whole prompt as source
the model copied its instructions ("reply: I don't know") and the "[1] (file:lines)" headers.
The bonus depends only on the passages and the answer so far, so the speculative verifier
replays it row by row (runtime/repetition.RepetitionGuard applies it).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Longest answer suffix looked up in the prompt: longer matches add nothing, the continuation
# of a 4-token quote is already unambiguous.
MAX_MATCH = 4


class CopyBias:
    def __init__(self, sources: Sequence[Sequence[int]], bonus: float, min_match: int = 1):
        """sources: token ids of each passage (a span never runs from one passage into the next)."""
        self.bonus = bonus
        self.min_match = max(1, min_match)
        # n-gram of a source -> tokens that followed it there
        self._next: dict[tuple, set[int]] = {}
        for source in sources:
            tokens = [int(t) for t in source]
            for end in range(1, len(tokens)):
                for n in range(self.min_match, min(MAX_MATCH, end) + 1):
                    self._next.setdefault(tuple(tokens[end - n:end]), set()).add(tokens[end])

    @property
    def active(self) -> bool:
        return self.bonus > 0.0 and bool(self._next)

    def continuations(self, history: Sequence[int]) -> set[int]:
        """Tokens that extend the longest suffix of `history` found in the source."""
        for n in range(min(MAX_MATCH, len(history)), self.min_match - 1, -1):
            found = self._next.get(tuple(int(t) for t in history[len(history) - n:]))
            if found:
                return found
        return set()

    def apply(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        if not self.active:
            return logits
        tokens = self.continuations(history)
        if not tokens:
            return logits
        logits = logits.copy()
        logits[np.fromiter(tokens, dtype=np.int64, count=len(tokens))] += self.bonus
        return logits
