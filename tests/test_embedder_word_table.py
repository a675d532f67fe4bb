"""The embedder's word table as int8 rows gathered per run: the same sums as the dequantized table."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bundler.embedder_word_table import compact_word_table, quantize_rows

VOCAB, HIDDEN, POSITIONS = 50, 16, 12


def _embedding_graph(word: np.ndarray, rng) -> onnx.ModelProto:
    """input ids -> EmbedLayerNormalization, as ONNX Runtime's BERT fusion leaves it."""
    inits = [
        numpy_helper.from_array(word, "word"),
        numpy_helper.from_array(rng.standard_normal((POSITIONS, HIDDEN)).astype(np.float32), "position"),
        numpy_helper.from_array(rng.standard_normal((2, HIDDEN)).astype(np.float32), "segment"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["token_type_ids"], ["segments32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["attention_mask"], ["mask32"], to=TensorProto.INT32),
        helper.make_node("EmbedLayerNormalization", ["ids32", "segments32", "word", "position", "segment", "gamma", "beta", "mask32"],
                         ["hidden", "mask_index"], domain="com.microsoft", epsilon=1e-12),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "token_type_ids", "attention_mask")]
    graph = helper.make_graph(nodes, "embed", inputs, [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["hidden"], feed)[0]


def test_gathered_int8_rows_give_the_sums_of_the_dequantized_table():
    rng = np.random.default_rng(3)
    word = (rng.standard_normal((VOCAB, HIDDEN)) * rng.uniform(0.01, 2.0, (VOCAB, 1))).astype(np.float32)
    ids = np.array([[1, 49, 7, 7, 0, 0], [3, 2, 48, 11, 30, 5]], dtype=np.int64)  # repeats, the last row, padding
    feed = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": (ids > 0).astype(np.int64)}
    compact = _embedding_graph(word, np.random.default_rng(4))
    compact_word_table(compact)
    codes, scales = quantize_rows(word)
    dequantized = _embedding_graph(codes.astype(np.float32) * scales, np.random.default_rng(4))

    assert not any(init.data_type == TensorProto.FLOAT and list(init.dims) == [VOCAB, HIDDEN] for init in compact.graph.initializer)
    np.testing.assert_allclose(_run(compact, feed), _run(dequantized, feed), rtol=0, atol=1e-6)
    # and a one-token run, and one id alone in a batch of one
    one = {name: value[:1, :1] for name, value in feed.items()}
    np.testing.assert_allclose(_run(compact, one), _run(dequantized, one), rtol=0, atol=1e-6)
    # close to the float table: each row within half a step of its own scale
    float_table = _run(_embedding_graph(word, np.random.default_rng(4)), feed)
    assert np.abs(_run(compact, feed) - float_table).max() < 0.05


def test_rows_are_scaled_to_their_own_peak():
    rng = np.random.default_rng(5)
    table = rng.standard_normal((20, 8)).astype(np.float32) * np.logspace(-3, 1, 20, dtype=np.float32)[:, None]
    codes, scales = quantize_rows(table)
    assert codes.dtype == np.int8 and scales.shape == (20, 1)
    assert (np.abs(codes).max(axis=1) == 127).all()  # every row uses its full range, small rows too
    assert (np.abs(codes * scales - table) <= scales / 2 + 1e-7).all()


def test_a_graph_without_the_fused_embedding_is_refused():
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="EmbedLayerNormalization"):
        compact_word_table(helper.make_model(graph))
