"""Reading a GGUF file: metadata and the raw quantized blocks of each tensor.

Only the tensor types the fused graph can carry exactly are accepted (every type a Llama 3.2
release uses); anything else (the IQ types, ternary, 2/3-bit K types) is refused up front,
naming the type and a supported alternative, so a build never fails half-way through writing
the graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from bundler.errors import BuildError

# Carried block for block into MatMulNBits / GatherBlockQuantized (bundler.block_quant).
BLOCK_TYPES = ("Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# Carried as float weights (exact: every value is a float32).
FLOAT_TYPES = ("F32", "F16", "BF16")
SUPPORTED_TYPES = BLOCK_TYPES + FLOAT_TYPES
ALTERNATIVE = "re-quantize the model to Q4_K_M (llama-quantize --allow-requantize IN.gguf OUT.gguf Q4_K_M)"


@dataclass
class GgufTensor:
    """One tensor as stored: `blocks` is [rows, bytes per row] for quantized types."""

    name: str
    type: str
    shape: tuple[int, ...]  # numpy order: (rows, columns); blocks run along columns
    blocks: np.ndarray

    def dequantize(self) -> np.ndarray:
        """Float32 values, computed by the `gguf` package (the reference for exactness)."""
        values = dequantize(self.blocks, GGMLQuantizationType[self.type])
        return np.asarray(values, dtype=np.float32).reshape(self.shape)


@dataclass
class GgufFile:
    path: Path
    metadata: dict
    tensors: dict[str, GgufTensor]


def open_reader(path: str | Path) -> GGUFReader:
    """The `gguf` package's reader for `path`, parsed once per build.

    Parsing a Llama 3 vocabulary field by field takes the `gguf` package half a minute
    (docs/MEASUREMENTS.md#gguf-reader-vocabulary); the build's steps (source check, weights,
    tokenizer) share one reader.
    """
    path = Path(path).resolve()
    stat = path.stat()
    return _cached_reader(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1)
def _cached_reader(path: str, size: int, mtime_ns: int) -> GGUFReader:
    return GGUFReader(path)


def read_gguf(path: str | Path) -> GgufFile:
    """Open and check a GGUF file; tensor data stays memory-mapped."""
    path = Path(path)
    try:
        reader = open_reader(path)
    except FileNotFoundError:
        raise BuildError(path, "no such file") from None
    except (ValueError, IndexError, KeyError, OSError, EOFError) as exc:
        raise BuildError(path, f"not a readable GGUF file ({exc})") from None
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            metadata[key] = field.contents()
        except (ValueError, IndexError, TypeError) as exc:
            raise BuildError(path, f"corrupt metadata field {key} ({exc})") from None
    tensors = {}
    for tensor in reader.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in SUPPORTED_TYPES:
            raise BuildError(
                path,
                f"tensor {tensor.name} has type {type_name}, which is not supported "
                f"(supported: {', '.join(SUPPORTED_TYPES)}); {ALTERNATIVE}",
            )
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        data = tensor.data
        expected_rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        if data.shape[0] != expected_rows and data.size != int(np.prod(shape)):
            raise BuildError(path, f"tensor {tensor.name} is truncated")
        tensors[tensor.name] = GgufTensor(tensor.name, type_name, shape, data)
    return GgufFile(path, metadata, tensors)
