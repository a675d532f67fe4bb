"""The language model as a decoder over one sequence with a KV cache.

`Decoder` is the interface generation code uses; each exported graph kind has one
implementation, chosen by the bundle's `model.graph` in `load_decoder`.
"""
from __future__ import annotations

import abc
import importlib
from typing import Optional

import numpy as np
import onnxruntime as ort

from runtime import layout
from runtime.bundle import BundleError

MODEL_ONNX = layout.MODEL_ONNX

# Graph names as manifests record them (model.graph); the builder's registry (bundler/graph_kinds.py)
# writes these names.
OPTIMUM_GRAPH = "optimum-kv"
FUSED_GRAPH = "fused-gqa"
# The fused graph lowered for onnxruntime 1.19 (bundler/fused_lowering.py): same inputs and outputs.
FUSED_PORTABLE_GRAPH = "fused-gqa-portable"
# graph name -> "module:Class"; imported only when a bundle asks for it
IMPLEMENTATIONS = {
    OPTIMUM_GRAPH: "runtime.decoder:OptimumDecoder",
    FUSED_GRAPH: "runtime.fused_decoder:FusedDecoder",
    FUSED_PORTABLE_GRAPH: "runtime.fused_decoder:FusedDecoder",
}


def session_options(threads: Optional[int] = None) -> ort.SessionOptions:
    """Options for a decoder session: `threads` intra-op threads (None: ONNX Runtime's default, one per core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    return options


class Decoder(abc.ABC):
    """One KV cache, one sequence. See docs/ARCHITECTURE.md."""

    length: int
    max_length: int
    # Prompt tokens per forward call while prefilling; None: the whole prompt in one call.
    prefill_chunk: Optional[int] = None

    @classmethod
    @abc.abstractmethod
    def from_bundle(cls, bundle, threads: Optional[int] = None, max_length: Optional[int] = None) -> "Decoder":
        """Open the bundle's model; `max_length` caps the context below the model's own limit."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Empty the cache."""

    @abc.abstractmethod
    def forward(self, ids: list[int], rows: Optional[int] = None) -> np.ndarray:
        """Append `ids` to the cache; logits [rows, vocab] (float32) for the last `rows` of those
        positions (all of them by default). A decoder may compute only the rows asked for."""

    @abc.abstractmethod
    def truncate(self, length: int) -> None:
        """Keep only the first `length` tokens of the cache."""

    def _check_room(self, count: int) -> None:
        if count == 0:
            raise ValueError("forward needs at least one token")
        if self.length + count > self.max_length:
            raise ValueError(f"context full: {self.length} + {count} tokens exceed max_length {self.max_length}")


def context_limit(bundle, max_length: Optional[int]) -> int:
    """min(model, target profile, `max_length`): the KV cache the build's budget approved, or less."""
    from runtime.memory import context_tokens

    profile = bundle.target_profile
    return context_tokens(bundle.model, profile.context if profile is not None else None, max_length)


class OptimumDecoder(Decoder):
    """optimum's `text-generation-with-past` graph: past_key_values.N.key/value in, present.N.* out."""

    # The graph returns logits for every fed position, [chunk, vocab] float32 (49152 × 128 × 4 B =
    # 25 MB): a long prompt must not go in at once.
    prefill_chunk = 128

    def __init__(self, session: ort.InferenceSession, max_length: int):
        self.session = session
        self.max_length = max_length
        inputs = {i.name: i for i in session.get_inputs()}
        self._names = set(inputs)
        self._past_names = sorted(
            (n for n in inputs if n.startswith("past_key_values.")),
            key=lambda n: (int(n.split(".")[1]), n.split(".")[2]),
        )
        self._present_names = ["present." + n[len("past_key_values.") :] for n in self._past_names]
        _, kv_heads, _, head_dim = inputs[self._past_names[0]].shape
        self._empty = np.zeros((1, int(kv_heads), 0, int(head_dim)), dtype=np.float32)
        self._outputs = ["logits"] + self._present_names
        self.reset()

    @classmethod
    def from_bundle(cls, bundle, threads: Optional[int] = None, max_length: Optional[int] = None) -> "OptimumDecoder":
        session = bundle.onnx_session(MODEL_ONNX, session_options(threads))
        return cls(session, context_limit(bundle, max_length))

    def reset(self) -> None:
        self.length = 0
        self._past = [ort.OrtValue.ortvalue_from_numpy(self._empty)] * len(self._past_names)

    def forward(self, ids: list[int], rows: Optional[int] = None) -> np.ndarray:
        count = len(ids)
        self._check_room(count)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if "attention_mask" in self._names:
            feed["attention_mask"] = np.ones((1, self.length + count), dtype=np.int64)
        if "position_ids" in self._names:
            feed["position_ids"] = np.arange(self.length, self.length + count, dtype=np.int64)[None, :]
        feed = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in feed.items()}
        feed.update(zip(self._past_names, self._past))
        # OrtValues in and out: the cache goes from one step to the next without copies into numpy
        logits, *present = self.session.run_with_ort_values(self._outputs, feed)
        self._past = present
        self.length += count
        return logits.numpy()[0][-rows:] if rows else logits.numpy()[0]

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        if length < self.length:
            self._past = [
                ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(p.numpy()[:, :, :length])) for p in self._past
            ]
        self.length = length


def load_decoder(bundle, threads: Optional[int] = None, max_length: Optional[int] = None) -> Decoder:
    graph = bundle.model.graph
    try:
        module_name, class_name = IMPLEMENTATIONS[graph].split(":")
    except KeyError:
        raise BundleError(f"{bundle.path}: model graph {graph!r} is not supported by this runtime "
                          f"(supported: {', '.join(sorted(IMPLEMENTATIONS))})") from None
    implementation = getattr(importlib.import_module(module_name), class_name)
    return implementation.from_bundle(bundle, threads=threads, max_length=max_length)
