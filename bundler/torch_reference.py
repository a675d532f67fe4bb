"""PyTorch (transformers) forward pass with a source's float weights: the reference for checking
fast graphs and for the quality gate's source perplexity.

It runs one transformers `LlamaDecoderLayer` at a time, each made on the meta device and given that
layer's weights only, so memory holds the float32 embedding table plus one layer (a whole 1B
model in float32 is 5 GB, a 3B one 13 GB; docs/MEASUREMENTS.md#builder-memory).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from bundler.llama_weights import LlamaWeights


def _config(weights: LlamaWeights):
    from transformers import LlamaConfig

    spec = weights.spec
    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, rms_norm_eps=spec.rms_eps,
        rope_theta=spec.rope_theta, max_position_embeddings=spec.context_length,
        tie_word_embeddings=spec.tied_embeddings, attention_bias=False, mlp_bias=False,
    )
    config._attn_implementation = "sdpa"  # causal without a mask tensor of [S, S]
    return config


def reference_logits(weights: LlamaWeights, ids: list[int],
                     layer_done: Callable[[int], None] = lambda layers: None) -> np.ndarray:
    """Float32 logits [len(ids), vocab] of the model `weights` describes, on one sequence;
    `layer_done(n)` is called after the n-th layer."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

    spec = weights.spec
    config = _config(weights)
    embedding = torch.from_numpy(_writable(weights.float("model.embed_tokens.weight")))
    positions = torch.arange(len(ids))
    # The spec's rope (including GGUF rope_freqs factors), laid out as transformers' rotary embedding.
    angles = positions[:, None].float() * torch.from_numpy(spec.inverse_frequencies())[None, :]
    angles = torch.cat([angles, angles], dim=-1)[None]
    rotary = (angles.cos(), angles.sin())
    with torch.no_grad():
        hidden = embedding[torch.tensor(ids)][None]
        for layer in range(spec.num_layers):
            prefix = f"model.layers.{layer}."
            with torch.device("meta"):
                block = LlamaDecoderLayer(config, layer).eval()
            state = {name[len(prefix):]: torch.from_numpy(np.array(weights.float(name), dtype=np.float32))
                     for name in weights.tensors if name.startswith(prefix)}
            block.load_state_dict(state, strict=True, assign=True)
            out = block(hidden, attention_mask=None, position_ids=positions[None], position_embeddings=rotary)
            hidden = out[0] if isinstance(out, tuple) else out
            del block, state
            layer_done(layer + 1)
        norm = LlamaRMSNorm(spec.hidden_size, eps=spec.rms_eps)
        norm.weight.copy_(torch.from_numpy(_writable(weights.float("model.norm.weight"))))
        hidden = norm(hidden)[0]
        head = (torch.from_numpy(_writable(weights.float("lm_head.weight"))) if weights.has("lm_head.weight")
                else embedding)
        return (hidden @ head.T).numpy()


def _writable(values: np.ndarray) -> np.ndarray:
    """`values`, copied only when read-only (a GGUF's float32 tensors are views of the mapped file):
    torch warns on every build about tensors made from read-only arrays."""
    return values if values.flags.writeable else np.array(values)
