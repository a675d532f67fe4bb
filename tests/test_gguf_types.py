"""Every GGUF tensor type a Llama 3.2 release uses is carried into the fused graph exactly.

The `gguf` package has no quantizer for the K types, so the tensors here are random bytes in
each type's block layout (tests.fixtures_fused.random_tensor_bytes): the oracle is
`gguf.quants.dequantize` of those very bytes.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from bundler.block_quant import from_gguf
from bundler.errors import BuildError
from bundler.fused_export import save_model
from bundler.fused_graph import QuantizationPlan, build_graph
from bundler.gguf_reader import BLOCK_TYPES, FLOAT_TYPES, GgufTensor, read_gguf
from bundler.llama_weights import load_llama
from bundler.torch_reference import reference_logits
from runtime.fused_decoder import FusedDecoder
from tests.onnx_weights import graph_weights, load_model_folder
from tests.gguf_files import TYPED_SHAPE, random_tensor_bytes, write_typed_gguf

# llama.cpp's Q4_K_M recipe in miniature: mixed layouts inside one fused q/k/v and gate/up.
Q4_K_M = {"token_embd": "Q6_K", "attn_q": "Q4_K", "attn_k": "Q4_K", "attn_v": "Q6_K", "attn_output": "Q4_K",
          "ffn_gate": "Q4_K", "ffn_up": "Q5_0", "ffn_down": "Q8_0"}
PROMPT = [int(i) for i in np.random.default_rng(5).integers(0, TYPED_SHAPE["vocab"], 24)]
ALL_TYPES = BLOCK_TYPES + FLOAT_TYPES


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_block_types_dequantize_exactly_as_the_gguf_package(qtype):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rows, cols = 24, 512
    raw = random_tensor_bytes(qtype, rows, cols, np.random.default_rng(len(qtype)))
    expected = dequantize(raw, GGMLQuantizationType[qtype]).reshape(rows, cols)
    weight = from_gguf(GgufTensor("w", qtype, (rows, cols), raw))
    assert weight.bits in (4, 8) and weight.block in (16, 32)
    assert np.array_equal(weight.dequantize(), expected)
    assert np.abs(expected).max() > 0  # the layout was filled, not zeros


@pytest.fixture(scope="module")
def typed_model(tmp_path_factory):
    """types label -> (gguf path, model folder); built on first use."""
    root = tmp_path_factory.mktemp("typed")
    built = {}

    def get(label: str, types: dict[str, str]):
        if label not in built:
            path = write_typed_gguf(root / f"{label}.gguf", types)
            folder = root / label
            folder.mkdir()
            # Float32 activations: a wiring mistake then shows as more than float rounding.
            plan = QuantizationPlan("gguf-exact", accuracy_level=0)
            save_model(build_graph(load_llama(path), plan, compact=True), folder)
            built[label] = (path, folder)
        return built[label]

    return get


CASES = [(t, {"": t}) for t in ALL_TYPES] + [("Q4_K_M", Q4_K_M)]


@pytest.mark.parametrize("label,types", CASES, ids=[c[0] for c in CASES])
def test_every_llama_3_2_gguf_type_is_carried_exactly_and_runs(typed_model, label, types):
    path, folder = typed_model(label, types)
    weights = load_llama(path)
    found, table = graph_weights(load_model_folder(folder))

    def expect(name: str) -> np.ndarray:
        return weights.float(name)

    expected = []
    for layer in range(weights.spec.num_layers):
        p = f"model.layers.{layer}."
        expected += [expect(p + f"self_attn.{x}_proj.weight") for x in "qkv"]
        expected += [expect(p + "self_attn.o_proj.weight")]
        expected += [expect(p + "mlp.gate_proj.weight"), expect(p + "mlp.up_proj.weight")]
        expected += [expect(p + "mlp.down_proj.weight")]
    embedding = expect("model.embed_tokens.weight")
    assert np.array_equal(table, embedding)
    if label in FLOAT_TYPES:
        assert not found  # float weights stay float MatMuls
    else:
        # Fused q/k/v and gate/up come as one MatMulNBits where the parts share a layout.
        carried = np.concatenate([w.ravel() for w in found[:-1]])
        assert np.array_equal(carried, np.concatenate([w.ravel() for w in expected]))
        assert np.array_equal(found[-1], embedding)  # the tied lm_head reads the same blocks

    reference = reference_logits(weights, PROMPT)
    decoder = FusedDecoder.from_model_dir(folder, threads=2, max_length=64)
    logits = decoder.forward(PROMPT)
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()


def test_iq_types_are_refused_with_one_line_naming_type_and_alternative(tmp_path):
    import gguf

    path = tmp_path / "iq.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    raw = np.random.default_rng(0).integers(0, 256, (4, 256 // 32 * 18), dtype=np.uint8)
    writer.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(BuildError) as error:
        read_gguf(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "blk.0.attn_q.weight has type IQ4_NL" in message and "Q4_K_M" in message
