"""K-quant weights stored as the GGUF's own blocks; their operator tensors computed at session start.

A bundle built from Q4_K, Q5_K or Q6_K tensors keeps their blocks bit for bit in KQUANT_DATA (one
uint8 .npy entry): 4.5, 5.5 and 6.5625 bits per weight, as in the GGUF. The graph declares the
tensors MatMulNBits and GatherBlockQuantized read (codes, float32 scales, zero points, the
remainders of the types with a minimum; see bundler/block_quant.py) as external data at
DERIVED_LOCATION, and KQUANT_RECIPE says how each is made: `expand` computes them with numpy and
`add_to_options` hands them to onnxruntime, which then never opens that location
(docs/MEASUREMENTS.md#k-quant-file-size). The builder computes the graph's tensors with these same
functions, so the two agree bit for bit by construction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from runtime import layout

KQUANT_RECIPE = f"{layout.MODEL_FOLDER}/kquant.json"
KQUANT_DATA = f"{layout.MODEL_FOLDER}/kquant.npy"
RECIPE_FILE, DATA_FILE = "kquant.json", "kquant.npy"  # the same, inside a model folder
# 1: Q4_K, Q5_K, Q6_K blocks; outputs in the "matmul" and "gather" layouts below.
FORMAT = 1
# `location` of every graph tensor this module supplies (never a file).
DERIVED_LOCATION = "edgebundle-kquant-derived"
SUPER_BLOCK = 256
BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
BLOCK_TYPES = tuple(BLOCK_BYTES)
ROWS_PER_CHUNK = 2048  # bounds the numpy temporaries of a 128,256-row embedding


class RecipeError(ValueError):
    """The recipe does not describe tensors this runtime can make."""


@dataclass
class KFields:
    """One K-quant weight in MatMulNBits terms: w = scale * (q - zero) [+ remainder] per block."""

    bits: int
    block: int
    packed: np.ndarray  # uint8 [rows, blocks, block*bits/8]
    scales: np.ndarray  # float32 [rows, blocks]
    zeros: np.ndarray  # uint8 [rows, blocks], unpacked
    remainder: Optional[np.ndarray]  # float32 [rows, blocks] or None


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """[..., 2m] codes 0..15 -> [..., m] bytes, even index in the low nibble."""
    codes = codes.astype(np.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def pack_zero_points(zero: np.ndarray, bits: int) -> np.ndarray:
    """[rows, blocks] uint8 -> MatMulNBits' zero points: bytes, or nibbles with each row padded to even."""
    if bits == 8:
        return np.ascontiguousarray(zero.astype(np.uint8))
    if zero.shape[1] % 2:
        zero = np.concatenate([zero, np.zeros((zero.shape[0], 1), np.uint8)], axis=1)
    return pack_nibbles(zero)


