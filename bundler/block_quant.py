"""Weights in MatMulNBits form: from GGUF blocks (exactly) or from float weights.

MatMulNBits computes w[n, k] = scale[n, b] * (q[n, k] - zero[n, b]) per block b of `block`
inputs (4 or 8 bits, uint8 zero points). GGUF types map onto it as follows, every one exactly
(docs/MEASUREMENTS.md#gguf-types):

  Q4_0  4-bit blocks of 32, zero 8          Q8_0  8-bit blocks of 32, codes q+128, zero 128
  Q5_0  8-bit blocks of 32, zero 16         Q6_K  8-bit blocks of 16, scale d*sc, zero 32
  Q4_1, Q4_K  4-bit blocks of 32 with a minimum    Q5_1, Q5_K  8-bit blocks of 32 with a minimum

The types with a minimum (w = scale*q + m; for the K types scale = d*sc and m = -dmin*mn per
sub-block of 32) do not fit a zero point: m is split into an integer zero point
z = round(-m/scale) and a remainder c = m + z*scale, and the graph adds blocksum(x) @ c as a
separate term (docs/MEASUREMENTS.md#q4-1-remainder: a float zero point takes ONNX Runtime's
slow path; dropping the remainder costs 20% perplexity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from bundler.gguf_reader import GgufTensor
from runtime.kquant_expand import HEADS as K_HEADS, block_fields, pack_nibbles, pack_zero_points, with_minimum

GGUF_BLOCK = 32
ROWS_PER_CHUNK = 8192
INT4_METHODS = ("rtn", "kquant")


@dataclass
class NBitsWeight:
    """A [N, K] weight for MatMulNBits (N outputs, K inputs), plus the optional remainder of the types with a minimum."""

    bits: int
    block: int
    n: int
    k: int
    packed: np.ndarray  # uint8 [N, K/block, block*bits/8]
    scales: np.ndarray  # float32 [N, K/block]
    zero_points: Optional[np.ndarray] = None  # uint8, packed like MatMulNBits wants; None = default
    remainder: Optional[np.ndarray] = None  # float32 [N, K/block], added per block on top
    # The K-quant GGUF tensors whose blocks these are, in row order (runtime/kquant_expand.py); else empty.
    gguf_parts: tuple = ()

    def codes(self) -> np.ndarray:
        """The unpacked integer codes q, [N, K/block, block]."""
        if self.bits == 8:
            return self.packed.astype(np.int32)
        low = self.packed & 0x0F
        high = self.packed >> 4
        return np.stack([low, high], axis=-1).reshape(self.n, -1, self.block).astype(np.int32)

    def zeros(self) -> np.ndarray:
        """Zero point per block, [N, K/block], the operator's default where none is stored."""
        blocks = self.k // self.block
        if self.zero_points is None:
            return np.full((self.n, blocks), 1 << (self.bits - 1), dtype=np.int32)
        if self.bits == 8:
            return self.zero_points.astype(np.int32)
        unpacked = np.stack([self.zero_points & 0x0F, self.zero_points >> 4], axis=-1).reshape(self.n, -1)
        return unpacked[:, :blocks].astype(np.int32)

    def dequantize(self) -> np.ndarray:
        """Float32 [N, K] exactly as the graph's weights represent it."""
        codes = (self.codes() - self.zeros()[:, :, None]).astype(np.float32)
        values = codes * self.scales[:, :, None]
        if self.remainder is not None:
            values = values + self.remainder[:, :, None]
        return values.reshape(self.n, self.k)


