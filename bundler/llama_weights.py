"""A Llama-architecture model as the fused graph needs it: shape, rope, and named weights.

Two sources: a Hugging Face folder (safetensors, any float dtype) and a GGUF file (raw
blocks kept, so that `gguf-exact` can carry them over). Weights are named as in
Hugging Face (`model.layers.0.self_attn.q_proj.weight`, [out, in]) whatever the source.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from bundler.errors import BuildError
from bundler.gguf_reader import GgufTensor, read_gguf

# Cos/sin tables are stored in the graph; beyond this many positions they cost more
# memory than an edge device spends on context anyway.
MAX_ROPE_POSITIONS = 16384


@dataclass
class LlamaSpec:
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
        raise ValueError(f"rope scaling {kind!r} is not supported (supported: default, linear, llama3)")

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


Weight = Union[GgufTensor, np.ndarray]


@dataclass
class LlamaWeights:
    spec: LlamaSpec
    tensors: dict[str, Weight]
    source: Path
    kind: str  # "gguf" or "hf"

    def float(self, name: str) -> np.ndarray:
        tensor = self.tensors[name]
        return tensor.dequantize() if isinstance(tensor, GgufTensor) else tensor

    def has(self, name: str) -> bool:
        return name in self.tensors


def load_llama(path: str | Path) -> LlamaWeights:
    path = Path(path)
    if path.is_dir():
        return _load_hf(path)
    return _load_gguf(path)


_GGUF_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _load_gguf(path: Path) -> LlamaWeights:
    gguf = read_gguf(path)
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise BuildError(path, f"architecture {arch!r} is not supported (supported: llama)")
    try:
        heads = int(meta["llama.attention.head_count"])
        hidden = int(meta["llama.embedding_length"])
        embed = gguf.tensors["token_embd.weight"]
        spec = LlamaSpec(
            num_layers=int(meta["llama.block_count"]),
            hidden_size=hidden,
            intermediate_size=int(meta["llama.feed_forward_length"]),
            num_heads=heads,
            num_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
            head_dim=int(meta.get("llama.attention.key_length", hidden // heads)),
            vocab_size=embed.shape[0],
            rms_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
            context_length=int(meta.get("llama.context_length", 2048)),
            tied_embeddings="output.weight" not in gguf.tensors,
        )
    except KeyError as exc:
        raise BuildError(path, f"missing metadata or tensor {exc.args[0]}") from None
    if meta.get("llama.rope.scaling.type", "none") == "linear":
        spec.rope_scaling = {"type": "linear", "factor": float(meta["llama.rope.scaling.factor"])}
    tensors: dict[str, Weight] = {}
    for name, tensor in gguf.tensors.items():
        if name == "rope_freqs.weight":
            spec.rope_factors = tensor.dequantize()
            continue
        tensors[_hf_name(path, name)] = _unpermute(tensor, spec)
    return LlamaWeights(spec, tensors, path, "gguf")


def _hf_name(path: Path, name: str) -> str:
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}"
    raise BuildError(path, f"unexpected tensor {name} for a llama model")


def _unpermute(tensor: GgufTensor, spec: LlamaSpec) -> GgufTensor:
    """Undo llama.cpp's interleaving of q/k rows (its rope pairs adjacent dims, HF halves)."""
    if not (tensor.name.endswith("attn_q.weight") or tensor.name.endswith("attn_k.weight")):
        return tensor
    heads = spec.num_heads if "attn_q" in tensor.name else spec.num_kv_heads
    rows = tensor.shape[0]
    order = np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(1, 2).reshape(rows)
    return GgufTensor(tensor.name, tensor.type, tensor.shape, np.ascontiguousarray(tensor.blocks[order]))


def _load_hf(path: Path) -> LlamaWeights:
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise BuildError(config_path, "missing (not a Hugging Face model folder)") from None
    except json.JSONDecodeError as exc:
        raise BuildError(config_path, f"not valid JSON ({exc})") from None
    if config.get("model_type") != "llama":
        raise BuildError(config_path, f"model_type {config.get('model_type')!r} is not supported (supported: llama)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise BuildError(config_path, "attention/MLP biases are not supported")
    heads = config["num_attention_heads"]
    spec = LlamaSpec(
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"],
        rms_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=config.get("rope_theta", 10000.0),
        context_length=config.get("max_position_embeddings", 2048),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling=config.get("rope_scaling"),
    )
    try:
        spec.inverse_frequencies()
    except ValueError as exc:
        raise BuildError(config_path, str(exc)) from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise BuildError(path, "no *.safetensors weights")
    from safetensors.torch import load_file

    tensors: dict[str, Weight] = {}
    for file in files:
        try:
            loaded = load_file(str(file))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise BuildError(file, f"unreadable safetensors file ({exc})") from None
        for name, value in loaded.items():
            tensors[name] = value.float().numpy()
    if "lm_head.weight" in tensors and spec.tied_embeddings:
        del tensors["lm_head.weight"]
    if "lm_head.weight" not in tensors:
        spec.tied_embeddings = True
    return LlamaWeights(spec, tensors, path, "hf")
