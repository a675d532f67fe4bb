"""The per-block tensors of K-quant weights, computed at session start from the GGUF's own fields.

MatMulNBits and GatherBlockQuantized read a K-quant weight (bundler/block_quant.py) as codes plus a
float32 scale, a zero point and, for Q4_K and Q5_K, a float32 remainder per block of 32 (16 for
Q6_K): 6.125 bits per Q4_K weight where the GGUF needs 4.5. A bundle keeps the codes in the graph
(onnxruntime maps them, packs them and lets the file pages go) but, of the per-block tensors, only
each super-block's "head" from the GGUF: d, dmin and the packed 6-bit scales and minimums (16
bytes per 256 weights), or Q6_K's int8 scales and d (18 bytes), all in KQUANT_DATA. The graph
declares the per-block tensors as external data at DERIVED_PLACEHOLDER and KQUANT_RECIPE says how
each is made and where it lies in that "file": `derived_tensors` computes them with numpy and writes
them into a temporary file that the session then reads (docs/MEASUREMENTS.md#k-quant-file-size).
The builder computes the graph's tensors with these same functions, so the two agree bit for bit by
construction.

Why a file and not onnxruntime's add_external_initializers: onnxruntime never frees memory a caller
hands it, while a weight it loads from a file it packs and then lets go (MatMulNBits and Gemm copy
their constant inputs into packed buffers); the computed tensors held by Python cost 0.5 GB more peak
RSS for a 1B Q4_K_M model (docs/MEASUREMENTS.md#k-quant-file-size). The file is removed as soon as
the session exists.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from runtime import layout

KQUANT_RECIPE = f"{layout.MODEL_FOLDER}/kquant.json"
KQUANT_DATA = f"{layout.MODEL_FOLDER}/kquant.npy"
RECIPE_FILE, DATA_FILE = "kquant.json", "kquant.npy"  # the same, inside a model folder
# 1: heads of Q4_K, Q5_K, Q6_K; outputs "scales", "zeros", "remainder" in the "matmul" or "gather" layout,
# each at an "offset" of the derived file, "derived_bytes" long in all.
FORMAT = 1
# `location` of every graph tensor this module computes, at the offset the recipe gives it: replaced at
# session start by the (padded, runtime.payload.padded_location) name of the file `derived_tensors` writes.
DERIVED_PLACEHOLDER = b"@edgebundle-kquant-derived@".ljust(257, b"#")
DERIVED_ALIGNMENT = 4096
SUPER_BLOCK = 256
HEADS = {"Q4_K": (0, 16), "Q5_K": (0, 16), "Q6_K": (192, 210)}  # the bytes of a GGUF block that are not codes
BLOCK_TYPES = tuple(HEADS)
FIELDS = ("scales", "zeros", "remainder")
LAYOUTS = ("matmul", "gather")
ROWS_PER_CHUNK = 8192  # bounds the numpy temporaries of a 128,256-row embedding


class RecipeError(ValueError):
    """The recipe does not describe tensors this runtime can make."""


@dataclass
class BlockFields:
    """Per block of a weight, in MatMulNBits terms: w = scale * (q - zero) [+ remainder]."""

    bits: int
    block: int
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


def with_minimum(bits: int, scales: np.ndarray, minimum: np.ndarray) -> BlockFields:
    """w = scale * q + minimum: an integer zero point plus the exact float remainder per block of 32."""
    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.where(scales > 0, np.rint(-minimum / scales), 0.0)
    zero = np.clip(zero, 0, (1 << bits) - 1)
    remainder = (minimum + zero * scales).astype(np.float32)
    return BlockFields(bits, 32, scales, zero.astype(np.uint8), remainder)


def block_fields(kind: str, heads: np.ndarray) -> BlockFields:
    """Super-block heads [rows, super-blocks, bytes] (HEADS of each GGUF block) -> per-block tensors."""
    rows = heads.shape[0]
    if kind in ("Q4_K", "Q5_K"):
        d, dmin = _f16(heads[..., 0:2]), _f16(heads[..., 2:4])
        sc, mn = _k_scales(heads[..., 4:16])
        scales = (d[..., None] * sc).reshape(rows, -1)
        minimum = -(dmin[..., None] * mn).reshape(rows, -1)
        return with_minimum(4 if kind == "Q4_K" else 8, scales, minimum)
    if kind == "Q6_K":
        scales = (_f16(heads[..., 16:18])[..., None] * heads[..., 0:16].view(np.int8)).reshape(rows, -1)
        return BlockFields(8, 16, scales.astype(np.float32), np.full(scales.shape, 32, dtype=np.uint8), None)
    raise RecipeError(f"K-quant type {kind!r} is not supported (supported: {', '.join(BLOCK_TYPES)})")


def _output_shape(field: str, layout_name: str, bits: int, rows: int, blocks: int) -> tuple:
    if layout_name == "gather":
        return {"scales": (rows, blocks, 1), "zeros": (rows, blocks, 1), "remainder": (rows, blocks)}[field]
    if field == "zeros" and bits == 4:
        return (rows * ((blocks + 1) // 2),)
    return {"scales": (rows * blocks,), "zeros": (rows * blocks,), "remainder": (blocks, rows)}[field]


def _write(out: np.ndarray, field: str, layout_name: str, fields: BlockFields, start: int, stop: int, rows: int) -> None:
    """Rows [start, stop) of one output in its layout (the graph's initializer of that name)."""
    value = getattr(fields, field)
    if layout_name == "gather":
        out[start:stop] = value.reshape(out[start:stop].shape)
    elif field == "remainder":
        out[:, start:stop] = value.T
    elif field == "zeros":
        out.reshape(rows, -1)[start:stop] = pack_zero_points(value, fields.bits)
    else:
        out.reshape(rows, -1)[start:stop] = value


def expand(recipe: dict, data: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor the recipe names, computed from the heads in `data` (uint8, KQUANT_DATA)."""
    check_recipe(recipe)
    tensors: dict[str, np.ndarray] = {}
    for weight in recipe["weights"]:
        tensors.update(expand_weight(weight, data))
    return tensors


def expand_weight(weight: dict, data: np.ndarray) -> dict[str, np.ndarray]:
    """The tensors of one recipe weight."""
    tensors: dict[str, np.ndarray] = {}
    kind = weight["type"]
    if kind not in HEADS:
        raise RecipeError(f"K-quant type {kind!r} is not supported (supported: {', '.join(BLOCK_TYPES)})")
    parts = weight["parts"]
    rows, cols = sum(p["rows"] for p in parts), parts[0]["cols"]
    bits, block = (4, 32) if kind == "Q4_K" else (8, 16) if kind == "Q6_K" else (8, 32)
    outputs = []
    for out in weight["outputs"]:
        if out["field"] not in FIELDS or out["layout"] not in LAYOUTS or (out["field"] == "remainder" and kind == "Q6_K"):
            raise RecipeError(f"K-quant output {out['field']!r} in layout {out['layout']!r} is not supported for {kind}")
        dtype = np.uint8 if out["field"] == "zeros" else np.float32
        tensors[out["name"]] = np.empty(_output_shape(out["field"], out["layout"], bits, rows, cols // block), dtype)
        outputs.append((tensors[out["name"]], out["field"], out["layout"]))
    first = 0
    head = HEADS[kind][1] - HEADS[kind][0]
    for part in parts:
        supers = part["cols"] // SUPER_BLOCK
        size = part["rows"] * supers * head
        if part["cols"] != cols or part["offset"] + size > data.size:
            raise RecipeError(f"K-quant part at {part['offset']} does not fit the data ({data.size} bytes)")
        heads = data[part["offset"]:part["offset"] + size].reshape(part["rows"], supers, head)
        for start in range(0, part["rows"], ROWS_PER_CHUNK):
            stop = min(start + ROWS_PER_CHUNK, part["rows"])
            fields = block_fields(kind, np.asarray(heads[start:stop]))
            for out, field, layout_name in outputs:
                _write(out, field, layout_name, fields, first + start, first + stop, rows)
        first += part["rows"]
    return tensors


def expansion_bytes(model_dir: Path) -> int:
    """How many bytes more a model folder holds once loaded: its computed tensors instead of their heads."""
    recipe_path = model_dir / RECIPE_FILE
    if not recipe_path.is_file():
        return 0
    recipe = _read_recipe(recipe_path.read_bytes(), str(recipe_path))
    return int(recipe["derived_bytes"]) - (model_dir / DATA_FILE).stat().st_size


def check_recipe(recipe: dict) -> None:
    if recipe.get("format") != FORMAT:
        raise RecipeError(f"K-quant recipe format {recipe.get('format')!r} is not supported (this runtime reads {FORMAT})")


def _read_recipe(raw: bytes, where: str) -> dict:
    try:
        recipe = json.loads(raw)
    except ValueError as exc:
        raise RecipeError(f"{where}: not JSON ({exc})") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{where}: not a K-quant recipe")
    return recipe




@contextlib.contextmanager
def derived_tensors(bundle, prefix: str = layout.MODEL_FOLDER + "/", folder: Optional[Path] = None) -> Iterator[Optional[Path]]:
    """A temporary file holding every tensor the bundle's K-quant recipe names, at the offsets the graph
    expects (None for a model without one); removed on leaving. `prefix`: the model folder's entry
    names; `folder`: where to write it (a folder bundle's model folder, else the system's temporary folder)."""
    from runtime.bundle import BundleError, DirectoryBundle

    if folder is None and isinstance(bundle, DirectoryBundle):
        folder = bundle.path / prefix  # its model's own weights are found relative to the model's folder
    if prefix + RECIPE_FILE not in bundle.names():
        yield None
        return
    where = f"{bundle.path}: {prefix}{RECIPE_FILE}"
    try:
        recipe = _read_recipe(bytes(bundle.read(prefix + RECIPE_FILE)), where)
        check_recipe(recipe)
        data = bundle.array(prefix + DATA_FILE)
        handle, name = tempfile.mkstemp(prefix=".edgebundle-kquant-", suffix=".bin", dir=folder)
    except (RecipeError, OSError) as exc:
        raise BundleError(f"{where}: {exc}" if isinstance(exc, OSError) else f"{bundle.path}: {exc}") from None
    try:
        with os.fdopen(handle, "wb") as out:
            for weight in recipe["weights"]:
                tensors = expand_weight(weight, data)  # one weight at a time: a bounded temporary
                for output in weight["outputs"]:
                    out.seek(output["offset"])
                    out.write(tensors.pop(output["name"]).data)
        yield Path(name)
    except RecipeError as exc:
        raise BundleError(f"{bundle.path}: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
