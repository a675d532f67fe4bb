"""Tiny Llama-3.2-shaped models for the fused room: an HF folder and a GGUF with exact blocks."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "fused"
TINY_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"],
    "vocab_size": 320, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 2048, "tie_word_embeddings": True,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "torch_dtype": "float32",
}


def _key(*parts) -> str:
    text = json.dumps(parts, sort_keys=True) + Path(__file__).read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_tiny_hf(folder: Path, config: dict, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    with torch.no_grad():
        # Random init gives near-uniform logits; larger weights make greedy choices decisive.
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(6.0)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (what its converter writes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, hf_folder: Path, types: dict[str, str]) -> Path:
    """A GGUF of the tiny model; `types` maps a tensor-name fragment to its GGUF type (default F32)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((hf_folder / "config.json").read_text())
    state = load_file(str(hf_folder / "model.safetensors"))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, value in state.items():
        if name in names:
            gname = names[name]
        else:
            layer, rest = name.split(".")[2], ".".join(name.split(".")[3:-1])
            gname = f"blk.{layer}.{parts[rest]}.weight"
        if "attn_q" in gname:
            value = _permute(value, config["num_attention_heads"])
        elif "attn_k" in gname:
            value = _permute(value, config["num_key_value_heads"])
        kind = next((t for frag, t in types.items() if frag in gname), "F32")
        qtype = gguf.GGMLQuantizationType[kind]
        if value.ndim == 1 or kind == "F32":
            writer.add_tensor(gname, value.astype(np.float32))
        elif kind == "F16":
            writer.add_tensor(gname, value.astype(np.float16))
        else:
            writer.add_tensor(gname, gguf.quants.quantize(value.astype(np.float32), qtype),
                              raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


GGUF_TYPES = {"token_embd": "Q8_0", "attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "Q4_1",
              "attn_output": "Q4_0", "ffn_gate": "Q4_1", "ffn_up": "Q4_1", "ffn_down": "Q8_0"}


@pytest.fixture(scope="session")
def tiny_hf_model() -> Path:
    folder = CACHE / f"tiny-hf-{_key(TINY_CONFIG)}"
    if not (folder / "config.json").is_file():
        write_tiny_hf(folder, TINY_CONFIG)
    return folder


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf_model) -> Path:
    path = CACHE / f"tiny-{_key(TINY_CONFIG, GGUF_TYPES)}.gguf"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        write_tiny_gguf(tmp, tiny_hf_model, GGUF_TYPES)
        os.replace(tmp, path)
    return path
