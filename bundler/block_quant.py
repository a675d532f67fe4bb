"""Weights in MatMulNBits form: from GGUF blocks (exactly) or from float weights.

MatMulNBits computes w[n, k] = scale[n, b] * (q[n, k] - zero[n, b]) per block b of `block`
inputs. GGUF's Q4_0 and Q8_0 fit that exactly. Q4_1 (w = d*q + m) does not: its minimum m
is split into an integer zero point z = round(-m/d) and a remainder c = m + z*d, and the
graph adds blocksum(x) @ c as a separate term (docs/MEASUREMENTS.md#q4-1-remainder: a float zero point
takes ONNX Runtime's slow path; dropping the remainder costs 20% perplexity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from bundler.gguf_reader import GgufTensor

GGUF_BLOCK = 32
INT4_METHODS = ("rtn", "kquant")


@dataclass
class NBitsWeight:
    """A [N, K] weight for MatMulNBits (N outputs, K inputs), plus the optional Q4_1 remainder."""

    bits: int
    block: int
    n: int
    k: int
    packed: np.ndarray  # uint8 [N, K/block, block*bits/8]
    scales: np.ndarray  # float32 [N, K/block]
    zero_points: Optional[np.ndarray] = None  # uint8, packed like MatMulNBits wants; None = default
    remainder: Optional[np.ndarray] = None  # float32 [N, K/block], added per block on top

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


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """[..., 2m] codes 0..15 -> [..., m] bytes, even index in the low nibble."""
    codes = codes.astype(np.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _gguf_blocks(tensor: GgufTensor) -> np.ndarray:
    rows, cols = tensor.shape
    return np.ascontiguousarray(tensor.blocks).reshape(rows, cols // GGUF_BLOCK, -1)


def _gguf_nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF stores element j in the low nibble of byte j and element j+16 in its high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def from_gguf(tensor: GgufTensor) -> NBitsWeight:
    """Carry a Q4_0 / Q4_1 / Q8_0 tensor over without requantizing."""
    rows, cols = tensor.shape
    blocks = _gguf_blocks(tensor)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if tensor.type == "Q8_0":
        codes = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return NBitsWeight(8, GGUF_BLOCK, rows, cols, np.ascontiguousarray(codes), scales)
    if tensor.type == "Q4_0":
        codes = _gguf_nibbles(blocks[..., 2:])
        return NBitsWeight(4, GGUF_BLOCK, rows, cols, pack_nibbles(codes), scales)
    if tensor.type == "Q4_1":
        minimum = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        codes = _gguf_nibbles(blocks[..., 4:])
        with np.errstate(divide="ignore", invalid="ignore"):
            zero = np.where(scales > 0, np.rint(-minimum / scales), 0.0)
        zero = np.clip(zero, 0, 15)
        remainder = (minimum + zero * scales).astype(np.float32)
        return NBitsWeight(
            4, GGUF_BLOCK, rows, cols, pack_nibbles(codes), scales,
            zero_points=_pack_zero_points(zero.astype(np.uint8), 4), remainder=remainder,
        )
    raise ValueError(f"{tensor.name}: {tensor.type} has no MatMulNBits form")


def _pack_zero_points(zero: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return np.ascontiguousarray(zero.astype(np.uint8))
    if zero.shape[1] % 2:
        zero = np.concatenate([zero, np.zeros((zero.shape[0], 1), np.uint8)], axis=1)
    return pack_nibbles(zero)


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
                       scale.reshape(n, k // block), zero_points=_pack_zero_points(zero, bits))


def quantize_symmetric8(weight: np.ndarray, block: int) -> NBitsWeight:
    """Q8_0-style: int8 codes stored as q+128, one scale per block (the default zero point)."""
    n, k = weight.shape
    data = weight.astype(np.float32).reshape(n, k // block, block)
    scale = np.abs(data).max(axis=-1) / 127
    scale[scale == 0] = 1.0
    codes = np.clip(np.rint(data / scale[..., None]), -127, 127).astype(np.int16) + 128
    return NBitsWeight(8, block, n, k, codes.astype(np.uint8), scale.astype(np.float32))
