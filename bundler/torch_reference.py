"""PyTorch (transformers) model with a source's float weights: the reference for checking
fast graphs and for the quality gate's source perplexity."""
from __future__ import annotations


import numpy as np

from bundler.llama_weights import LlamaWeights


def reference_model(weights: LlamaWeights):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = weights.spec
    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, rms_norm_eps=spec.rms_eps,
        rope_theta=spec.rope_theta, max_position_embeddings=spec.context_length,
        tie_word_embeddings=spec.tied_embeddings, attention_bias=False, mlp_bias=False,
    )
    model = LlamaForCausalLM(config).eval()
    state = {name: torch.from_numpy(np.array(weights.float(name), dtype=np.float32)) for name in weights.tensors}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if spec.tied_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    if spec.tied_embeddings:
        model.tie_weights()
    # The spec's rope (including GGUF rope_freqs factors) replaces transformers' own computation.
    model.model.rotary_emb.inv_freq = torch.from_numpy(spec.inverse_frequencies())
    model.model.rotary_emb.attention_scaling = 1.0
    return model


def reference_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
