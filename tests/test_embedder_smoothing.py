"""Smoothing the embedder's quantized products: the float function is unchanged, outliers shrink."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bundler.embedder_smoothing import CALIBRATION_TEXT, calibration_passages, channel_peaks, smooth, smoothable

TOKENS, CHANNELS, OUTPUTS = 12, 16, 8


def _two_products(rng) -> onnx.ModelProto:
    """x -> MatMul(a) -> y1 and x -> MatMul(b) -> Relu -> MatMul(c) -> y2 (the second kept unsmoothed)."""
    weights = {name: rng.standard_normal(shape).astype(np.float32)
               for name, shape in (("a", (CHANNELS, OUTPUTS)), ("b", (CHANNELS, CHANNELS)), ("c", (CHANNELS, OUTPUTS)))}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "a"], ["y1"], name="first"),
         helper.make_node("MatMul", ["x", "b"], ["h"], name="second"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "c"], ["y2"], name="kept")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, TOKENS, CHANNELS])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y1", "y2")],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _inputs(rng, count: int) -> list[dict]:
    feeds = []
    for _ in range(count):
        x = rng.standard_normal((1, TOKENS, CHANNELS)).astype(np.float32)
        x[..., 3] *= 40  # one outlier channel, as in the layer-norm outputs of MiniLM
        feeds.append({"x": x})
    return feeds


def test_smoothing_leaves_the_float_products_unchanged_and_skips_kept_nodes():
    rng = np.random.default_rng(3)
    model = _two_products(rng)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    nodes = smoothable(model, keep={"kept"})
    assert [node.name for node in nodes] == ["first", "second"]
    smooth(model, nodes, channel_peaks(model, nodes, _inputs(rng, 4)))
    ops = [(node.op_type, node.name) for node in model.graph.node]
    assert ops.count(("Mul", "first_smoothing")) == 1 and ops.index(("Mul", "first_smoothing")) < ops.index(("MatMul", "first"))
    assert not any(name == "kept_smoothing" for _, name in ops)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    original = {init.name: numpy_helper.to_array(init) for init in before.graph.initializer}
    assert not np.allclose(weights["a"], original["a"]) and np.array_equal(weights["c"], original["c"])
    for feed in _inputs(rng, 3):
        for smoothed, plain in zip(_run(model, feed), _run(before, feed)):
            np.testing.assert_allclose(smoothed, plain, rtol=1e-4, atol=1e-4)


def test_smoothing_shrinks_the_outlier_channel_that_the_products_see():
    rng = np.random.default_rng(5)
    model = _two_products(rng)
    feeds = _inputs(rng, 4)
    nodes = smoothable(model, keep={"kept"})
    before = channel_peaks(model, nodes, feeds)["x"]
    smooth(model, nodes, channel_peaks(model, nodes, feeds))
    after = channel_peaks(model, smoothable(model, keep={"kept"}), feeds)["first_smoothed_input"]
    assert before.max() / np.median(before) > 20
    assert after.max() / np.median(after) < 0.5 * before.max() / np.median(before)


def test_calibration_passages_hold_every_paragraph_once_in_order():
    paragraphs = [p.strip() for p in CALIBRATION_TEXT.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    passages = calibration_passages()
    assert len(passages) > 50  # enough runs for stable channel peaks
    assert "\n\n".join(passages).split("\n\n") == paragraphs
    assert all(len(p) <= 800 or "\n\n" not in p for p in passages)
