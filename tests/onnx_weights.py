"""Weights read back out of an exported ONNX graph, for comparison with their source."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from bundler.block_quant import NBitsWeight
from runtime import kquant_expand


def graph_weights(model: onnx.ModelProto) -> tuple[list[np.ndarray], np.ndarray]:
    """Dequantize every MatMulNBits weight (with its remainder Gemm) and the embedding table."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers = {name: node for node in model.graph.node for name in node.input}
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        zero = values[node.input[3]].reshape(n, -1) if len(node.input) > 3 else None
        follower = consumers.get(node.output[0])
        remainder = values[follower.input[1]].T if follower is not None and follower.op_type == "Gemm" else None
        weight = NBitsWeight(attrs["bits"], block, n, k, values[node.input[1]],
                             values[node.input[2]].reshape(n, k // block), zero, remainder)
        found.append(weight.dequantize())
    gather = next(n for n in model.graph.node if n.op_type in ("GatherBlockQuantized", "Gather"))
    if gather.op_type == "Gather":
        return found, values[gather.input[0]]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gather.attribute}
    codes = values[gather.input[0]]
    if attrs["bits"] == 4:
        codes = np.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(codes.shape[0], codes.shape[1], -1)
    zero = values[gather.input[3]] if len(gather.input) > 3 else 1 << (attrs["bits"] - 1)
    table = (codes.astype(np.int32) - zero).astype(np.float32) * values[gather.input[2]]
    added = next((n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"), None)
    if added is not None:
        table = table + values[added.input[0]][:, :, None]
    return found, table.reshape(table.shape[0], -1)


def load_model_folder(folder: Path) -> onnx.ModelProto:
    """model.onnx with every initializer in memory: the K-quant ones as the runtime computes them
    from kquant.json and kquant.npy (runtime/kquant_expand.py), the rest from the external data."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    derived = {}
    if (folder / kquant_expand.RECIPE_FILE).is_file():
        recipe = json.loads((folder / kquant_expand.RECIPE_FILE).read_text())
        derived = kquant_expand.expand(recipe, np.load(folder / kquant_expand.DATA_FILE))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in derived:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(derived.pop(tensor.name), tensor.name))
        elif uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(folder))
    assert not derived, f"recipe names tensors the graph lacks: {sorted(derived)}"
    return model
