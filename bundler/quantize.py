"""Weight-only quantization of an exported decoder graph (ONNX Runtime's MatMulNBits).

Activations stay float: dynamic int8 quantization of activations costs far more quality
(perplexity 11.7 -> 20.9, docs/MEASUREMENTS.md#dynamic-int8) than weight-only 8-bit (11.72).
"""
from __future__ import annotations

import logging

import onnx

BLOCK_SIZE = 32
# MatMulNBits accuracy level 4: int8 activations inside the kernel, the fast CPU path.
ACCURACY_LEVEL = 4
QUANTIZATIONS = ("int4", "int8", "fp32")


def _weight_only(model: onnx.ModelProto, bits: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # the quantizer logs every node at INFO level; library code stays quiet
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=BLOCK_SIZE,
        is_symmetric=False,
        accuracy_level=ACCURACY_LEVEL,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    return quantizer.model.model


def quantize_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every MatMul with a constant weight (lm_head included) as 4-bit blocks of 32 with zero points."""
    return _weight_only(model, 4)


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every MatMul with a constant weight as 8-bit blocks of 32 with zero points."""
    return _weight_only(model, 8)


def quantize(model: onnx.ModelProto, quantization: str) -> onnx.ModelProto:
    if quantization == "int4":
        return quantize_int4(fold_weight_transposes(model))
    if quantization == "int8":
        return quantize_int8(fold_weight_transposes(model))
    if quantization == "fp32":
        return model
    raise ValueError(f"unknown quantization {quantization!r} (expected one of {', '.join(QUANTIZATIONS)})")


def fold_weight_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace Transpose(initializer) feeding a MatMul by a transposed initializer.

    optimum ties lm_head to the embedding through a Transpose node; MatMulNBits needs a constant
    weight, so the transposed copy is stored (quantized, it costs a fraction of the fp32 original).
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in list(model.graph.node):
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        if not all(c.op_type == "MatMul" for c in consumers.get(node.output[0], [])):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[node.input[0]])
        folded = numpy_helper.from_array(weight.transpose(perm).copy(), node.output[0])
        model.graph.initializer.append(folded)
        model.graph.node.remove(node)
    used = {name for node in model.graph.node for name in node.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return model
