"""The tiny ONNX graph the runtime scores dense vectors with (the runtime cannot import onnx)."""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from runtime.dense_search import QUERY_ZERO_POINT


def write_scorer(path: Path, dim: int) -> None:
    """scores[1, n] = ((query - 128) @ vectors) * scales, integer product, float scaling."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMulInteger", ["query", "vectors", "query_zero_point"], ["products"]),
            helper.make_node("Cast", ["products"], ["products_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["products_float", "scales"], ["scores"]),
        ],
        "dense_scorer",
        [
            helper.make_tensor_value_info("query", TensorProto.UINT8, [1, dim]),
            helper.make_tensor_value_info("vectors", TensorProto.INT8, [dim, "chunks"]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, ["chunks"]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "chunks"])],
        [helper.make_tensor("query_zero_point", TensorProto.UINT8, [], [QUERY_ZERO_POINT])],
    )
    # opset 13 / IR 7: old enough for every onnxruntime a target profile may pin (>= 1.19)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
