"""BM25 scoring at search time against the plain formula: the sum of each query term's posting weights."""
from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np

from bundler.index_bm25 import build_bm25
from runtime import layout
from runtime.bm25_search import Bm25Search
from runtime.retrieval import top_k
from runtime.text_terms import terms


def _corpus(rng: random.Random, chunks: int) -> tuple[list[str], list[str]]:
    """Chunks and queries over a made-up vocabulary with a Zipf-like word distribution."""
    words = sorted({"".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(600)})
    weights = [1 / (rank + 1) for rank in range(len(words))]
    texts = [" ".join(rng.choices(words, weights, k=rng.randint(20, 120))) for _ in range(chunks)]
    queries = [" ".join(rng.choices(words, weights, k=rng.randint(2, 12))) for _ in range(40)]
    return texts, queries


def test_bm25_scores_are_the_float64_sum_of_the_query_terms_posting_weights_rounded_once(tmp_path):
    texts, queries = _corpus(random.Random(3), 3000)
    build_bm25(texts, tmp_path)
    postings = [np.load(tmp_path / name) for name in (layout.BM25_INDPTR, layout.BM25_DOC_IDS, layout.BM25_WEIGHTS)]
    vocab = json.loads((tmp_path / layout.BM25_VOCAB).read_text())
    search = Bm25Search(vocab, *postings, size=len(texts))
    indptr, doc_ids, weights = postings
    for query in queries:
        expected = np.zeros(len(texts), dtype=np.float64)
        for term, count in Counter(terms(query)).items():
            postings = slice(indptr[vocab[term]], indptr[vocab[term] + 1])
            expected[doc_ids[postings]] += (weights[postings] * np.float32(count)).astype(np.float64)
        scores = search.scores(query)
        assert scores.dtype == np.float32 and scores.shape == (len(texts),)
        # bit for bit: a float32 sum would flip near-ties in the ranking
        assert np.array_equal(scores, expected.astype(np.float32)), query
        assert top_k(scores, 10, positive_only=True).size == 10


def test_bm25_scores_are_zero_for_a_query_without_indexed_terms(tmp_path):
    texts, _ = _corpus(random.Random(4), 50)
    build_bm25(texts, tmp_path)
    postings = [np.load(tmp_path / name) for name in (layout.BM25_INDPTR, layout.BM25_DOC_IDS, layout.BM25_WEIGHTS)]
    search = Bm25Search({}, *postings, size=len(texts))
    scores = search.scores("anything at all")
    assert scores.dtype == np.float32 and not scores.any() and len(scores) == 50
