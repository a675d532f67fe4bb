"""Repetition guard: the DRY penalty on hand-made answers, the hard stop on a looping n-gram."""
from __future__ import annotations

import numpy as np

from runtime.repetition import SPACING, RepetitionGuard, dry_penalties, z_array


def _penalised(history, multiplier=0.8, base=1.75, allowed_length=2, vocab=12) -> np.ndarray:
    guard = RepetitionGuard(multiplier, base, allowed_length)
    for token in history:
        assert guard.admit(token)
    return guard.adjust(np.zeros(vocab, dtype=np.float32))


def test_z_array_gives_common_prefix_lengths():
    assert z_array([1, 2, 1, 2, 3, 1, 2]) == [7, 0, 2, 0, 0, 2, 0]
    assert z_array([]) == []


def test_token_that_would_repeat_a_two_token_sequence_gets_the_base_penalty():
    # "1 2" occurred before, followed by 3: saying 3 now would extend a repeat of length 2.
    expected = np.zeros(12, dtype=np.float32)
    expected[3] = -0.8
    np.testing.assert_array_equal(_penalised([1, 2, 3, 9, 1, 2]), expected)


def test_penalty_grows_by_the_base_with_each_repeated_token():
    expected = np.zeros(12, dtype=np.float32)
    expected[8] = -0.8 * 1.75  # "5 6 7 8 4" then "5 6 7": a repeat of length 3
    np.testing.assert_allclose(_penalised([5, 6, 7, 8, 4, 5, 6, 7]), expected, rtol=1e-6)
    expected[8] = -0.8 * 1.75 ** 2  # "4 5 6 7 8" then "4 5 6 7": length 4
    np.testing.assert_allclose(_penalised([4, 5, 6, 7, 8, 4, 5, 6, 7]), expected, rtol=1e-6)


def test_repeats_shorter_than_the_allowed_length_are_free():
    np.testing.assert_array_equal(_penalised([5, 6, 4, 5]), np.zeros(12, dtype=np.float32))
    np.testing.assert_array_equal(_penalised([1, 2, 3, 9, 1, 2], allowed_length=3), np.zeros(12, dtype=np.float32))


def test_each_token_takes_the_penalty_of_its_longest_repeat():
    # 7 follows "1 2" (length 2) and "3 1 2" (length 3): the longer one counts.
    assert dry_penalties([3, 1, 2, 7, 1, 2, 9, 3, 1, 2], 1.0, 2.0, 2) == {7: 2.0, 9: 1.0}


def test_pending_draft_tokens_count_as_part_of_the_answer():
    guard = RepetitionGuard(0.8, 1.75, 2)
    for token in [1, 2, 3, 9, 1]:
        guard.admit(token)
    expected = np.zeros(12, dtype=np.float32)
    expected[3] = -0.8
    np.testing.assert_array_equal(guard.adjust(np.zeros(12, dtype=np.float32), pending=[2]), expected)
    assert guard.tokens == [1, 2, 3, 9, 1]


def test_a_zero_multiplier_leaves_logits_untouched():
    logits = np.arange(12, dtype=np.float32)
    guard = RepetitionGuard(0.0)
    for token in [1, 2, 1, 2, 1, 2]:
        guard.admit(token)
    assert guard.adjust(logits) is logits


def test_a_long_loop_does_not_overflow_the_penalty():
    penalties = dry_penalties([4, 5] * 600, 0.8, 1.75, 2)
    assert set(penalties) == {4} and np.isfinite(penalties[4])


def test_hard_stop_refuses_the_token_that_completes_the_third_copy_of_an_ngram():
    guard = RepetitionGuard(loop_ngram=2, loop_repeats=3)
    assert all(guard.admit(t) for t in [1, 2, 7, 1, 2, 7, 1])
    assert not guard.stopped
    assert not guard.admit(2)
    assert guard.stopped
    assert guard.tokens == [1, 2, 7, 1, 2, 7, 1]


def test_hard_stop_is_off_when_the_ngram_is_zero():
    guard = RepetitionGuard(loop_ngram=0, loop_repeats=3)
    assert all(guard.admit(t) for t in [1, 2] * 10)
    assert not guard.active



def admitted(guard: RepetitionGuard, tokens: list[int]) -> list[int]:
    kept = []
    for token in tokens:
        if not guard.admit(token):
            break
        kept.append(token)
    return kept


