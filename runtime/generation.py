"""Token generation over a `Decoder`: greedy or sampled, streamed one id at a time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from runtime.repetition import RepetitionGuard
from runtime.speculative import generate_speculative


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    repeat_penalty: float = 1.0
    seed: Optional[int] = None
    stop_token_ids: frozenset = frozenset()
    speculative: bool = True
    # Repetition guard (runtime/repetition.py); defaults measured with bench/bench_answers.py
    # (docs/QUERY_APP.md). dry_multiplier 0 turns the penalty off, loop_ngram 0 the hard stop.
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    loop_ngram: int = 4
    loop_repeats: int = 3
    # Counting stop: numbers folded into one token, an n-gram holding one may occur this often; 0 off.
    loop_number_repeats: int = 12
    # Copy bias (runtime/copy_bias.py): logit bonus for a token continuing a span of the passages
    # that the answer's end repeats (at least copy_min_match tokens); 0 turns it off.
    copy_bonus: float = 1.0
    copy_min_match: int = 1
    # Focus (extract, then copy; runtime/answer_focus.py): the copy_focus sentences of the passages
    # sharing the most question terms get copy_focus_bonus more, to start and to continue; 0 turns it off.
    copy_focus: int = 1
    copy_focus_bonus: float = 4.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def prefill(decoder, prompt_ids: list[int]) -> np.ndarray:
    """Feed the prompt into an empty cache; logits of its last position."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if len(prompt_ids) > decoder.max_length:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds the context of {decoder.max_length}")
    decoder.reset()
    step = decoder.prefill_chunk or len(prompt_ids)
    for start in range(0, len(prompt_ids), step):
        logits = decoder.forward(list(prompt_ids[start : start + step]), rows=1)
    return logits[-1]


def new_token_limit(decoder, prompt_length: int, config: GenerationConfig) -> int:
    """How many tokens may follow the prompt: the config's limit, and never past the context."""
    return max(0, min(config.max_new_tokens, decoder.max_length - prompt_length))


def apply_repeat_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Hugging Face's repetition penalty: seen tokens' positive logits divided, negative multiplied."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    logits = logits.copy()
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


class TokenSampler:
    """Chooses the next token from logits; a seeded generator makes sampling reproducible."""

    def __init__(self, config: GenerationConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        config = self.config
        if config.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / config.temperature
        candidates = np.arange(scaled.size)
        if 0 < config.top_k < scaled.size:
            candidates = np.argpartition(-scaled, config.top_k - 1)[: config.top_k]
        # most likely first, ties by id, so the order (and the draw) never depends on the partition
        candidates = candidates[np.lexsort((candidates, -scaled[candidates]))]
        probs = np.exp(scaled[candidates] - scaled[candidates[0]])
        probs /= probs.sum()
        if config.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), config.top_p) + 1)
            candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
        return int(candidates[self.rng.choice(candidates.size, p=probs)])


def generate(decoder, prompt_ids: list[int], config: GenerationConfig,
             guard: Optional[RepetitionGuard] = None) -> Iterator[int]:
    """New token ids after `prompt_ids` (the decoder's cache is reset first).

    Stops after yielding a token of `config.stop_token_ids`, after `config.max_new_tokens`, when
    the context (`decoder.max_length`) is full, or before a token the repetition guard refuses
    (then `guard.stopped` is set; pass a guard to read it, and to give the copy bias its passages,
    else one is made from `config`).
    Greedy without repeat penalty goes through the speculative path when `config.speculative`
    is set and one is installed: it yields the same ids.
    """
    guard = guard if guard is not None else RepetitionGuard.from_config(config)
    logits = prefill(decoder, prompt_ids)
    if config.speculative and config.greedy and config.repeat_penalty == 1.0:
        return generate_speculative(decoder, list(prompt_ids), config, logits, guard)
    return _generate_stepwise(decoder, list(prompt_ids), config, logits, guard)


def _generate_stepwise(decoder, prompt_ids: list[int], config: GenerationConfig, logits: np.ndarray,
                       guard: RepetitionGuard) -> Iterator[int]:
    limit = new_token_limit(decoder, len(prompt_ids), config)
    sample = TokenSampler(config)
    seen = np.unique(np.asarray(prompt_ids, dtype=np.int64))
    for produced in range(1, limit + 1):
        token = sample(guard.adjust(apply_repeat_penalty(logits, seen, config.repeat_penalty)))
        if not guard.admit(token):
            return
        yield token
        if token in config.stop_token_ids or produced == limit:
            return
        if config.repeat_penalty != 1.0:
            seen = np.union1d(seen, [token])
        logits = decoder.forward([token])[-1]
