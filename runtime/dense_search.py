"""Sentence embeddings with ONNX Runtime + tokenizers, and cosine search over int8 chunk vectors."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from runtime import layout
from runtime.errors import UserError

# Chunk vectors are symmetric int8, one scale per chunk (scoring is float32, so the full range is safe).
VECTOR_LEVELS = 127
# Rows converted to float32 at a time: 512 x 384 floats (768 KB) stay in L2 cache, and OpenBLAS
# keeps a product this small on the calling thread (larger blocks made it start its own threads,
# which collapsed on a loaded 2-core machine: 30x slower).
SCORE_BLOCK_ROWS = 512


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


class DenseSearch:
    """Cosine scores against int8 chunk vectors memory-mapped from the bundle.

    Rows are converted to float32 a block at a time and multiplied by the query with BLAS, so
    memory grows by one block per thread, not with the corpus; the mapped pages stay page cache
    the kernel can drop. (Measured against ONNX Runtime's MatMulInteger on the mapped rows: that
    was about 2x less CPU, but needs a graph the runtime cannot write without onnx, and the
    float path keeps the query unquantized.)
    """

    def __init__(self, encoder: SentenceEncoder, vectors: np.ndarray, scales: np.ndarray, threads: int | None = None):
        self.encoder = encoder
        self.vectors = vectors
        self.scales = scales
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
        block = np.empty((SCORE_BLOCK_ROWS, query.shape[0]), dtype=np.float32)
        for first in range(start, stop, SCORE_BLOCK_ROWS):
            rows = self.vectors[first : min(first + SCORE_BLOCK_ROWS, stop)]
            np.copyto(block[: len(rows)], rows, casting="unsafe")
            scores = out[first : first + len(rows)]
            np.dot(block[: len(rows)], query, out=scores)
            scores *= self.scales[first : first + len(rows)]  # per chunk, on this thread while cached

    def score_vector(self, vector: np.ndarray) -> np.ndarray:
        """Cosine similarity of a unit query vector to every chunk (float32 [chunks])."""
        query = np.ascontiguousarray(vector, dtype=np.float32)
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
