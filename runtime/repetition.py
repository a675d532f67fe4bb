"""Repetition guard for generated answers: the DRY penalty and a hard stop on a looping n-gram.

DRY ("don't repeat yourself", as llama.cpp implements it): a token that would extend a
sequence which already occurred earlier in the answer gets its logit lowered by
`multiplier * base ** (length - allowed_length)`, where `length` is how many tokens of that
earlier sequence the answer's end already repeats (only when `length >= allowed_length`).
Short repeats ("of the", a citation like "[1]") cost nothing; a sentence said a second time
gets costlier with every token. Only the answer is scanned, not the prompt: quoting the
sources is what a grounded answer should do.

The hard stop ends the answer before a token that would make one n-gram of `loop_ngram`
words occur `loop_repeats` times, so no stopped answer ever holds that many copies. Its words are
tokens as the tokenizer's `word_ids` folds them: "guide", " guide" and " Guide" are one word and a
token of spaces or line breaks is none, so a loop that wraps its lines at different places
("a comprehensive\nguide to the Python GUI" three times over) is still the same n-gram.

Counting ("[1, 2, 3, … 50," as a made-up example's output) repeats no n-gram, and DRY even
favours it (each next number is the one continuation not seen yet), so it runs to the token
limit. For the counting stop every number token is the same token: the answer ends before an
n-gram holding a number and something else would occur `number_repeats` times with the numbers
folded (an n-gram of digits alone is part of one long number, not of a list).

The guard also applies the copy bias (runtime/copy_bias.py) when given one: it is the one place
where logits change with the answer so far. Every decision depends only on the tokens admitted
so far, so the speculative verifier can replay it row by row and stay identical to step-by-step
decoding.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import numpy as np

from runtime.copy_bias import CopyBias

# What every number token counts as for the counting stop (no token id is negative).
NUMBER = -1
# What a token of whitespace alone counts as for the loop stop: no word, it is skipped.
SPACING = -2
# Penalties grow exponentially with the repeated length; past this exponent the logit is gone
# anyway, and a larger one would overflow a float on long loops.
MAX_PENALTY_EXPONENT = 40


def z_array(values: Sequence[int]) -> list[int]:
    """z[i] = length of the longest common prefix of `values` and `values[i:]` (z[0] = len)."""
    n = len(values)
    z = [0] * n
    if n:
        z[0] = n
    left = right = 0
    for i in range(1, n):
        length = min(right - i, z[i - left]) if i < right else 0
        while i + length < n and values[length] == values[i + length]:
            length += 1
        z[i] = length
        if i + length > right:
            left, right = i, i + length
    return z


def dry_penalties(history: Sequence[int], multiplier: float, base: float, allowed_length: int) -> dict[int, float]:
    """token id -> amount to subtract from its logit after `history` (the answer so far)."""
    n = len(history)
    if multiplier <= 0.0 or n < 2:
        return {}
    # On the reversed answer, z[i] is how far the text ending at position n-1-i matches the
    # text ending at the answer's end; the token after that earlier occurrence would extend it.
    z = z_array(list(reversed(history)))
    penalties: dict[int, float] = {}
    for i in range(1, n):
        length = z[i]
        if length >= allowed_length:
            token = history[n - i]
            penalty = multiplier * base ** min(length - allowed_length, MAX_PENALTY_EXPONENT)
            if penalty > penalties.get(token, 0.0):
                penalties[token] = penalty
    return penalties


def apply_penalties(logits: np.ndarray, penalties: dict[int, float]) -> np.ndarray:
    if not penalties:
        return logits
    logits = logits.copy()
    tokens = np.fromiter(penalties.keys(), dtype=np.int64, count=len(penalties))
    logits[tokens] -= np.fromiter(penalties.values(), dtype=logits.dtype, count=len(penalties))
    return logits


class RepetitionGuard:
    """The answer's tokens so far, with the penalty and stop decisions over them.

    `adjust` gives the logits to choose from; `admit` records a chosen token, or refuses it
    (and sets `stopped`) when it would complete a loop.
    """

    def __init__(self, multiplier: float = 0.0, base: float = 1.75, allowed_length: int = 2,
                 loop_ngram: int = 0, loop_repeats: int = 0, copy_bias: Optional[CopyBias] = None,
                 number_tokens: frozenset = frozenset(), number_repeats: int = 0,
                 word_ids: Optional[np.ndarray] = None):
        self.copy_bias = copy_bias if copy_bias is not None and copy_bias.active else None
        self.multiplier = multiplier
        self.base = base
        self.allowed_length = allowed_length
        self.loop_ngram = loop_ngram
        self.loop_repeats = loop_repeats
        self.number_tokens = number_tokens
        self.number_repeats = number_repeats
        self.word_ids = word_ids            # token id -> word id (SPACING: none); None: each token a word
        self.tokens: list[int] = []
        self._words: list[int] = []         # the answer's words, for the loop stop
        self.stopped = False
        self._ngrams: Counter = Counter()
        self._folded: Counter = Counter()    # n-grams holding a number, numbers folded into NUMBER

    @classmethod
    def from_config(cls, config, copy_sources: Sequence[Sequence[int]] = (),
                    focus_sources: Sequence[Sequence[int]] = (),
                    number_tokens: frozenset = frozenset(),
                    word_ids: Optional[np.ndarray] = None) -> "RepetitionGuard":
        """copy_sources: token ids of the passages the copy bias favours continuing (none: no bias);
        focus_sources: token ids of the sentences it favours more (config.copy_focus_bonus);
        number_tokens: the tokenizer's digit tokens, for the counting stop (config.loop_number_repeats);
        word_ids: the tokenizer's word of each token, for the loop stop (ChatTokenizer.word_ids)."""
        bias = CopyBias(copy_sources, config.copy_bonus, config.copy_min_match, focus_sources,
                        config.copy_focus_bonus) if copy_sources else None
        return cls(config.dry_multiplier, config.dry_base, config.dry_allowed_length,
                   config.loop_ngram, config.loop_repeats, bias, number_tokens, config.loop_number_repeats,
                   word_ids)

    @property
    def active(self) -> bool:
        return self.multiplier > 0.0 or self._stops_loops or self._stops_counting or self.copy_bias is not None

    @property
    def _stops_loops(self) -> bool:
        return self.loop_ngram > 0 and self.loop_repeats > 1

    @property
    def _stops_counting(self) -> bool:
        return self.loop_ngram > 0 and self.number_repeats > 1 and bool(self.number_tokens)

    def adjust(self, logits: np.ndarray, pending: Sequence[int] = ()) -> np.ndarray:
        """`logits` penalised (and copy-biased) for the answer so far followed by `pending` (not yet admitted)."""
        if self.multiplier <= 0.0 and self.copy_bias is None:
            return logits
        history = self.tokens + [int(t) for t in pending] if pending else self.tokens
        if self.multiplier > 0.0:
            logits = apply_penalties(logits, dry_penalties(history, self.multiplier, self.base, self.allowed_length))
        if self.copy_bias is not None:
            logits = self.copy_bias.apply(logits, history)
        return logits

    def admit(self, token: int) -> bool:
        """Record `token` as the answer's next one; False (and nothing recorded) if it would loop."""
        token = int(token)
        word = self._word(token)
        gram = folded = None
        if self._stops_loops and word != SPACING and len(self._words) >= self.loop_ngram - 1:
            gram = tuple(self._words[len(self._words) - self.loop_ngram + 1:]) + (word,)
            if self._ngrams[gram] + 1 >= self.loop_repeats:
                return self._stop()
        if self._stops_counting and len(self.tokens) >= self.loop_ngram - 1:
            tokens = tuple(self.tokens[len(self.tokens) - self.loop_ngram + 1:]) + (token,)
            numbers = sum(t in self.number_tokens for t in tokens)
            # a list holds numbers and separators; a long number alone (a hash quoted) is no list
            if 0 < numbers < len(tokens):
                folded = tuple(NUMBER if t in self.number_tokens else t for t in tokens)
                if self._folded[folded] + 1 >= self.number_repeats:
                    return self._stop()
        if gram is not None:
            self._ngrams[gram] += 1
        if folded is not None:
            self._folded[folded] += 1
        if word != SPACING:
            self._words.append(word)
        self.tokens.append(token)
        return True

    def _word(self, token: int) -> int:
        if self.word_ids is None or not 0 <= token < len(self.word_ids):
            return token
        return int(self.word_ids[token])

    def _stop(self) -> bool:
        self.stopped = True
        return False
