"""The quality gate's PyTorch reference on a GGUF prints nothing: its float32 tensors are read-only views
of the mapped file, and torch warns (on every build) about tensors made from read-only arrays."""
from __future__ import annotations

import warnings


def test_reference_on_a_gguf_raises_no_warning_and_gives_logits(tiny_gguf):
    from bundler.llama_weights import load_llama
    from bundler.torch_reference import reference_logits

    weights = load_llama(tiny_gguf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits = reference_logits(weights, [1, 2, 3, 4])
    assert [str(w.message) for w in caught] == []
    assert logits.shape == (4, weights.spec.vocab_size)
