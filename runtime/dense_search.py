"""Sentence embeddings with ONNX Runtime + tokenizers, and cosine search over int8 chunk vectors."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from runtime import index_files

# Upcasting int8 vectors in blocks keeps the float32 working set small (cache-sized) at any index size.
_BLOCK = 8192


class SentenceEncoder:
    """Mean-pooled, L2-normalised token embeddings (the all-MiniLM-L6-v2 recipe)."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, max_length: int):
        self.session = session
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        self.input_names = {i.name for i in session.get_inputs()}

    @classmethod
    def from_bundle(cls, bundle, max_length: int, threads: int | None = None) -> "SentenceEncoder":
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
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
    """Per-row symmetric int8: vectors ≈ q * scale[:, None]."""
    peak = np.maximum(np.abs(vectors).max(axis=1), 1e-12)
    scales = (peak / 127.0).astype(np.float32)
    return np.round(vectors / scales[:, None]).astype(np.int8), scales


class DenseSearch:
    def __init__(self, encoder: SentenceEncoder, vectors: np.ndarray, scales: np.ndarray):
        self.encoder = encoder
        self.vectors = vectors
        self.scales = scales

    @classmethod
    def from_bundle(cls, bundle, max_length: int, threads: int | None = None) -> "DenseSearch":
        return cls(
            SentenceEncoder.from_bundle(bundle, max_length, threads),
            bundle.array(index_files.DENSE_VECTORS),
            bundle.array(index_files.DENSE_SCALES),
        )

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of the query to every chunk."""
        query_vector = self.encoder.encode([query])[0]
        out = np.empty(len(self.vectors), dtype=np.float32)
        for start in range(0, len(self.vectors), _BLOCK):
            block = self.vectors[start : start + _BLOCK].astype(np.float32)
            out[start : start + _BLOCK] = block @ query_vector
        return out * self.scales
