"""A Llama-architecture model as the fused graph needs it: shape, rope, and named weights.

Two sources: a Hugging Face folder (safetensors, any float dtype) and a GGUF file (raw
blocks kept, so that `gguf-exact` can carry them over). Weights are named as in
Hugging Face (`model.layers.0.self_attn.q_proj.weight`, [out, in]) whatever the source.
Neither source is read into memory up front: GGUF blocks stay memory-mapped and safetensors
tensors are read one at a time when asked for, so a build holds one float tensor at a time
(a 1B model in float32 is 5 GB; docs/MEASUREMENTS.md#builder-memory).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from bundler.errors import BuildError
from bundler.gguf_reader import GgufTensor, read_gguf
from bundler.model_spec import ModelSpec, spec_from_gguf, spec_from_hf_config



@dataclass
class SafetensorsTensor:
    """One tensor of a safetensors file, read (and converted to float32) each time it is asked for."""

    file: Path
    name: str
    shape: tuple[int, ...]

    def dequantize(self) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as handle:
            return handle.get_tensor(self.name).float().numpy()


Weight = Union[GgufTensor, SafetensorsTensor, np.ndarray]


@dataclass
class LlamaWeights:
    spec: ModelSpec
    tensors: dict[str, Weight]
    source: Path
    kind: str  # "gguf" or "hf"

    def float(self, name: str) -> np.ndarray:
        tensor = self.tensors[name]
        return tensor if isinstance(tensor, np.ndarray) else tensor.dequantize()

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
    if "token_embd.weight" not in gguf.tensors:
        raise BuildError(path, "missing tensor token_embd.weight")
    spec = spec_from_gguf(meta, gguf.tensors["token_embd.weight"].shape[0], "output.weight" in gguf.tensors, path)
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


def _unpermute(tensor: GgufTensor, spec: ModelSpec) -> GgufTensor:
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
    spec = spec_from_hf_config(config, config_path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise BuildError(path, "no *.safetensors weights")
    from safetensors import safe_open

    tensors: dict[str, Weight] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    tensors[name] = SafetensorsTensor(file, name, tuple(handle.get_slice(name).get_shape()))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise BuildError(file, f"unreadable safetensors file ({exc})") from None
    if "lm_head.weight" in tensors and spec.tied_embeddings:
        del tensors["lm_head.weight"]
    if "lm_head.weight" not in tensors:
        spec.tied_embeddings = True
    return LlamaWeights(spec, tensors, path, "hf")