def test_counting_stop_ends_a_list_that_counts_on_with_no_repeated_ngram():
    numbers = frozenset(range(10, 20))       # "0".."9"
    comma, space = 1, 2
    counting = [t for n in range(1, 10) for t in (10 + n, comma, space)]  # "1, 2, 3, … 9, "
    plain = RepetitionGuard(loop_ngram=4, loop_repeats=3)
    assert admitted(plain, counting) == counting and not plain.stopped  # no 4-gram occurs three times
    guard = RepetitionGuard(loop_ngram=4, loop_repeats=3, number_tokens=numbers, number_repeats=4)
    kept = admitted(guard, counting)
    assert guard.stopped
    # "1, 2, 3, 4, ": the next number would make "NUMBER , ␣ NUMBER" occur a fourth time
    assert kept == counting[:12] and kept[-3:] == [14, comma, space]


def test_counting_stop_leaves_a_long_number_alone():
    guard = RepetitionGuard(loop_ngram=4, loop_repeats=3, number_tokens=frozenset(range(10, 20)), number_repeats=3)
    digits = [11, 14, 12, 13, 13, 11, 19, 16, 10, 17, 15, 18, 11, 12]  # a hash value quoted digit by digit
    assert admitted(guard, digits) == digits and not guard.stopped


def test_counting_stop_looks_only_at_ngrams_holding_a_number():
    guard = RepetitionGuard(loop_ngram=2, loop_repeats=0, number_tokens=frozenset({9}), number_repeats=2)
    assert admitted(guard, [1, 2, 1, 2, 1, 2]) == [1, 2, 1, 2, 1, 2] and not guard.stopped
    assert admitted(guard, [9, 1, 9, 1]) == [9, 1, 9]   # "NUMBER 1" a second time
    assert guard.stopped


def test_number_tokens_are_the_vocabulary_entries_that_spell_only_digits():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from runtime.tokenizer import ChatTokenizer

    vocab = {"[UNK]": 0, "1": 1, "\u012023": 2, "\u2581907": 3, "x1": 4, "1.5": 5, "\u0120": 6, "\u00b2": 7}
    tokenizer = ChatTokenizer(Tokenizer(WordLevel(vocab, unk_token="[UNK]")).to_str(), {})
    assert tokenizer.number_token_ids == frozenset({1, 2, 3})   # "1", " 23", "▁907"; not "x1", "1.5", " ", "²"


def test_loop_stop_sees_one_loop_whatever_its_line_breaks_and_capitals():
    # "guide to the Python" three times, wrapped at different places: the tokens differ
    # (" guide" / "guide", a line-break token between), the words do not.
    guide, space_guide, to, the, the_capital, python, newline = 1, 2, 3, 4, 5, 6, 7
    word_ids = np.array([0, 1, 1, 3, 4, 4, 6, SPACING])
    loop = [space_guide, to, the, python, newline, guide, to, the_capital, python, newline, space_guide, to, the,
            python]
    plain = RepetitionGuard(loop_ngram=4, loop_repeats=3)
    assert admitted(plain, loop) == loop and not plain.stopped
    guard = RepetitionGuard(loop_ngram=4, loop_repeats=3, word_ids=word_ids)
    assert admitted(guard, loop) == loop[:-1] and guard.stopped
    # Line breaks alone never complete an n-gram, however many there are.
    breaks = RepetitionGuard(loop_ngram=2, loop_repeats=2, word_ids=word_ids)
    assert admitted(breaks, [newline] * 6 + [to]) == [newline] * 6 + [to] and not breaks.stopped


def test_word_ids_fold_leading_whitespace_and_case_and_mark_whitespace_alone():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from runtime.tokenizer import ChatTokenizer

    vocab = {"[UNK]": 0, "guide": 1, "\u0120guide": 2, "\u010aGuide": 3, "\u2581guide": 4, "\u0120": 5, "\u010a\u010a": 6,
             "guides": 7, " x": 8}
    words = ChatTokenizer(Tokenizer(WordLevel(vocab, unk_token="[UNK]")).to_str(), {}).word_ids
    assert list(words) == [0, 1, 1, 1, 1, SPACING, SPACING, 7, 8]
