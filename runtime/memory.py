"""Memory and threads of a running bundle: one formula, used here and by the build's RAM budget check.

resident = weights x WEIGHTS_RESIDENT_FACTOR + KV cache + prefill activations + index (its embedder twice) + runtime
overhead, where the KV cache is allocated in full at start for the context: min(model's own context,
target profile's, --ctx). Models that declare a huge context (Llama 3.2: 131,072 tokens, 4 GB of fp32
cache for 1B) get DEFAULT_CONTEXT unless a profile says otherwise. The prompt goes in PREFILL_CHUNK
tokens at a time, so the activations are bounded by the chunk, not by the prompt.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from runtime.manifest import Manifest, ModelInfo

MB = 1024 * 1024
DEFAULT_CONTEXT = 4096
# The exported graphs keep the KV cache in float32. A float16 one costs only +0.07% perplexity, but
# onnxruntime's GroupQueryAttention then attends to the keys of the tokens fed in the same call at float32
# and to cached ones at float16, so logits depend on how tokens are grouped into calls and speculative
# decoding stops reproducing plain greedy (docs/MEASUREMENTS.md#kv-cache-precision).
KV_BYTES_PER_VALUE = 4
# Python, numpy, onnxruntime and tokenizers with a session loaded (~70 MB RSS besides the weights,
# bench/bench_startup.py) plus the ~130 MB the stub unpacks at start, which is RAM where /tmp is tmpfs;
# a tiny-model bundle peaks at 245 MB, of which ~41 MB are weights, KV cache and index: ~205 MB of overhead,
# counted here with a margin for the allocator (docs/MEASUREMENTS.md#runtime-memory).
RUNTIME_OVERHEAD_BYTES = 240 * MB
# onnxruntime repacks the MatMulNBits and Gemm weights into its own layout at session start (block sums
# beside the scales) and the runtime then drops the file pages it read (runtime/page_release.py): resident
# weights measured 1.04-1.08x the stored bytes (1B Q4_K_M, Q8_0, Q6_K). Session start itself peaked at
# 1.38-1.50x while packed copies and file pages coexisted (1B Q4_K_M: 1,964 MB, now 1,525 MB with the
# pages paged out during the start), before any KV cache or activation exists: the sum below covers it
# (docs/MEASUREMENTS.md#runtime-memory).
WEIGHTS_RESIDENT_FACTOR = 1.1
# The query embedder keeps its initializers inside index/dense/model.onnx: onnxruntime parses the file and
# copies the tensors out of it, so its session peaks at ~1.75x the file (121 MB for the 69 MB smoothed
# all-MiniLM-L6-v2); the rest of the index is mapped and counted once.
DENSE_MODEL_RESIDENT_FACTOR = 2
# Prompt tokens per forward call while prefilling (the fused decoder's; the optimum graph uses less).
PREFILL_CHUNK = 512
# Float32 activations per prefilled token besides the attention scores (heads x context each): the
# gate/up projection and its product (~3 x 4 x hidden in Llama shapes) and the hidden states.
ACTIVATION_VALUES_PER_HIDDEN = 12


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # resident: stored bytes x WEIGHTS_RESIDENT_FACTOR
    kv_cache: int
    activations: int
    index: int
    overhead: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.index + self.overhead


def kv_bytes_per_token(model: ModelInfo) -> int:
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * KV_BYTES_PER_VALUE


def prefill_activation_bytes(model: ModelInfo, context: int) -> int:
    """Peak activations of one prefill chunk at a full context: the attention scores of every head
    (chunk x context) dominate at long contexts (32 x 512 x 4,096 x 4 B = 256 MB for a 1B model)."""
    chunk = min(PREFILL_CHUNK, context)
    return chunk * 4 * (model.num_heads * context + ACTIVATION_VALUES_PER_HIDDEN * model.hidden_size)


def context_tokens(model: ModelInfo, profile_context: Optional[int] = None, requested: Optional[int] = None) -> int:
    """min(model, profile, requested); DEFAULT_CONTEXT stands in for a missing profile."""
    limits = [model.context_length, profile_context or DEFAULT_CONTEXT]
    if requested:
        limits.append(requested)
    return min(limits)


def bundle_context(manifest: Manifest, requested: Optional[int] = None) -> int:
    """The context a bundle runs with: never more than its build approved."""
    profile = manifest.target_profile.context if manifest.target_profile is not None else None
    return context_tokens(manifest.model, profile, requested)


def bundle_threads(manifest: Manifest, requested: Optional[int] = None) -> Optional[int]:
    """--threads, else the target profile's (at most this machine's cores); None: onnxruntime's default."""
    if requested:
        return requested
    if manifest.target_profile is None:
        return None
    return max(1, min(manifest.target_profile.threads, os.cpu_count() or 1))


def index_resident_bytes(index_folder_bytes: int, dense_model_bytes: int) -> int:
    """The index as a running bundle holds it: mapped arrays once, the embedder's session twice its file."""
    return index_folder_bytes + (DENSE_MODEL_RESIDENT_FACTOR - 1) * dense_model_bytes


def estimate_memory(model: ModelInfo, weights_bytes: int, index_bytes: int, context: int) -> MemoryEstimate:
    """`weights_bytes`: the model folder's stored size."""
    return MemoryEstimate(weights=int(weights_bytes * WEIGHTS_RESIDENT_FACTOR),
                          kv_cache=kv_bytes_per_token(model) * context,
                          activations=prefill_activation_bytes(model, context), index=index_bytes,
                          overhead=RUNTIME_OVERHEAD_BYTES, context=context)
