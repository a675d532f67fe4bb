"""Sentence embeddings with ONNX Runtime + tokenizers, and cosine search over int8 chunk vectors."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import onnxruntime as ort
import simsimd
from tokenizers import Tokenizer

from runtime import layout
from runtime.errors import UserError

# Chunk vectors are symmetric int8, one scale per chunk (scoring is float32, so the full range is safe).
VECTOR_LEVELS = 127
# Rows converted to float64 at a time: 512 x 384 doubles (1.5 MB) stay in L2 cache, and OpenBLAS
# keeps a product this small on the calling thread (larger blocks made it start its own threads,
# which collapsed on a loaded 2-core machine: 30x slower).
SCORE_BLOCK_ROWS = 512
# Relative error allowed for the float32 rounding of scores and bounds (2^-24 a step, generously):
# part of the margin that keeps the int8 prefilter of DenseSearch.best exact.
FLOAT_DOT_ERROR = 1e-4
# The int8 scan ranks its lower bounds first on every this-many-th row (DenseSearch._bound_rows).
SAMPLE_STRIDE = 16


def encoder_session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options for the sentence embedder, the same for the index build and the query, so
    both compute the same vectors.

    SkipLayerNormFusion stays off: the embedder keeps its residual adds apart from the layer norms
    because ONNX Runtime's fused CPU kernel took 3-4x their time (docs/MEASUREMENTS.md#embedder-recipe).
    Threads left spinning after a run would compete with the NumPy work between runs (measured 2x
    slower hybrid queries on a busy 2-core machine).
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("optimization.disable_specified_optimizers", "SkipLayerNormFusion")
    return options


class SentenceEncoder:
    """Mean-pooled, L2-normalised token embeddings (the all-MiniLM-L6-v2 recipe)."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, max_length: int):
        self.session = session
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        self.input_names = {i.name for i in session.get_inputs()}

    @classmethod
    def from_bundle(cls, bundle, max_length: int, options: ort.SessionOptions) -> "SentenceEncoder":
        session = bundle.onnx_session(layout.DENSE_MODEL, options)
        tokenizer = Tokenizer.from_str(bytes(bundle.read(layout.DENSE_TOKENIZER)).decode("utf-8"))
        return cls(session, tokenizer, max_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim] unit vectors, as one batch (padded to the longest text)."""
        return self._run(self.tokenizer.encode_batch(texts))

    def encode_many(self, texts: list[str], report: Callable[[int, int], None] = lambda done, total: None) -> np.ndarray:
        """float32 [len(texts), dim] unit vectors in input order, each text run on its own.

        One text per run pads nothing, and a vector depends on its own text only: the int8 model
        scales its activations per run, so in a batch a vector moved with its batch-mates.
        report(done, total) is called every 64 texts and at the end.
        """
        out: np.ndarray | None = None
        for done, text in enumerate(texts):
            if done % 64 == 0:
                report(done, len(texts))
            vector = self.encode([text])[0]
            if out is None:
                out = np.empty((len(texts), len(vector)), dtype=np.float32)
            out[done] = vector
        report(len(texts), len(texts))
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def _run(self, encodings: list) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def quantize_vectors(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: vectors ≈ q * scale[:, None], q int8 [rows, dim], scale float32 [rows]."""
    peak = np.maximum(np.abs(vectors).max(axis=1), 1e-12)
    scales = (peak / VECTOR_LEVELS).astype(np.float32)
    quantized = np.round(vectors / scales[:, None]).astype(np.int8)
    return np.ascontiguousarray(quantized), scales