def _gguf_blocks(tensor: GgufTensor) -> np.ndarray:
    """[rows, blocks per row, bytes per block] view of a quantized tensor."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    rows, cols = tensor.shape
    per_block, size = GGML_QUANT_SIZES[GGMLQuantizationType[tensor.type]]
    return np.ascontiguousarray(tensor.blocks).reshape(rows, cols // per_block, size)


def _f16(raw: np.ndarray) -> np.ndarray:
    """Two bytes per entry along the last axis -> float32 (exact)."""
    return raw.copy().view(np.float16)[..., 0].astype(np.float32)


def _gguf_nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF stores element j in the low nibble of byte j and element j+16 in its high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray, count: int) -> np.ndarray:
    """Q5_0/Q5_1: bit j of the little-endian 32-bit qh is the fifth bit of element j."""
    return np.unpackbits(qh, axis=-1, bitorder="little")[..., :count]


def _k_low_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: each 32-byte chunk holds sub-block 2j in its low and 2j+1 in its high nibbles."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)
    return (chunks & 0x0F).reshape(*qs.shape[:-1], 8, 32)


def _k_codes(kind: str, blocks: np.ndarray) -> np.ndarray:
    """K-quant blocks [rows, super-blocks, bytes] -> packed MatMulNBits codes [rows, blocks, bytes per block]."""
    rows = blocks.shape[0]
    if kind == "Q4_K":
        return _pack_codes(4, _k_low_nibbles(blocks[..., 16:]).reshape(rows, -1, 32))
    if kind == "Q5_K":
        high = blocks[..., 16:48].reshape(rows, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(8, 1)
        return _pack_codes(8, (_k_low_nibbles(blocks[..., 48:]) | ((high & 1) << 4)).reshape(rows, -1, 32))
    low = blocks[..., 0:128].reshape(rows, -1, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)
    low = (low & 0x0F).reshape(rows, -1, 8, 32)
    high = blocks[..., 128:192].reshape(rows, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)
    high = (high & 0x03).reshape(rows, -1, 8, 32)
    return _pack_codes(8, (low | (high << 4)).reshape(rows, -1, 16))


def from_gguf(tensor: GgufTensor) -> NBitsWeight:
    """Carry a block-quantized GGUF tensor over without requantizing (see the module notes)."""
    rows, cols = tensor.shape
    blocks = _gguf_blocks(tensor)
    kind = tensor.type
    if kind == "Q8_0":
        codes = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return NBitsWeight(8, GGUF_BLOCK, rows, cols, np.ascontiguousarray(codes), _f16(blocks[..., 0:2]))
    if kind == "Q4_0":
        codes = _gguf_nibbles(blocks[..., 2:])
        return NBitsWeight(4, GGUF_BLOCK, rows, cols, pack_nibbles(codes), _f16(blocks[..., 0:2]))
    if kind == "Q4_1":
        codes = _gguf_nibbles(blocks[..., 4:])
        return _with_minimum(4, GGUF_BLOCK, codes, _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4]))
    if kind == "Q5_0":
        codes = _gguf_nibbles(blocks[..., 6:]) | (_high_bits(blocks[..., 2:6], 32) << 4)
        return _with_zero(8, GGUF_BLOCK, codes, _f16(blocks[..., 0:2]), 16)
    if kind == "Q5_1":
        codes = _gguf_nibbles(blocks[..., 8:]) | (_high_bits(blocks[..., 4:8], 32) << 4)
        return _with_minimum(8, GGUF_BLOCK, codes, _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4]))
    if kind in K_HEADS:
        # Per-block tensors from the blocks' heads as the runtime computes them (runtime/kquant_expand.py).
        fields = block_fields(kind, blocks[..., slice(*K_HEADS[kind])])
        return NBitsWeight(fields.bits, fields.block, rows, cols, _k_codes(kind, blocks), fields.scales,
                           zero_points=pack_zero_points(fields.zeros, fields.bits), remainder=fields.remainder,
                           gguf_parts=(tensor,))
    raise ValueError(f"{tensor.name}: {kind} has no MatMulNBits form")


def _pack_codes(bits: int, codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(codes.astype(np.uint8) if bits == 8 else pack_nibbles(codes))


def _with_zero(bits: int, block: int, codes: np.ndarray, scales: np.ndarray, zero: int) -> NBitsWeight:
    """w = scale * (q - zero) with one fixed zero point."""
    rows = codes.shape[0]
    zeros = np.full(scales.shape, zero, dtype=np.uint8)
    return NBitsWeight(bits, block, rows, codes.shape[1] * block, _pack_codes(bits, codes), scales,
                       zero_points=pack_zero_points(zeros, bits))


def _with_minimum(bits: int, block: int, codes: np.ndarray, scales: np.ndarray, minimum: np.ndarray) -> NBitsWeight:
    """w = scale * q + minimum: integer zero point plus the exact float remainder per block."""
    fields = with_minimum(bits, scales, minimum)
    return NBitsWeight(bits, block, codes.shape[0], codes.shape[1] * block, _pack_codes(bits, codes), scales,
                       zero_points=pack_zero_points(fields.zeros, bits), remainder=fields.remainder)


def quantize_float(weight: np.ndarray, bits: int, block: int, method: str = "rtn") -> NBitsWeight:
    """Asymmetric block quantization of a float [N, K] weight.

    `rtn` rounds to nearest with the block's min/max range; `kquant` is ONNX Runtime's
    k-quant search (weighted least squares over candidate scales, as llama.cpp's k-quants).
    """
    n, k = weight.shape
    if k % block:
        raise ValueError(f"input size {k} is not a multiple of block {block}")
    top = (1 << bits) - 1
    data = weight.astype(np.float32).reshape(-1, block)
    if method == "kquant" and bits == 4:
        from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor_k_quant_cpu

        codes, scale, zero = quant_tensor_k_quant_cpu(data, num_bits=bits, group_size=block)
        scale = scale.astype(np.float32)
    elif method == "rtn":
        low = np.minimum(data.min(axis=1, keepdims=True), 0)
        high = np.maximum(data.max(axis=1, keepdims=True), 0)
        scale = ((high - low) / top).astype(np.float32)
        scale[scale == 0] = 1.0
        zero = np.clip(np.rint(-low / scale), 0, top)
        codes = np.clip(np.rint(data / scale + zero), 0, top)
    else:
        raise ValueError(f"unknown quantization method {method!r} for {bits} bits")
    codes = codes.astype(np.uint8).reshape(n, k // block, block)
    zero = zero.astype(np.uint8).reshape(n, k // block)
    packed = codes if bits == 8 else pack_nibbles(codes)
    return NBitsWeight(bits, block, n, k, np.ascontiguousarray(packed),
                       scale.reshape(n, k // block), zero_points=pack_zero_points(zero, bits))


def quantize_symmetric8(weight: np.ndarray, block: int) -> NBitsWeight:
    """Q8_0-style: int8 codes stored as q+128, one scale per block (the default zero point)."""
    n, k = weight.shape
    codes = np.empty((n, k // block, block), dtype=np.uint8)
    scales = np.empty((n, k // block), dtype=np.float32)
    # Rows a chunk at a time: whole-table temporaries of a 128,256-token embedding are 1 GB each.
    for start in range(0, n, ROWS_PER_CHUNK):
        data = weight[start:start + ROWS_PER_CHUNK].astype(np.float32).reshape(-1, k // block, block)
        scale = np.abs(data).max(axis=-1) / 127
        scale[scale == 0] = 1.0
        codes[start:start + len(data)] = np.clip(np.rint(data / scale[..., None]), -127, 127).astype(np.int16) + 128
        scales[start:start + len(data)] = scale
    return NBitsWeight(8, block, n, k, codes, scales)
