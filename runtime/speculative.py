"""Lossless prompt-lookup speculative decoding for greedy generation.

Drafts are the tokens that followed the latest earlier occurrence of the context's last
n-gram (n = max_ngram..1) in the prompt or the answer so far: retrieval-augmented answers
quote their sources, so drafts are often right. One forward pass verifies them all; the
longest agreeing prefix is kept, plus the model's own next token, and the cache is rolled
back past the rest.

Numerics: ONNX Runtime computes a one-token step on a different path than a multi-token
step (docs/MEASUREMENTS.md#one-vs-many-rows), and the two flip near-ties. Every step here therefore feeds at
least two tokens (a one-token guess when no n-gram matches), so the output is identical,
token for token, to `reference_greedy`: plain greedy decoding in which each step is fed as
two rows and only the first is used.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from runtime.repetition import RepetitionGuard


@dataclass
class SpeculationStats:
    steps: int = 0  # forward passes after the prompt
    drafted: int = 0
    accepted: int = 0


class NgramIndex:
    """Maps each n-gram of the context to where its latest continuation starts."""

    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self._next: dict[tuple, int] = {}

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            end = len(self.tokens)
            for n in range(1, self.max_ngram + 1):
                if end - n < 0:
                    break
                self._next[tuple(self.tokens[end - n:end])] = end
            self.tokens.append(int(token))

    def draft(self, max_tokens: int) -> list[int]:
        """Continuation of the longest suffix seen before, up to `max_tokens` tokens."""
        size = len(self.tokens)
        for n in range(min(self.max_ngram, size), 0, -1):
            start = self._next.get(tuple(self.tokens[size - n:]))
            if start is not None:
                return self.tokens[start:start + max_tokens]
        return []


def _rows_forward(decoder):
    """decoder.forward with only the last `rows` logits computed where the decoder can."""
    if "rows" in inspect.signature(decoder.forward).parameters:
        return lambda ids, rows: decoder.forward(ids, rows=rows)
    return lambda ids, rows: decoder.forward(ids)[-rows:]


def generate_speculative(decoder, prompt_ids: list[int], config, first_logits: np.ndarray,
                         guard: RepetitionGuard | None = None) -> Iterator[int]:
    """runtime.generation's hook: greedy `config` after a prefilled prompt."""
    guard = guard if guard is not None else RepetitionGuard()
    limit = max(0, min(config.max_new_tokens, decoder.max_length - len(prompt_ids)))
    first = int(np.argmax(guard.adjust(first_logits)))
    return speculative_greedy(decoder, prompt_ids, first, limit, config.stop_token_ids, guard=guard)


def speculative_greedy(decoder, prompt_ids: list[int], first_token: int, limit: int,
                       stop_token_ids=frozenset(), max_ngram: int = 3, max_draft: int = 3,
                       stats: SpeculationStats | None = None,
                       guard: RepetitionGuard | None = None) -> Iterator[int]:
    """Up to `limit` greedy tokens, starting with `first_token`; the cache holds the prompt.

    With a `guard`, each verified row is chosen from logits penalised for the tokens before it
    (the admitted answer plus the draft up to that row), and every token passes `guard.admit`
    before it is yielded: the very decisions step-by-step decoding makes.
    """
    forward = _rows_forward(decoder)
    guard = guard if guard is not None else RepetitionGuard()
    limit = min(limit, decoder.max_length - decoder.length)
    stats = stats if stats is not None else SpeculationStats()
    index = NgramIndex(max_ngram)
    index.extend(prompt_ids)
    token = first_token
    produced = 0
    while produced < limit:
        if not guard.admit(token):
            return
        yield token
        produced += 1
        if token in stop_token_ids or produced >= limit:
            return
        index.extend([token])
        room = decoder.max_length - decoder.length - 1
        draft = index.draft(min(max_draft, room, limit - produced))
        guessed = bool(draft)
        if not draft and room > 0:
            draft = [token]  # keeps the step on the multi-token path; right now and then
        before = decoder.length
        logits = forward([token] + draft, len(draft) + 1)
        stats.steps += 1
        accepted = 0
        choice = int(np.argmax(guard.adjust(logits[0])))
        while accepted < len(draft) and choice == draft[accepted]:
            accepted += 1
            choice = int(np.argmax(guard.adjust(logits[accepted], draft[:accepted])))
        if guessed:
            stats.drafted += len(draft)
            stats.accepted += accepted
        decoder.truncate(before + 1 + accepted)
        for drafted in draft[:accepted]:
            if not guard.admit(drafted):
                return
            yield drafted
            produced += 1
            if drafted in stop_token_ids or produced >= limit:
                return
        index.extend(draft[:accepted])
        token = choice


def reference_greedy(decoder, first_token: int, limit: int, stop_token_ids=frozenset(),
                     guard: RepetitionGuard | None = None) -> Iterator[int]:
    """Plain greedy decoding on the same numeric path as `speculative_greedy`: each step
    feeds the new token and a filler, keeps the first row and drops the filler from the
    cache (one row only when the context has room for no more)."""
    forward = _rows_forward(decoder)
    guard = guard if guard is not None else RepetitionGuard()
    limit = min(limit, decoder.max_length - decoder.length)
    token = first_token
    for produced in range(1, limit + 1):
        if not guard.admit(token):
            return
        yield token
        if token in stop_token_ids or produced == limit:
            return
        before = decoder.length
        fed = [token, token] if decoder.max_length - before >= 2 else [token]
        logits = forward(fed, len(fed))
        decoder.truncate(before + 1)
        token = int(np.argmax(guard.adjust(logits[0])))
