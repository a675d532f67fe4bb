"""The dense search's int8 scan only chooses which chunks to score exactly: its hits and scores are
those of scoring every chunk, and the mapped vectors are read, not copied into the process."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import simsimd

from runtime.dense_search import SCORE_BLOCK_ROWS, DenseSearch, int8_terms, quantize_vectors
from runtime.retrieval import top_k


def _near_ties(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in tight clusters around a few directions, so many chunks score within int8
    rounding of each other, and a query near one of those directions."""
    centres = rng.standard_normal((8, 384)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), rows)] + 0.02 * rng.standard_normal((rows, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = centres[3] + 0.3 * rng.standard_normal(384).astype(np.float32)
    return vectors, query / np.linalg.norm(query)


def _mapped(folder: Path, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    quantized, scales = quantize_vectors(vectors)
    np.save(folder / "vectors.npy", quantized)
    np.save(folder / "scales.npy", scales)
    return np.load(folder / "vectors.npy", mmap_mode="r"), np.load(folder / "scales.npy", mmap_mode="r")


def test_search_returns_exactly_the_best_chunks_of_scoring_every_chunk_where_the_int8_scan_alone_would_not(tmp_path):
    rng = np.random.default_rng(11)
    vectors, query = _near_ties(rng, 7 * SCORE_BLOCK_ROWS + 131)
    mapped, scales = _mapped(tmp_path, vectors)
    step = np.abs(query).max() / 127
    scanned = np.empty((1, len(mapped)), dtype=np.float32)
    simsimd.cdist(np.round(query / step).astype(np.int8)[None], mapped, metric="dot", out=scanned)
    for threads in (1, 2, 3):
        search = DenseSearch(None, mapped, scales, threads)
        every = search.score_vector(query)
        for depth in (1, 10, 100, 1000):
            expected = top_k(every, depth)
            # the int8 scan's own order is not the exact one: the exact scores decide
            assert not np.array_equal(top_k(scanned[0] * scales, depth), expected) or depth == 1
            ids, values = search.best(query, depth)
            assert np.array_equal(ids, expected), (threads, depth)
            assert np.array_equal(values, every[expected])
        picked = rng.choice(len(mapped), 300, replace=False)
        assert np.array_equal(search.exact(query, picked), every[picked])


def test_search_of_a_large_collection_whose_rows_differ_in_scale_returns_exactly_the_best_chunks(tmp_path):
    """Enough rows that the scan ranks its bounds on a sample of them first (20,000 rows, depth up
    to 300), and rows whose int8 scales, and so margins, differ several-fold: a first comparison
    that assumed a typical row's margin, or none, would lose rows of the exact top."""
    rng = np.random.default_rng(15)
    vectors, query = _near_ties(rng, 20_000)
    peaky = rng.choice(len(vectors), len(vectors) // 10, replace=False)
    vectors[peaky, rng.integers(0, 384, len(peaky))] += 3 * np.abs(vectors[peaky]).max(axis=1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    mapped, scales = _mapped(tmp_path, vectors)
    assert scales.max() > 2.5 * np.median(scales)
    for threads in (1, 2):
        search = DenseSearch(None, mapped, scales, threads)
        every = search.score_vector(query)
        for depth in (10, 100, 300):
            expected = top_k(every, depth)
            ids, values = search.best(query, depth)
            assert np.array_equal(ids, expected), (threads, depth)
            assert np.array_equal(values, every[expected])


def test_rows_the_int8_scan_underrates_by_most_of_its_margin_are_still_found_beside_sampled_rows(tmp_path):
    """The query's first int8 term keeps only its one large coordinate, so the scan sees nothing of
    the rest. Ten decoys, all on rows the scan samples first, score high on that coordinate and
    against the rest; three rows score lower on it and along the rest: exactly better, but their
    scan value is below every decoy's lower bound, though within their own margin. The filler rows'
    scales are a sixth of theirs: a first comparison with a typical row's margin, or none, loses them."""
    rng = np.random.default_rng(16)
    query = np.clip(rng.standard_normal(384), -2.5, 2.5).astype(np.float32)
    query[7] = 1000.0  # every other coordinate rounds to zero in the first term
    rows = np.zeros((2000, 384), dtype=np.float32)
    rows[:, :] = rng.integers(-20, 21, size=rows.shape)  # filler rows, far below
    rows[:, 7] = 0
    decoys, better = np.arange(10) * 16, np.array([1, 2, 3])
    rows[decoys] = -127 * np.sign(query)
    rows[better] = 127 * np.sign(query)
    for j, row in enumerate(decoys):  # distinct exact scores, one scan value: no ties to break
        rows[row, 8 : 8 + j] = 0
    rows[decoys, 7] = 127
    rows[better, 7] = [60, 59, 58]
    mapped, scales = _mapped(tmp_path, rows / 127)
    search = DenseSearch(None, mapped, scales, 1)
    every = search.score_vector(query)
    expected = top_k(every, 10)
    assert set(better) <= set(expected)
    ids, values = search.best(query, 10)
    assert np.array_equal(ids, expected) and np.array_equal(values, every[expected])


def test_query_splits_into_two_int8_terms_and_a_remainder_within_half_the_second_step():
    query = np.random.default_rng(14).standard_normal(384).astype(np.float32)
    query[7] = 40.0  # one large component: most others round to zero in the first term
    (rounded, step), (rest, rest_step), left = int8_terms(query)
    assert rounded.dtype == rest.dtype == np.int8 and step == 40.0 / 127
    assert np.abs(query - rounded * np.float32(step)).max() <= step / 2 * (1 + 1e-6)
    assert np.abs(left).max() <= rest_step / 2 * (1 + 1e-3) and rest_step < step / 200
    rebuilt = rounded * np.float64(step) + rest * np.float64(rest_step) + left
    assert np.abs(rebuilt - query).max() < 1e-6


def test_search_of_fewer_chunks_than_asked_returns_them_all_best_first(tmp_path):
    vectors, query = _near_ties(np.random.default_rng(12), 40)
    mapped, scales = _mapped(tmp_path, vectors)
    search = DenseSearch(None, mapped, scales, 2)
    ids, values = search.best(query, 100)
    assert sorted(ids) == list(range(40))
    assert np.array_equal(ids, top_k(search.score_vector(query), 40)) and np.all(np.diff(values) <= 0)


def _memory_mb() -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmHWM", "VmRSS", "RssAnon")}


def test_searching_mapped_vectors_does_not_copy_them_into_the_process(tmp_path):
    rows = 300_000  # 110 MB of int8 vectors
    quantized = np.lib.format.open_memmap(tmp_path / "vectors.npy", mode="w+", dtype=np.int8, shape=(rows, 384))
    rng = np.random.default_rng(13)
    for first in range(0, rows, 50_000):
        quantized[first : first + 50_000] = rng.integers(-127, 128, size=(50_000, 384), dtype=np.int8)
    quantized.flush()
    del quantized
    np.save(tmp_path / "scales.npy", np.full(rows, 1 / 127 / np.sqrt(384), dtype=np.float32))
    search = DenseSearch(None, np.load(tmp_path / "vectors.npy", mmap_mode="r"), np.load(tmp_path / "scales.npy", mmap_mode="r"), 2)
    query = rng.standard_normal(384).astype(np.float32)
    search.best(query, 100)  # thread stacks, first allocations, the mapped rows paged in
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from now
    before = _memory_mb()
    for _ in range(3):
        ids, _ = search.best(query / np.linalg.norm(query), 100)
        query = rng.standard_normal(384).astype(np.float32)
    after = _memory_mb()
    assert len(ids) == 100
    # a few float32 values per chunk (about 5 MB here) while a query runs, never a copy of the 110 MB
    # of rows (nor the 460 MB they would take as float32)
    assert after["VmHWM"] - before["VmRSS"] < 30 and after["RssAnon"] - before["RssAnon"] < 30