def _f16(raw: np.ndarray) -> np.ndarray:
    """Two bytes per entry along the last axis -> float32 (exact)."""
    return raw.copy().view(np.float16)[..., 0].astype(np.float32)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit minimums per super-block."""
    d, m, md = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _k_low_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: each 32-byte chunk holds sub-block 2j in its low and 2j+1 in its high nibbles."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)
    return (chunks & 0x0F).reshape(*qs.shape[:-1], 8, 32)


def with_minimum(bits: int, codes: np.ndarray, scales: np.ndarray, minimum: np.ndarray) -> KFields:
    """w = scale * q + minimum: an integer zero point plus the exact float remainder per block."""
    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.where(scales > 0, np.rint(-minimum / scales), 0.0)
    zero = np.clip(zero, 0, (1 << bits) - 1)
    remainder = (minimum + zero * scales).astype(np.float32)
    packed = codes.astype(np.uint8) if bits == 8 else pack_nibbles(codes)
    return KFields(bits, 32, np.ascontiguousarray(packed), scales, zero.astype(np.uint8), remainder)


def k_fields(kind: str, blocks: np.ndarray) -> KFields:
    """GGUF K-quant blocks [rows, super-blocks, bytes] -> the weight's MatMulNBits fields."""
    rows = blocks.shape[0]
    if kind in ("Q4_K", "Q5_K"):
        d, dmin = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
        sc, mn = _k_scales(blocks[..., 4:16])
        scales = (d[..., None] * sc).reshape(rows, -1)
        minimum = -(dmin[..., None] * mn).reshape(rows, -1)
        if kind == "Q4_K":
            return with_minimum(4, _k_low_nibbles(blocks[..., 16:]).reshape(rows, -1, 32), scales, minimum)
        high = blocks[..., 16:48].reshape(rows, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(8, 1)
        codes = _k_low_nibbles(blocks[..., 48:]) | ((high & 1) << 4)
        return with_minimum(8, codes.reshape(rows, -1, 32), scales, minimum)
    if kind == "Q6_K":
        low = blocks[..., 0:128].reshape(rows, -1, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)
        low = (low & 0x0F).reshape(rows, -1, 8, 32)
        high = blocks[..., 128:192].reshape(rows, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)
        high = (high & 0x03).reshape(rows, -1, 8, 32)
        codes = (low | (high << 4)).reshape(rows, -1, 16)
        scales = (_f16(blocks[..., 208:210])[..., None] * blocks[..., 192:208].view(np.int8)).reshape(rows, -1)
        zeros = np.full(scales.shape, 32, dtype=np.uint8)
        return KFields(8, 16, np.ascontiguousarray(codes), scales.astype(np.float32), zeros, None)
    raise RecipeError(f"{kind} is not a K-quant type this runtime expands (supported: {', '.join(BLOCK_TYPES)})")



def _output_shape(field: str, layout_name: str, bits: int, block: int, rows: int, blocks: int) -> tuple:
    if field == "packed":
        return (rows, blocks, block * bits // 8)
    if layout_name == "gather":
        return {"scales": (rows, blocks, 1), "zeros": (rows, blocks, 1), "remainder": (rows, blocks)}[field]
    if field == "zeros" and bits == 4:
        return (rows * ((blocks + 1) // 2),)
    return {"scales": (rows * blocks,), "zeros": (rows * blocks,), "remainder": (blocks, rows)}[field]


def _write(out: np.ndarray, field: str, layout_name: str, fields: KFields, start: int, stop: int, rows: int) -> None:
    """Rows [start, stop) of one output in its layout (the graph's initializer of that name)."""
    value = getattr(fields, field)
    if field == "packed":
        out[start:stop] = value
    elif layout_name == "gather":
        out[start:stop] = value.reshape(out[start:stop].shape)
    elif field == "remainder":
        out[:, start:stop] = value.T
    elif field == "zeros":
        out.reshape(rows, -1)[start:stop] = pack_zero_points(value, fields.bits)
    else:
        out.reshape(rows, -1)[start:stop] = value


def expand(recipe: dict, data: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor the recipe names, computed from the blocks in `data` (uint8, KQUANT_DATA)."""
    if recipe.get("format") != FORMAT:
        raise RecipeError(f"K-quant recipe format {recipe.get('format')!r} is not supported (this runtime reads {FORMAT})")
    tensors: dict[str, np.ndarray] = {}
    for weight in recipe["weights"]:
        kind = weight["type"]
        if kind not in BLOCK_BYTES:
            raise RecipeError(f"K-quant type {kind!r} is not supported (supported: {', '.join(BLOCK_TYPES)})")
        parts = weight["parts"]
        rows = sum(p["rows"] for p in parts)
        cols = parts[0]["cols"]
        bits, block = (4, 32) if kind == "Q4_K" else (8, 16) if kind == "Q6_K" else (8, 32)
        blocks = cols // block
        outputs = []
        for out in weight["outputs"]:
            shape = _output_shape(out["field"], out["layout"], bits, block, rows, blocks)
            dtype = np.float32 if out["field"] in ("scales", "remainder") else np.uint8
            tensors[out["name"]] = np.empty(shape, dtype=dtype)
            outputs.append((tensors[out["name"]], out["field"], out["layout"]))
        first = 0
        for part in parts:
            supers = part["cols"] // SUPER_BLOCK
            size = part["rows"] * supers * BLOCK_BYTES[kind]
            if part["cols"] != cols or part["offset"] + size > data.size:
                raise RecipeError(f"K-quant part at {part['offset']} does not fit the data ({data.size} bytes)")
            raw = data[part["offset"]:part["offset"] + size].reshape(part["rows"], supers, BLOCK_BYTES[kind])
            for start in range(0, part["rows"], ROWS_PER_CHUNK):
                stop = min(start + ROWS_PER_CHUNK, part["rows"])
                fields = k_fields(kind, np.asarray(raw[start:stop]))
                for out, field, layout_name in outputs:
                    _write(out, field, layout_name, fields, first + start, first + stop, rows)
            first += part["rows"]
    return tensors


def _read_recipe(raw: bytes, where: str) -> dict:
    try:
        recipe = json.loads(raw)
    except ValueError as exc:
        raise RecipeError(f"{where}: not JSON ({exc})") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{where}: not a K-quant recipe")
    return recipe


def add_to_options(options, tensors: dict[str, np.ndarray]) -> list:
    """Give onnxruntime `tensors` as initializers; the returned values must outlive the session
    (onnxruntime reads their memory in place)."""
    import onnxruntime as ort

    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in tensors.values()]
    if values:
        options.add_external_initializers(list(tensors), values)
    return values


def supply_from_bundle(bundle, options) -> list:
    """Add a bundle's K-quant tensors to `options` (none for a bundle without KQUANT_RECIPE); see add_to_options."""
    from runtime.bundle import BundleError

    if KQUANT_RECIPE not in bundle.names():
        return []
    try:
        recipe = _read_recipe(bytes(bundle.read(KQUANT_RECIPE)), KQUANT_RECIPE)
        return add_to_options(options, expand(recipe, bundle.array(KQUANT_DATA)))
    except RecipeError as exc:
        raise BundleError(f"{bundle.path}: {exc}") from None


def supply_from_folder(model_dir: Path, options) -> list:
    """The same for a model folder as the builder writes it (model.onnx, kquant.json, kquant.npy)."""
    recipe_path = model_dir / RECIPE_FILE
    if not recipe_path.is_file():
        return []
    recipe = _read_recipe(recipe_path.read_bytes(), str(recipe_path))
    return add_to_options(options, expand(recipe, np.load(model_dir / DATA_FILE, mmap_mode="r")))
