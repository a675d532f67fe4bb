"""BM25 postings with precomputed weights, as plain arrays the runtime scores with NumPy."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import layout
from runtime.text_terms import terms


@dataclass(frozen=True)
class Bm25Config:
    k1: float = 1.2
    b: float = 0.75


def build_bm25(texts: list[str], staging: Path, config: Bm25Config = Bm25Config()) -> int:
    """Writes the BM25 entries under staging; returns the vocabulary size.

    Lucene's BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    weight = idf * tf / (tf + k1 * (1 - b + b * len / avglen)).
    """
    counts = [Counter(terms(text)) for text in texts]
    vocab = {term: i for i, term in enumerate(sorted({t for c in counts for t in c}))}
    write_postings(
        vocab,
        np.fromiter((vocab[t] for c in counts for t in c), dtype=np.int64),
        np.repeat(np.arange(len(counts), dtype=np.int32), [len(c) for c in counts]),
        np.fromiter((n for c in counts for n in c.values()), dtype=np.float64),
        np.array([sum(c.values()) for c in counts], dtype=np.float64),
        staging,
        config,
    )
    return len(vocab)


def write_postings(vocab: dict[str, int], term_ids: np.ndarray, doc_ids: np.ndarray, tf: np.ndarray,
                   lengths: np.ndarray, staging: Path, config: Bm25Config = Bm25Config()) -> None:
    """The BM25 entries from (term, chunk, term frequency) triples in ascending chunk order and
    each chunk's length in terms."""
    order = np.argsort(term_ids, kind="stable")  # stable keeps chunk ids ascending within a term
    term_ids, doc_ids, tf = term_ids[order], doc_ids[order], tf[order].astype(np.float64)
    df = np.bincount(term_ids, minlength=len(vocab))
    indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])

    n = len(lengths)
    average = max(lengths.mean(), 1.0) if n else 1.0
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    norm = config.k1 * (1.0 - config.b + config.b * lengths[doc_ids] / average)
    weights = (idf[term_ids] * tf / (tf + norm)).astype(np.float32)

    folder = staging / Path(layout.BM25_VOCAB).parent
    folder.mkdir(parents=True, exist_ok=True)
    (staging / layout.BM25_VOCAB).write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    np.save(staging / layout.BM25_INDPTR, indptr)
    np.save(staging / layout.BM25_DOC_IDS, doc_ids.astype(np.int32))
    np.save(staging / layout.BM25_WEIGHTS, weights)
