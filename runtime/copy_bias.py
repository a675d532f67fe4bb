"""Copy bias: a small logit bonus for tokens that continue a span of the passages.

A small model given the answer in its sources still drifts into its own words, and the gold
fact goes with them. Pointer-style grounding in its cheapest form: when the answer's last
`n` tokens (n >= `min_match`, the longest that occurs) also occur in a passage, every token
that followed them there gets `bonus` added to its logit, so extending a quote is a little
likelier than leaving it. The sources are the passages alone: with the whole prompt as source
the model copied its instructions ("reply: I don't know") and the "[1] (file:lines)" headers.

Focus (extract, then copy): the few sentences most likely to hold the answer
(runtime/answer_focus.py) get `focus_bonus` on top, for the tokens that continue them and, at
the answer's start, for their first tokens, so the answer tends to open by quoting them.

The bonus depends only on the passages and the answer so far, so the speculative verifier
replays it row by row (runtime/repetition.RepetitionGuard applies it).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Longest answer suffix looked up in the prompt: longer matches add nothing, the continuation
# of a 4-token quote is already unambiguous.
MAX_MATCH = 4


class _SpanIndex:
    """n-grams of some token sequences -> the tokens that followed them there."""

    def __init__(self, sources: Sequence[Sequence[int]], min_match: int):
        self.min_match = min_match
        self.next: dict[tuple, set[int]] = {}
        self.starts: set[int] = set()
        for source in sources:
            tokens = [int(t) for t in source]
            if tokens:
                self.starts.add(tokens[0])
            for end in range(1, len(tokens)):
                for n in range(min_match, min(MAX_MATCH, end) + 1):
                    self.next.setdefault(tuple(tokens[end - n:end]), set()).add(tokens[end])

    def continuations(self, history: Sequence[int]) -> set[int]:
        for n in range(min(MAX_MATCH, len(history)), self.min_match - 1, -1):
            found = self.next.get(tuple(int(t) for t in history[len(history) - n:]))
            if found:
                return found
        return set()


class CopyBias:
    def __init__(self, sources: Sequence[Sequence[int]], bonus: float, min_match: int = 1,
                 focus: Sequence[Sequence[int]] = (), focus_bonus: float = 0.0):
        """sources: token ids of each passage (a span never runs from one passage into the next);
        focus: token ids of each focus sentence, favoured by `focus_bonus` more."""
        self.bonus = bonus
        self.min_match = max(1, min_match)
        self.focus_bonus = focus_bonus
        self._passages = _SpanIndex(sources, self.min_match)
        self._focus = _SpanIndex(focus if focus_bonus > 0.0 else (), self.min_match)

    @property
    def active(self) -> bool:
        return (self.bonus > 0.0 and bool(self._passages.next)) or bool(self._focus.starts)

    def continuations(self, history: Sequence[int]) -> set[int]:
        """Tokens that extend the longest suffix of `history` found in the passages."""
        return self._passages.continuations(history)

    def focus_continuations(self, history: Sequence[int]) -> set[int]:
        """Tokens that start a focus sentence (an empty answer) or extend the longest suffix of
        `history` found in one."""
        return set(self._focus.starts) if not history else self._focus.continuations(history)

    def apply(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        if not self.active:
            return logits
        boosts = [(self.continuations(history), self.bonus)] if self.bonus > 0.0 else []
        if self.focus_bonus > 0.0:
            boosts.append((self.focus_continuations(history), self.focus_bonus))
        boosts = [(tokens, bonus) for tokens, bonus in boosts if tokens]
        if not boosts:
            return logits
        logits = logits.copy()
        for tokens, bonus in boosts:
            logits[np.fromiter(tokens, dtype=np.int64, count=len(tokens))] += bonus
        return logits
