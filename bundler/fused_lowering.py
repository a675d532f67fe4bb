"""The fused graph lowered for onnxruntime 1.19: its two newer operators rewritten, its blocks kept.

onnxruntime 1.19.2 (the newest with a Python 3.9 aarch64 wheel, the glibc-2.31 targets) runs
GroupQueryAttention with rotary (1.18) and 4-bit MatMulNBits (1.17), but not GatherBlockQuantized
(1.20) nor 8-bit MatMulNBits on the CPU (1.22). This pass rewrites exactly those nodes; every
other node, and every stored block, stays as build_graph wrote it (docs/PACKAGING.md#fused-portable):

- 8-bit MatMulNBits (Q8_0, Q5_0, Q5_1, Q5_K, Q6_K) becomes two 4-bit MatMulNBits over the codes'
  high and low nibbles: with q = 16*hi + lo and zero z = 16*zh + zl,
  s*(q - z) = 16*s*(hi - zh) + s*(lo - zl), every term exact (16 is a power of two). The same
  bytes as the 8-bit codes and the same scales, the 4-bit kernels with int8 activations, and no
  float copy of the weights (onnxruntime would constant-fold a standard-operator dequantization
  into one at session start).
- GatherBlockQuantized becomes standard operators over the same planes: Gather of the code rows,
  scales and zero points by token id, nibbles split with BitShift/BitwiseAnd, then
  (code - zero) * scale with Cast/Sub/Mul: every difference is a small integer, so the row is
  bit for bit what the contrib operator returns.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bundler.fused_graph import KQUANT_METADATA

MS = "com.microsoft"


class _Rewriter:
    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.count = 0
        self.new_initializers: list[onnx.TensorProto] = []
        self.planes: dict[str, tuple[str, str]] = {}  # 8-bit codes -> their (high, low) nibble planes
        # codes an 8-bit matmul reads: split once, and a tied embedding's Gather reads the same planes
        self.split = {node.input[1] for node in self.graph.node if _is_matmul8(node)}

    def name(self, stem: str) -> str:
        self.count += 1
        return f"lowered_{stem}_{self.count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.new_initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def node(self, out: list, op: str, inputs: list[str], output: str = "", domain: str = "", **attrs) -> str:
        output = output or self.name(op)
        out.append(helper.make_node(op, inputs, [output], name=self.name(op + "_node"), domain=domain, **attrs))
        return output

    def nibble_planes(self, codes_name: str) -> tuple[str, str]:
        """The 8-bit codes [N, blocks, block] as two MatMulNBits 4-bit initializers [N, blocks, block/2]."""
        if codes_name not in self.planes:
            codes = self.array(codes_name)
            high, low = codes >> 4, codes & 0x0F
            self.planes[codes_name] = (self.const("codes_high", _pack(high)), self.const("codes_low", _pack(low)))
        return self.planes[codes_name]

    def matmul8(self, node: onnx.NodeProto, out: list) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n, block = attrs["N"], attrs["block_size"]
        blocks = attrs["K"] // block
        x, codes, scales = node.input[:3]
        zeros = (self.array(node.input[3]).reshape(n, blocks).astype(np.uint8) if len(node.input) > 3 and node.input[3]
                 else np.full((n, blocks), 128, dtype=np.uint8))
        high, low = self.nibble_planes(codes)
        high_zeros = [] if (zeros >> 4 == 8).all() else [self.const("zero4", _pack_zero_points(zeros >> 4))]
        inputs = [x, high, scales, *high_zeros]
        high_part = self.node(out, "MatMulNBits", inputs, domain=MS, **{**attrs, "bits": 4})
        # times 16 on the [S, N] output, not on the scales: exact either way, and no second copy of them
        high_part = self.node(out, "Mul", [high_part, self.const("sixteen", np.float32(16))])
        inputs = [x, low, scales, self.const("zero4", _pack_zero_points(zeros & 0x0F))]
        low_part = self.node(out, "MatMulNBits", inputs, domain=MS, **{**attrs, "bits": 4})
        self.node(out, "Add", [high_part, low_part], output=node.output[0])

    def gather(self, node: onnx.NodeProto, out: list) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("gather_axis", 0) != 0 or attrs.get("quantize_axis") != 2:
            raise ValueError(f"{node.name}: only the embedding's GatherBlockQuantized layout is lowered")
        bits = attrs.get("bits", 4)
        data, ids, scales = node.input[:3]
        if bits == 8 and data in self.split:
            high, low = self.nibble_planes(data)
            high = self.node(out, "Mul", [self.unpacked_rows(high, ids, out), self.const("sixteen", np.float32(16))])
            codes = self.node(out, "Add", [high, self.unpacked_rows(low, ids, out)])
        elif bits == 8:
            codes = self.node(out, "Cast", [self.node(out, "Gather", [data, ids], axis=0)], to=onnx.TensorProto.FLOAT)
        else:
            codes = self.unpacked_rows(data, ids, out)
        if len(node.input) > 3 and node.input[3]:
            zero = self.node(out, "Gather", [node.input[3], ids], axis=0)
            if bits == 4:
                zero = self.node(out, "BitwiseAnd", [zero, self.const("low_mask", np.array(0x0F, dtype=np.uint8))])
            zero = self.node(out, "Cast", [zero], to=onnx.TensorProto.FLOAT)
        else:
            zero = self.const("default_zero", np.float32(1 << (bits - 1)))
        scale = self.node(out, "Gather", [scales, ids], axis=0)
        self.node(out, "Mul", [self.node(out, "Sub", [codes, zero]), scale], output=node.output[0])

    def unpacked_rows(self, packed: str, ids: str, out: list) -> str:
        """Float codes [..., blocks, block] of the 4-bit rows `ids`, even element in the low nibble."""
        rows = self.node(out, "Gather", [packed, ids], axis=0)
        low = self.node(out, "BitwiseAnd", [rows, self.const("low_mask", np.array(0x0F, dtype=np.uint8))])
        high = self.node(out, "BitShift", [rows, self.const("four", np.array(4, dtype=np.uint8))], direction="RIGHT")
        last = self.const("last_axis", np.array([-1], dtype=np.int64))
        pairs = self.node(out, "Concat", [self.node(out, "Unsqueeze", [low, last]),
                                          self.node(out, "Unsqueeze", [high, last])], axis=-1)
        codes = self.node(out, "Reshape", [pairs, self.const("merge_pairs", np.array([0, 0, 0, -1], dtype=np.int64))])
        return self.node(out, "Cast", [codes], to=onnx.TensorProto.FLOAT)


def _pack(codes: np.ndarray) -> np.ndarray:
    """[..., 2m] values 0..15 -> [..., m] bytes, even index in the low nibble (MatMulNBits' layout)."""
    codes = codes.astype(np.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _pack_zero_points(zeros: np.ndarray) -> np.ndarray:
    """[N, blocks] 4-bit zero points -> MatMulNBits' [N * ceil(blocks/2)] bytes (each row padded)."""
    n, blocks = zeros.shape
    if blocks % 2:
        zeros = np.concatenate([zeros, np.zeros((n, 1), dtype=zeros.dtype)], axis=1)
    return _pack(zeros).reshape(-1)


def _is_matmul8(node: onnx.NodeProto) -> bool:
    return node.op_type == "MatMulNBits" and node.domain == MS and any(
        a.name == "bits" and a.i == 8 for a in node.attribute)


def lower_for_onnxruntime_119(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite `model` (initializers in memory) in place so that onnxruntime 1.19 runs it; returns it."""
    if any(p.key == KQUANT_METADATA for p in model.metadata_props):
        raise ValueError("a compact graph's K-quant tensors are not in memory: lower the full graph (compact=False)")
    rewriter = _Rewriter(model)
    lowered = []
    for node in model.graph.node:
        if _is_matmul8(node):
            rewriter.matmul8(node, lowered)
        elif node.op_type == "GatherBlockQuantized" and node.domain == MS:
            rewriter.gather(node, lowered)
        else:
            lowered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(lowered)
    used = {name for node in lowered for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + rewriter.new_initializers)
    return model
