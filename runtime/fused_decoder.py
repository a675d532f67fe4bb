"""Decoder for the fused GroupQueryAttention graph (graph "fused-gqa").

One preallocated KV buffer per layer is bound as both the past input and the present
output, so a step writes in place and rolling back (speculative decoding) only moves the
valid length: stale slots beyond it are overwritten by the next step.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort

from runtime import kquant_expand
from runtime.bundle import DirectoryBundle
from runtime.decoder import MODEL_ONNX, Decoder, context_limit
from runtime.memory import PREFILL_CHUNK
from runtime.page_release import paging_out, prefetch_file_pages, release_file_pages

# KV cache element types a fused graph may declare: float32 as built; float16 where
# bench/probe_kv_precision.py rewrites it (docs/MEASUREMENTS.md#kv-cache-precision)
CACHE_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def session_options(threads: Optional[int]) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Decode steps are a few hundred microseconds of work per node: spinning threads keep
    # up with them, sleeping ones pay a wake-up each time.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return options


def _open_session(bundle, name: str, options: ort.SessionOptions, **derive) -> ort.InferenceSession:
    """The session of `name`, its weight pages paged out while it is made and released once it exists:
    those of the bundle (or model folder) and of the K-quant tensors computed for it, while the
    latter's temporary file still has a name (runtime/page_release.py). What the session still maps it
    reads in place (the embedding lookup): those pages are read back into the page cache, so that a
    token's first lookup is not a disk read (measured for a 1B model: 520-token prefill 7.94 -> 7.32 s
    in a fresh process). `derive`: kquant_expand.derived_tensors's options."""
    with kquant_expand.derived_tensors(bundle, **derive) as derived:
        weights = [bundle.path] if derived is None else [bundle.path, derived]
        with paging_out(*weights):
            session = bundle.onnx_session(name, options, derived)
        release_file_pages(*weights)
        prefetch_file_pages(*weights)
    return session


def cache_buffer(shape: tuple, dtype) -> np.ndarray:
    """A zeroed array in ordinary pages, for one layer's keys or values.

    numpy asks for transparent huge pages on large arrays (madvise MADV_HUGEPAGE), so the first token
    written into each head's stretch of the cache made 2 MB resident: +192 MB at the first call of a 1B
    model with a 4,096-token context, where anonymous memory in small pages grows with the tokens
    cached (+5 MB; docs/MEASUREMENTS.md#runtime-memory)."""
    count = int(np.prod(shape))
    pages = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))  # anonymous: zeroed by the kernel
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # also where the system gives huge pages unasked
        pages.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(pages, dtype=dtype, count=count).reshape(shape)


class FusedDecoder(Decoder):
    """See runtime.decoder.Decoder; computes only the logits rows asked for."""

    # Attention scores alone are heads x chunk x context x 4 B (32 x 1,500 x 1,500 = 288 MB for a 1B
    # model fed 1,500 tokens at once; 98 MB in chunks of 512), and rows do not depend on how many are
    # fed (docs/MEASUREMENTS.md#runtime-memory).
    prefill_chunk = PREFILL_CHUNK

    def __init__(self, session: ort.InferenceSession, num_layers: int, num_kv_heads: int,
                 head_dim: int, max_length: int):
        self.session = session
        self.max_length = max_length
        self.length = 0
        shape = (1, num_kv_heads, max_length, head_dim)
        first = next(i for i in session.get_inputs() if i.name.startswith("past_key_values."))
        dtype = CACHE_TYPES[first.type]
        self._cache = []
        self._binding = session.io_binding()
        # Bound first so that it stays output 0: IO binding returns outputs in binding order.
        self._binding.bind_output("logits", "cpu")
        for layer in range(num_layers):
            for part in ("key", "value"):
                buffer = ort.OrtValue.ortvalue_from_numpy(cache_buffer(shape, dtype))
                self._cache.append(buffer)
                self._binding.bind_ortvalue_input(f"past_key_values.{layer}.{part}", buffer)
                self._binding.bind_ortvalue_output(f"present.{layer}.{part}", buffer)

    @classmethod
    def from_bundle(cls, bundle, threads: int | None = None, max_length: int | None = None) -> "FusedDecoder":
        info = bundle.model
        session = _open_session(bundle, MODEL_ONNX, session_options(threads))
        return cls(session, info.num_layers, info.num_kv_heads, info.head_dim, context_limit(bundle, max_length))

    @classmethod
    def from_model_dir(cls, model_dir, threads: int | None = None, max_length: int = 2048) -> "FusedDecoder":
        """Open `model_dir/model.onnx` directly, reading the cache shape from the graph."""
        folder = DirectoryBundle(Path(model_dir))
        session = _open_session(folder, "model.onnx", session_options(threads), prefix="")
        keys = [i for i in session.get_inputs() if i.name.startswith("past_key_values.") and i.name.endswith(".key")]
        _, kv_heads, _, head_dim = keys[0].shape
        return cls(session, len(keys), kv_heads, head_dim, max_length)

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def forward(self, ids: list[int], rows: int | None = None) -> np.ndarray:
        """Logits [rows, vocab] for the last `rows` of `ids` (all of them by default)."""
        count = len(ids)
        self._check_room(count)
        total = self.length + count
        rows = count if rows is None else max(1, min(rows, count))
        binding = self._binding
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", np.array([total - 1], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(total, dtype=np.int32))
        binding.bind_cpu_input("logits_rows", np.array([rows], dtype=np.int64))
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding)
        self.length = total
        return binding.get_outputs()[0].numpy()
