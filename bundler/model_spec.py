"""The one description of a model's shape, read once from a GGUF file's metadata or a Hugging Face
config.json, and checked like a careful converter checks what it loads: every size positive, heads
dividing the hidden size, key/value heads dividing the heads, a rope scaling the graphs implement.
The builder's readers (model_source, llama_weights, export_onnx) all take their shapes from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from bundler.errors import BuildError

# Cos/sin tables are stored in the graph; beyond this many positions they cost more
# memory than an edge device spends on context anyway.
MAX_ROPE_POSITIONS = 16384
ROPE_SCALINGS = ("default", "linear", "llama3")
DEFAULT_CONTEXT = 2048  # what a source that states no context is assumed to hold


@dataclass
class ModelSpec:
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_eps: float
    rope_theta: float
    context_length: int
    tied_embeddings: bool
    rope_scaling: Optional[dict] = None
    rope_factors: Optional[np.ndarray] = field(default=None, repr=False)  # GGUF rope_freqs

    def info_fields(self) -> dict:
        """The shape fields of the manifest's ModelInfo, as this spec gives them."""
        return {"num_layers": self.num_layers, "num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
                "head_dim": self.head_dim, "hidden_size": self.hidden_size, "vocab_size": self.vocab_size,
                "context_length": self.context_length}

    def inverse_frequencies(self) -> np.ndarray:
        """Rotary inverse frequencies, with Llama 3 scaling where the model asks for it."""
        dims = np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float32)
        inv = 1.0 / (self.rope_theta ** (dims / self.head_dim))
        if self.rope_factors is not None:
            return (inv / self.rope_factors.astype(np.float32)).astype(np.float32)
        scaling = self.rope_scaling or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            return inv.astype(np.float32)
        if kind == "linear":
            return (inv / scaling["factor"]).astype(np.float32)
        if kind == "llama3":
            return _llama3_frequencies(inv, scaling)
        raise ValueError(f"rope scaling {kind!r} is not supported (supported: {', '.join(ROPE_SCALINGS)})")

    def rotary_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin caches [positions, head_dim/2] for GroupQueryAttention."""
        positions = np.arange(min(self.context_length, MAX_ROPE_POSITIONS), dtype=np.float32)
        angles = positions[:, None] * self.inverse_frequencies()[None, :]
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _llama3_frequencies(inv: np.ndarray, scaling: dict) -> np.ndarray:
    factor = scaling["factor"]
    low = scaling.get("low_freq_factor", 1.0)
    high = scaling.get("high_freq_factor", 4.0)
    original = scaling["original_max_position_embeddings"]
    low_wavelen = original / low
    high_wavelen = original / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def check_spec(spec: ModelSpec, where: str | Path) -> ModelSpec:
    """Refuse, naming the file, a shape no Llama graph can have."""
    sizes = {"layers": spec.num_layers, "hidden size": spec.hidden_size, "FFN size": spec.intermediate_size,
             "attention heads": spec.num_heads, "key/value heads": spec.num_kv_heads, "head size": spec.head_dim,
             "vocabulary": spec.vocab_size, "context": spec.context_length}
    for what, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BuildError(where, f"{what} must be a positive integer, got {value!r}")
    if spec.num_heads % spec.num_kv_heads:
        raise BuildError(where, f"{spec.num_heads} attention heads are not a multiple of {spec.num_kv_heads} "
                                "key/value heads")
    if spec.head_dim % 2:
        raise BuildError(where, f"head size {spec.head_dim} is odd (rotary embeddings pair dimensions)")
    if not (spec.rms_eps > 0 and spec.rope_theta > 0):
        raise BuildError(where, f"rms_norm_eps {spec.rms_eps} and rope_theta {spec.rope_theta} must be positive")
    try:
        spec.inverse_frequencies()
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildError(where, f"rope scaling: {exc}") from None
    return spec


def spec_from_hf_config(config: Mapping, where: str | Path) -> ModelSpec:
    """A Hugging Face LlamaForCausalLM config.json."""
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        spec = ModelSpec(
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config["vocab_size"]),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            context_length=int(config.get("max_position_embeddings", DEFAULT_CONTEXT)),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_scaling=config.get("rope_scaling"),
        )
    except KeyError as exc:
        raise BuildError(where, f"config has no {exc.args[0]}") from None
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise BuildError(where, f"config has a wrong value: {exc}") from None
    return check_spec(spec, where)


def spec_from_gguf(metadata: Mapping, embedding_rows: int, has_output: bool, where: str | Path) -> ModelSpec:
    """A llama GGUF's metadata; the vocabulary is the embedding's row count, tied when there is no
    separate output tensor."""
    try:
        heads = int(metadata["llama.attention.head_count"])
        hidden = int(metadata["llama.embedding_length"])
        spec = ModelSpec(
            num_layers=int(metadata["llama.block_count"]),
            hidden_size=hidden,
            intermediate_size=int(metadata["llama.feed_forward_length"]),
            num_heads=heads,
            num_kv_heads=int(metadata.get("llama.attention.head_count_kv", heads)),
            head_dim=int(metadata.get("llama.attention.key_length", hidden // heads)),
            vocab_size=int(embedding_rows),
            rms_eps=float(metadata["llama.attention.layer_norm_rms_epsilon"]),
            rope_theta=float(metadata.get("llama.rope.freq_base", 10000.0)),
            context_length=int(metadata.get("llama.context_length", DEFAULT_CONTEXT)),
            tied_embeddings=not has_output,
        )
    except KeyError as exc:
        raise BuildError(where, f"missing metadata {exc.args[0]}") from None
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise BuildError(where, f"metadata has a wrong value: {exc}") from None
    if metadata.get("llama.rope.scaling.type", "none") == "linear":
        spec.rope_scaling = {"type": "linear", "factor": float(metadata["llama.rope.scaling.factor"])}
    return check_spec(spec, where)
