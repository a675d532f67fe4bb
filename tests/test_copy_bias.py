"""Copy bias: a bonus for tokens continuing a span of the prompt (speculative decoding replaying it: tests/test_fused.py)."""
from __future__ import annotations

import numpy as np

from runtime.copy_bias import CopyBias
from runtime.generation import GenerationConfig
from runtime.repetition import RepetitionGuard

# "the pump is primed by valve 12 . the seal wears" as token ids
SOURCE = [10, 11, 12, 13, 14, 15, 16, 17, 10, 18, 19]


def test_token_continuing_a_quoted_span_gets_the_bonus():
    bias = CopyBias([SOURCE], bonus=2.0)
    logits = bias.apply(np.zeros(30, dtype=np.float32), [13, 14])  # "... primed by" -> "valve"
    expected = np.zeros(30, dtype=np.float32)
    expected[15] = 2.0
    np.testing.assert_array_equal(logits, expected)


def test_copy_bias_prefers_the_token_that_continues_the_passage_over_a_slightly_likelier_one():
    logits = np.zeros(30, dtype=np.float32)
    logits[20], logits[15] = 1.0, 0.5  # the model slightly prefers its own word 20 to the source's 15
    assert int(np.argmax(logits)) == 20
    assert int(np.argmax(CopyBias([SOURCE], bonus=1.0).apply(logits, [13, 14]))) == 15


def test_the_longest_matching_suffix_decides_which_continuations_count():
    bias = CopyBias([SOURCE], bonus=1.0)
    assert bias.continuations([10]) == {11, 18}      # "the" is followed by "pump" and by "seal"
    assert bias.continuations([17, 10]) == {18}      # ". the" only by "seal"
    assert bias.continuations([99, 10]) == {11, 18}  # falls back to the shorter match
    assert bias.continuations([99]) == set()


def test_a_minimum_match_leaves_single_token_overlaps_alone():
    bias = CopyBias([SOURCE], bonus=1.0, min_match=2)
    assert bias.continuations([10]) == set()
    assert bias.continuations([17, 10]) == {18}


def test_a_span_never_runs_from_one_passage_into_the_next():
    bias = CopyBias([[1, 2], [3, 4]], bonus=1.0)
    assert bias.continuations([2]) == set()
    assert bias.continuations([3]) == {4}


def test_no_bonus_and_no_copy_without_a_bonus_or_a_match():
    logits = np.arange(30, dtype=np.float32)
    assert CopyBias([SOURCE], bonus=0.0).apply(logits, [13, 14]) is logits
    assert CopyBias([SOURCE], bonus=1.0).apply(logits, [99]) is logits
    assert CopyBias([SOURCE], bonus=1.0).apply(logits, []) is logits


def test_the_guard_applies_the_copy_bias_over_the_admitted_answer_and_pending_draft():
    guard = RepetitionGuard(copy_bias=CopyBias([SOURCE], bonus=1.5))
    assert guard.active
    assert guard.admit(13)
    biased = guard.adjust(np.zeros(30, dtype=np.float32), pending=[14])
    assert biased[15] == 1.5 and biased.sum() == 1.5
    assert not RepetitionGuard(copy_bias=CopyBias([SOURCE], bonus=0.0)).active


def test_the_config_gives_the_guard_its_copy_bias_from_the_prompt():
    guard = RepetitionGuard.from_config(GenerationConfig(copy_bonus=1.0), [SOURCE])
    assert guard.copy_bias is not None and guard.copy_bias.continuations([13, 14]) == {15}
    assert RepetitionGuard.from_config(GenerationConfig(copy_bonus=0.0), [SOURCE]).copy_bias is None
    assert RepetitionGuard.from_config(GenerationConfig(copy_bonus=1.0)).copy_bias is None  # no passages


def test_focus_sentences_get_their_bonus_on_top_to_open_and_to_continue_the_answer():
    focus = [12, 13, 14, 15]  # "pump is primed by"
    bias = CopyBias([SOURCE], bonus=1.0, focus=[focus], focus_bonus=3.0)
    opening = bias.apply(np.zeros(30, dtype=np.float32), [])
    assert opening[12] == 3.0 and opening.sum() == 3.0       # an empty answer: only the focus's first token
    biased = bias.apply(np.zeros(30, dtype=np.float32), [13, 14])
    assert biased[15] == 4.0 and biased.sum() == 4.0         # passage bonus + focus bonus
    elsewhere = bias.apply(np.zeros(30, dtype=np.float32), [16, 17])
    assert elsewhere[10] == 1.0 and elsewhere.sum() == 1.0   # a span of the passage outside the focus


def test_focus_without_a_focus_bonus_changes_nothing():
    bias = CopyBias([SOURCE], bonus=1.0, focus=[[12, 13]], focus_bonus=0.0)
    logits = np.zeros(30, dtype=np.float32)
    assert bias.apply(logits, []) is logits
    assert bias.focus_continuations([12]) == set()


def test_the_config_gives_the_guard_its_focus_sentences():
    config = GenerationConfig(copy_bonus=1.0, copy_focus=1, copy_focus_bonus=2.0)
    guard = RepetitionGuard.from_config(config, [SOURCE], [[12, 13]])
    assert guard.copy_bias.focus_continuations([]) == {12}
    assert guard.copy_bias.focus_continuations([12]) == {13}
