"""top_k against a full sort: the k highest scores, best first, ties by lower index, on arrays long
enough for its sampled floor and short enough for the plain partition."""
from __future__ import annotations

import numpy as np

from runtime.retrieval import SAMPLE_STRIDE, top_k


def _by_sorting(scores: np.ndarray, k: int, positive_only: bool) -> np.ndarray:
    order = np.lexsort((np.arange(len(scores)), -scores))
    if positive_only:
        order = order[scores[order] > 0]
    return order[:k]


def test_top_k_is_the_best_first_prefix_of_a_full_sort_for_dense_sparse_and_tied_scores():
    rng = np.random.default_rng(21)
    for size in (7, 100, SAMPLE_STRIDE * 400 - 1, 200_000):
        shapes = {
            "spread": rng.standard_normal(size).astype(np.float32),
            "mostly zero": np.where(rng.random(size) < 0.3, rng.random(size), 0).astype(np.float32),
            "a few positive": np.where(rng.random(size) < 0.0005, rng.random(size), 0).astype(np.float32),
            "positive in the sampled rows only": np.where(np.arange(size) % SAMPLE_STRIDE == 0, rng.random(size), 0).astype(np.float32),
        }
        for name, scores in shapes.items():
            for k in (1, 10, 100):
                for positive_only in (False, True):
                    if not positive_only and name != "spread":
                        continue  # ties at zero: the order among the tied at the k-th place is not fixed
                    expected = _by_sorting(scores, k, positive_only)
                    assert np.array_equal(top_k(scores, k, positive_only), expected), (size, name, k, positive_only)


def test_top_k_of_many_equal_scores_returns_k_of_the_best_value():
    scores = np.zeros(100_000, dtype=np.float32)
    scores[[5, 70_000, 99_999]] = 2.0
    chosen = top_k(scores, 10)
    assert list(chosen[:3]) == [5, 70_000, 99_999] and len(chosen) == 10 and np.all(scores[chosen[3:]] == 0)
    assert list(top_k(scores, 10, positive_only=True)) == [5, 70_000, 99_999]
