"""Per-channel smoothing of the embedder's quantized matrix products (SmoothQuant, Xiao et al. 2023).

Dynamic int8 quantization gives a whole activation tensor one scale, and a few input channels of
all-MiniLM-L6-v2's layer-norm outputs reach 10-15x the others, so the rest get a handful of levels.
Dividing input channel j by s_j and multiplying row j of the weights by s_j leaves the product
unchanged in exact arithmetic and moves part of the outlier into the weights, which are quantized
per output column. s_j = a_j^alpha / w_j^(1-alpha), a_j the channel's peak over calibration text,
w_j the peak of the weight row, rounded to a grid. The division is a Mul node in front of the product: the layer-norm
outputs also feed the residual path, so it cannot be folded into them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# How much of an outlier moves into the weights. Measured on python-docs chunks (fp32 feed-forward
# outputs, everything else int8): 0.5 cosine min 0.968, 0.75 0.9991, 0.9 0.992 against fp32.
ALPHA = 0.75
FACTOR_STEPS = 8  # factors rounded to powers of 2^(1/FACTOR_STEPS)
CALIBRATION_TEXT = Path(__file__).resolve().parent / "data" / "embedder_calibration.txt"
_PASSAGE_CHARS = 800


def calibration_passages(path: Path = CALIBRATION_TEXT) -> list[str]:
    """The calibration text in passages of about _PASSAGE_CHARS characters, paragraphs kept whole."""
    passages, current = [], ""
    for paragraph in path.read_text(encoding="utf-8").split("\n\n"):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if current and len(current) + len(paragraph) > _PASSAGE_CHARS:
            passages.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    return passages + ([current] if current else [])


def smoothable(model: onnx.ModelProto, keep: set[str]) -> list[onnx.NodeProto]:
    """Attention and MatMul nodes with constant weights, except those named in keep."""
    weights = {init.name for init in model.graph.initializer}
    return [node for node in model.graph.node
            if node.op_type in ("Attention", "MatMul") and node.input[1] in weights and node.name not in keep]


def channel_peaks(model: onnx.ModelProto, nodes: list[onnx.NodeProto], feeds: list[dict]) -> dict[str, np.ndarray]:
    """Peak |activation| per input channel of each node's first input, over the runs in feeds."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted({node.input[0] for node in nodes})
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def smooth(model: onnx.ModelProto, nodes: list[onnx.NodeProto], peaks: dict[str, np.ndarray], alpha: float = ALPHA) -> None:
    """Rescales each node's weight rows and divides its input by the same factors, in place."""
    weights = {init.name: init for init in model.graph.initializer}
    for node in nodes:
        weight = numpy_helper.to_array(weights[node.input[1]])
        activation = np.maximum(peaks[node.input[0]], 1e-5)
        row_peak = np.maximum(np.abs(weight).max(axis=1), 1e-5)
        # on a grid of 2^(1/8) steps: peaks that differ in the last bits between CPUs (the calibration
        # runs on the build machine) give the same factors, so the same file. (Whole powers of two
        # cost accuracy: cosine to fp32 mean 0.9993 against 0.9995.)
        exponent = np.round(FACTOR_STEPS * np.log2(activation ** alpha / row_peak ** (1 - alpha))) / FACTOR_STEPS
        factors = np.exp2(exponent).astype(np.float32)
        weights[node.input[1]].CopyFrom(numpy_helper.from_array((weight * factors[:, None]).astype(np.float32), node.input[1]))
        divisor = f"{node.name}_smoothing"
        model.graph.initializer.append(numpy_helper.from_array((1 / factors).astype(np.float32), divisor))
        mul = helper.make_node("Mul", [node.input[0], divisor], [f"{node.name}_smoothed_input"], name=divisor)
        node.input[0] = mul.output[0]
        model.graph.node.insert(list(model.graph.node).index(node), mul)
