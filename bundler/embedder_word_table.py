"""The embedder's word-embedding table stored as int8 rows with one float32 scale per row.

The fused graph's EmbedLayerNormalization reads a float table of 30,522 x 384 (47 MB, two thirds of
the file, which every bundle carries). It takes no precomputed word vectors, so the table it is
given becomes, per run, only the rows of that run's tokens: Gather the int8 rows and their scales
by token id, dequantize them, and give the operator positions 0..n-1 into that small table instead
of the token ids. The operator's sum, layer norm and mask output are unchanged, and only standard
operators are added (Gather, Cast, Mul, Range, Reshape), so it runs on every target's ONNX Runtime
(GatherBlockQuantized needs 1.20; the bullseye targets have 1.19).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LEVELS = 127  # symmetric int8 per row: row ≈ q * scale, |q| <= LEVELS


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 [rows, dim], float32 [rows, 1]) with table ≈ q * scale, each row scaled to its own peak."""
    scales = (np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-12) / LEVELS).astype(np.float32)
    quantized = np.clip(np.round(table / scales), -LEVELS, LEVELS).astype(np.int8)
    return quantized, scales


def compact_word_table(model: onnx.ModelProto) -> None:
    """Replaces the float word table of the graph's EmbedLayerNormalization by int8 rows + row
    scales gathered per run, in place. Raises ValueError if the graph has no such operator reading
    a float initializer."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    embed = next((node for node in graph.node if node.op_type == "EmbedLayerNormalization"), None)
    if embed is None or embed.input[2] not in initializers or initializers[embed.input[2]].data_type != TensorProto.FLOAT:
        raise ValueError("the embedder graph has no EmbedLayerNormalization reading a float word table")
    table = initializers[embed.input[2]]
    quantized, scales = quantize_rows(numpy_helper.to_array(table))
    name = table.name
    graph.initializer.remove(table)
    graph.initializer.extend([
        numpy_helper.from_array(quantized, f"{name}_int8"),
        numpy_helper.from_array(scales, f"{name}_row_scale"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}_flat_shape"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), f"{name}_zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), f"{name}_one"),
    ])
    ids = embed.input[0]
    prefix = f"{name}_per_run"

    def out(step: str) -> str:
        return f"{prefix}_{step}"

    nodes = [
        helper.make_node("Reshape", [ids, f"{name}_flat_shape"], [out("ids")], name=out("ids")),
        helper.make_node("Gather", [f"{name}_int8", out("ids")], [out("codes")], name=out("codes"), axis=0),
        helper.make_node("Gather", [f"{name}_row_scale", out("ids")], [out("scales")], name=out("scales"), axis=0),
        helper.make_node("Cast", [out("codes")], [out("codes_float")], name=out("codes_float"), to=TensorProto.FLOAT),
        helper.make_node("Mul", [out("codes_float"), out("scales")], [out("rows")], name=out("rows")),
        # positions 0..n-1 into those rows, in the ids' shape and type
        helper.make_node("Size", [ids], [out("count")], name=out("count")),
        helper.make_node("Range", [f"{name}_zero", out("count"), f"{name}_one"], [out("positions")], name=out("positions")),
        helper.make_node("Cast", [out("positions")], [out("positions_int32")], name=out("positions_int32"), to=TensorProto.INT32),
        helper.make_node("Shape", [ids], [out("ids_shape")], name=out("ids_shape")),
        helper.make_node("Reshape", [out("positions_int32"), out("ids_shape")], [out("row_ids")], name=out("row_ids")),
    ]
    embed.input[0] = out("row_ids")
    embed.input[2] = out("rows")
    at = list(graph.node).index(embed)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