def chunk_scores(rows: np.ndarray, query: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 scores of int8 rows (given as float64) against a float64 query. The dot product is
    summed in float64, so a score does not depend on how BLAS splits the rows (its float32 sums
    did, in the last bit): a search and a full scoring agree exactly."""
    return np.dot(rows, query).astype(np.float32) * scales


def int8_terms(query: np.ndarray) -> tuple[tuple[np.ndarray, float], tuple[np.ndarray, float], np.ndarray]:
    """query = rounded * step + rest * rest_step + left: int8 vectors, each step 1/127 of the
    largest magnitude left to express."""
    terms, left = [], query
    for _ in range(2):
        step = max(float(np.abs(left).max()), 1e-30) / VECTOR_LEVELS
        rounded = np.clip(np.round(left / step), -VECTOR_LEVELS, VECTOR_LEVELS).astype(np.int8)
        terms.append((rounded, step))
        left = left - rounded.astype(np.float32) * np.float32(step)
    return terms[0], terms[1], left


class DenseSearch:
    """Cosine scores against int8 chunk vectors memory-mapped from the bundle.

    A chunk's score is its int8 row times the query, times its scale (chunk_scores; score_vector
    scores every chunk). A search (best) reads every row once with SimSIMD's int8 dot product
    against the query rounded to int8, which bounds each exact score within a margin; only the
    rows whose bound can reach the top are scored exactly. Memory grows by a few float32 values
    per chunk, not with the vectors; the mapped pages stay page cache the kernel can drop.
    (Measured per 100k chunks, one thread: float32 blocks 11 ms of CPU, the int8 scan 6 ms;
    ONNX Runtime's MatMulInteger 19 ms and QGemm 55 ms, as they repack the rows on every query.)
    """

    def __init__(self, encoder: SentenceEncoder, vectors: np.ndarray, scales: np.ndarray, threads: int | None = None):
        self.encoder = encoder
        self.vectors = vectors
        self.scales = scales
        # bound every row's margin in the scan's comparisons (one pass over the scales, once)
        self.largest_scale = float(np.max(scales)) if len(scales) else 0.0
        self.smallest_scale = float(np.min(scales)) if len(scales) else 0.0
        blocks = -(-len(vectors) // SCORE_BLOCK_ROWS)
        self.parts = max(1, min(threads or os.cpu_count() or 1, blocks))
        self.pool = ThreadPoolExecutor(self.parts) if self.parts > 1 else None

    @classmethod
    def from_bundle(cls, bundle, max_length: int, size: int, threads: int | None = None) -> "DenseSearch":
        """size: the number of chunks, which the vectors must match."""
        vectors, scales = bundle.array(layout.DENSE_VECTORS), bundle.array(layout.DENSE_SCALES)
        if vectors.ndim != 2 or vectors.dtype != np.int8 or scales.dtype != np.float32 or scales.shape != (size,) or len(vectors) != size:
            raise UserError(f"{bundle.path}: {layout.DENSE_VECTORS}: expected int8 [{size}, dim] vectors and float32 "
                            f"[{size}] scales, found {vectors.dtype} {list(vectors.shape)} and {scales.dtype} {list(scales.shape)}")
        return cls(
            SentenceEncoder.from_bundle(bundle, max_length, encoder_session_options(threads)),
            vectors,
            scales,
            threads,
        )

    def _score_rows(self, query: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        block = np.empty((SCORE_BLOCK_ROWS, query.shape[0]), dtype=np.float64)
        for first in range(start, stop, SCORE_BLOCK_ROWS):
            rows = self.vectors[first : min(first + SCORE_BLOCK_ROWS, stop)]
            np.copyto(block[: len(rows)], rows, casting="unsafe")
            out[first : first + len(rows)] = chunk_scores(block[: len(rows)], query, self.scales[first : first + len(rows)])

    def score_vector(self, vector: np.ndarray) -> np.ndarray:
        """Cosine similarity of a unit query vector to every chunk (float32 [chunks])."""
        query = np.ascontiguousarray(vector, dtype=np.float64)
        out = np.empty(len(self.vectors), dtype=np.float32)
        # contiguous row ranges, one per thread, on block boundaries; NumPy and BLAS release the GIL
        blocks = -(-len(self.vectors) // SCORE_BLOCK_ROWS)
        bounds = [min(len(self.vectors), SCORE_BLOCK_ROWS * (blocks * p // self.parts)) for p in range(self.parts + 1)]
        if self.pool is None:
            self._score_rows(query, out, 0, len(self.vectors))
        else:
            for job in [self.pool.submit(self._score_rows, query, out, a, b) for a, b in zip(bounds, bounds[1:])]:
                job.result()
        return out

    def scores(self, query: str) -> np.ndarray:
        return self.score_vector(self.encoder.encode([query])[0])

    def exact(self, vector: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """score_vector(vector)[ids], reading only those rows."""
        query = np.ascontiguousarray(vector, dtype=np.float64)
        out = np.empty(len(ids), dtype=np.float32)
        for first in range(0, len(ids), SCORE_BLOCK_ROWS):  # blocks, to keep BLAS on this thread
            some = ids[first : first + SCORE_BLOCK_ROWS]
            out[first : first + len(some)] = chunk_scores(np.asarray(self.vectors[some], dtype=np.float64), query, self.scales[some])
        return out

    def best(self, vector: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The `depth` chunks of highest score, best first (ties by lower id), and their scores: the
        same as top_k(score_vector(vector), depth) and its values, for about half the work.

        The query rounded to int8 gives every row's score within a margin (one scan); the rows
        whose bound can reach the top get it again with the rounding error rounded to int8 too,
        which leaves a margin about 250x smaller, and the few left are scored exactly.
        """
        query = np.ascontiguousarray(vector, dtype=np.float32)
        (rounded, step), (rest, rest_step), left = int8_terms(query)
        # |row . error| <= |row| |error|, and |row| <= 127 sqrt(dim) for any int8 row
        reach = VECTOR_LEVELS * np.sqrt(len(query))
        allowance = FLOAT_DOT_ERROR * float(np.linalg.norm(query))
        margin = reach * (float(np.linalg.norm(rest.astype(np.float32) * np.float32(rest_step) + left)) + allowance)
        blocks = -(-len(self.vectors) // SCORE_BLOCK_ROWS)
        bounds = [min(len(self.vectors), SCORE_BLOCK_ROWS * (blocks * p // self.parts)) for p in range(self.parts + 1)]
        parts = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        run = self.pool.map if self.pool is not None else map
        scanned = list(run(lambda part: self._bound_rows(rounded, step, margin, depth, *part), parts))
        # every part's depth-th best lower bound is at most the collection's depth-th best score
        floor = max(kth for _, _, kth in scanned)
        candidates = np.concatenate([ids[upper >= floor] for ids, upper, _ in scanned])
        dots = np.empty((2, len(candidates)), dtype=np.float32)
        simsimd.cdist(np.stack([rounded, rest]), np.asarray(self.vectors[candidates]), metric="dot", out=dots)
        scales = self.scales[candidates]
        approx = (dots[0] * np.float32(step) + dots[1] * np.float32(rest_step)) * scales
        slack = scales * np.float32(reach * (float(np.linalg.norm(left)) + allowance))
        if len(candidates) > depth:
            floor = np.partition(approx - slack, len(candidates) - depth)[len(candidates) - depth]
            candidates = candidates[approx + slack >= floor]
        values = self.exact(query, candidates)
        order = np.lexsort((candidates, -values))[:depth]
        return candidates[order], values[order]

    def _bound_rows(self, rounded: np.ndarray, step: float, margin: float, depth: int, start: int,
                    stop: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Of rows [start, stop): the ids of those whose upper bound reaches the depth-th best lower
        bound of the rows, their upper bounds, and that lower bound (-inf when there are no more
        rows than depth).

        Beside the scan, a row costs one product and two comparisons: the depth-th best lower bound
        is first taken over every SAMPLE_STRIDE-th row (at most the rows' own), then over the rows
        whose bound can reach that, which gives the rows' own; only the rows within a margin of it
        get their bounds computed (ranking all 1M lower bounds took 30% of the CPU of a search at 1M
        chunks beside the scan). The largest and smallest scale bound every row's margin.
        """
        scores = np.empty((1, stop - start), dtype=np.float32)  # int32 sums, |sum| < 2^24: exact in float32
        simsimd.cdist(rounded[None], self.vectors[start:stop], metric="dot", out=scores)
        scales, scaled = self.scales[start:stop], scores[0]
        scaled *= scales  # the int8 dot times the row's scale; a row's bounds: step x that +- margin x scale
        count = stop - start
        if count <= depth:
            return np.arange(start, stop), scaled * np.float32(step) + scales * np.float32(margin), -np.inf

        def reaching(value: float, spread: float) -> np.ndarray:
            """The rows with step x scaled >= value - spread, and a few more: 1e-5 of the largest
            terms a bound adds keeps float rounding from leaving one out."""
            rounding = 1e-5 * (abs(value) + margin * self.largest_scale)
            return np.flatnonzero(scaled >= (value - spread - rounding) / step)

        def kth_lower(rows: np.ndarray | slice) -> float:
            lower = scaled[rows] * np.float32(step) - scales[rows] * np.float32(margin)
            return float(np.partition(lower, len(lower) - depth)[len(lower) - depth])

        if count >= SAMPLE_STRIDE * depth * 4:
            # a row with lower bound >= the sample's is among these, and depth rows at least are
            kth = kth_lower(reaching(kth_lower(slice(None, None, SAMPLE_STRIDE)), -margin * self.smallest_scale))
        else:
            kth = kth_lower(slice(None))
        ids = reaching(kth, margin * self.largest_scale)
        return ids + start, scaled[ids] * np.float32(step) + scales[ids] * np.float32(margin), kth
