"""The ONNX graph that scores every chunk against a query, holding the chunk vectors.

The runtime cannot import onnx, so the builder writes it. The vectors are a constant of the
graph rather than an input: ONNX Runtime then packs them for its int8 kernel once, when the
session opens, instead of on every query (measured 2.3x faster at 100k chunks).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.dense_search import QUERY_ZERO_POINT


def write_scorer(path: Path, vectors: np.ndarray, scales: np.ndarray) -> None:
    """scores[1, chunks] = ((query - 128) @ vectors) * scales; vectors int8 [dim, chunks]."""
    dim, chunks = vectors.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMulInteger", ["query", "vectors", "query_zero_point"], ["products"]),
            helper.make_node("Cast", ["products"], ["products_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["products_float", "scales"], ["scores"]),
        ],
        "dense_scorer",
        [helper.make_tensor_value_info("query", TensorProto.UINT8, [1, dim])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, chunks])],
        [
            helper.make_tensor("query_zero_point", TensorProto.UINT8, [], [QUERY_ZERO_POINT]),
            numpy_helper.from_array(np.ascontiguousarray(vectors, dtype=np.int8), "vectors"),
            numpy_helper.from_array(np.ascontiguousarray(scales, dtype=np.float32), "scales"),
        ],
    )
    # opset 13 / IR 7: old enough for every onnxruntime a target profile may pin (>= 1.19)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
