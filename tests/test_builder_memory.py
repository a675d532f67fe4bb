"""A builder that fits an ordinary machine: weights are read one tensor at a time and the quality
gate's PyTorch reference runs one layer at a time, giving the same logits as the whole model."""
from __future__ import annotations

import numpy as np

from bundler.llama_weights import SafetensorsTensor, load_llama
from bundler.quality_gate import perplexity_from_logits
from bundler.torch_reference import reference_logits

PROMPT = [1, 17, 450, 3021, 77, 9, 4000, 12, 5, 8, 300, 41, 2048, 7, 7, 99, 1000, 23]


def test_hf_weights_are_read_when_asked_not_when_loaded(tiny_llama_dir):
    from safetensors.numpy import load_file

    weights = load_llama(tiny_llama_dir)
    assert all(isinstance(t, SafetensorsTensor) for t in weights.tensors.values())
    stored = load_file(str(tiny_llama_dir / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    assert weights.tensors[name].shape == stored[name].shape
    assert np.array_equal(weights.float(name), stored[name].astype(np.float32))


def test_layer_by_layer_reference_equals_the_whole_transformers_model(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = whole(torch.tensor([PROMPT])).logits[0].numpy()
    streamed = reference_logits(load_llama(tiny_llama_dir), PROMPT)
    assert streamed.shape == expected.shape
    assert np.abs(streamed - expected).max() <= 1e-5 * np.abs(expected).max()


def test_perplexity_in_row_chunks_equals_the_direct_formula():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((150, 300)) * 4).astype(np.float32)
    ids = [int(i) for i in rng.integers(0, 300, 150)]
    rows = logits[:-1].astype(np.float64)
    rows -= rows.max(axis=-1, keepdims=True)
    direct = np.exp(np.mean(np.log(np.exp(rows).sum(axis=-1)) - rows[np.arange(149), ids[1:]]))
    assert abs(perplexity_from_logits(logits, ids) - direct) <= 1e-9 * direct
