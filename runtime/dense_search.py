"""Sentence embeddings with ONNX Runtime + tokenizers, and cosine search over int8 chunk vectors."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from runtime import index_files

# Chunk vectors use 7 bits: x86 CPUs without VNNI multiply uint8 x int8 pairs into saturating int16
# sums (255 * 64 * 2 fits, 255 * 128 * 2 does not), so full-range int8 could overflow there.
VECTOR_LEVELS = 63
QUERY_ZERO_POINT = 128


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
        session = bundle.onnx_session(index_files.DENSE_MODEL, options)
        tokenizer = Tokenizer.from_str(bytes(bundle.read(index_files.DENSE_TOKENIZER)).decode("utf-8"))
        return cls(session, tokenizer, max_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim] unit vectors. Texts of similar length batch best."""
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
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
    """Per-row symmetric 7-bit: vectors ≈ q * scale[:, None]; q is returned transposed [dim, rows]."""
    peak = np.maximum(np.abs(vectors).max(axis=1), 1e-12)
    scales = (peak / VECTOR_LEVELS).astype(np.float32)
    quantized = np.round(vectors / scales[:, None]).astype(np.int8)
    return np.ascontiguousarray(quantized.T), scales


def quantize_query(vector: np.ndarray) -> tuple[np.ndarray, float]:
    """uint8 [1, dim] around zero point 128, and its scale."""
    scale = max(float(np.abs(vector).max()), 1e-12) / 127.0
    return (np.round(vector / scale) + QUERY_ZERO_POINT).astype(np.uint8)[None, :], scale


class DenseSearch:
    """Scores all chunks with one int8 MatMulInteger in ONNX Runtime, whose graph holds the chunk
    vectors: NumPy has no int8 kernels, and upcasting the vectors costs more than the product."""

    def __init__(self, encoder: SentenceEncoder, scorer: ort.InferenceSession):
        self.encoder = encoder
        self.scorer = scorer

    @classmethod
    def from_bundle(cls, bundle, max_length: int, threads: int | None = None) -> "DenseSearch":
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # A query alternates short ONNX runs with NumPy work; threads left spinning after a run
        # would compete with that work (measured 2x slower hybrid queries on a busy 2-core machine).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return cls(
            SentenceEncoder.from_bundle(bundle, max_length, options),
            bundle.onnx_session(index_files.DENSE_SCORER, options),
        )

    def score_vector(self, vector: np.ndarray) -> np.ndarray:
        """Cosine similarity of a unit query vector to every chunk."""
        query_u8, query_scale = quantize_query(vector)
        return self.scorer.run(None, {"query": query_u8})[0][0] * np.float32(query_scale)

    def scores(self, query: str) -> np.ndarray:
        return self.score_vector(self.encoder.encode([query])[0])
