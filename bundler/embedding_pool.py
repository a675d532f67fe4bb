"""Embedding many chunk texts for the index build: one text per ONNX run, on one single-threaded
session per core, all running at once.

One text per run pads nothing, and makes each vector a function of its own text only: the int8
embedder quantizes its activations with one scale per run, so in a batch a vector moved with its
batch-mates (cosine down to 0.987 between two batchings). Single-threaded sessions side by side keep
every core busy without the synchronisation of intra-op threads on short operators. Measured on
examples/python-docs in one run (docs/MEASUREMENTS.md#embedder-recipe): 5,020 document tokens per
CPU second against 3,285 for token-length batches of one document on a two-thread session.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from runtime.dense_search import SentenceEncoder, encoder_session_options


def default_workers() -> int:
    """The cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class EmbeddingPool:
    """`workers` SentenceEncoders over the same model, each on its own single-threaded session."""

    def __init__(self, model: Path, tokenizer: Path, max_length: int, workers: int | None = None):
        self.workers = workers or default_workers()
        options = encoder_session_options(threads=1)
        self.encoders = [
            SentenceEncoder(ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]),
                            Tokenizer.from_file(str(tokenizer)), max_length)
            for _ in range(self.workers)
        ]

    def encode_each(self, texts: list[str], report: Callable[[int, int], None] = lambda done, total: None) -> np.ndarray:
        """float32 [len(texts), dim] unit vectors in input order, each text embedded on its own.

        Longest texts first, so the workers finish together; report(done, total) is called as texts
        finish (from the calling thread) and at the end.
        """
        if self.workers == 1 or not texts:
            return self.encoders[0].encode_many(texts, report)
        lengths = [len(e.ids) for e in self.encoders[0].tokenizer.encode_batch(texts)]
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
        free = list(self.encoders)  # each worker thread takes one encoder for good
        mine = threading.local()

        def embed(i: int) -> np.ndarray:
            if not hasattr(mine, "encoder"):
                mine.encoder = free.pop()  # list.pop is atomic under the GIL
            return mine.encoder.encode([texts[i]])[0]

        out: np.ndarray | None = None
        with ThreadPoolExecutor(self.workers) as pool:
            for done, (i, vector) in enumerate(zip(order, pool.map(embed, order))):
                if done % 64 == 0:
                    report(done, len(texts))
                if out is None:
                    out = np.empty((len(texts), len(vector)), dtype=np.float32)
                out[i] = vector
        report(len(texts), len(texts))
        return out
