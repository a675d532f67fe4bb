"""The model graphs the builder can write: one registry for the CLI, the manifest, the budget and `info`.

A graph kind is one object: its `--graph` name, the name the manifest records (the runtime's decoder
key, runtime/decoder.py), the `--quantization` values it accepts, the oldest onnxruntime that runs
it, its default quantization for a source, and the function that writes it. Adding a kind means one
entry here, its exporter, and its decoder in the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bundler.errors import BuildError
from bundler.model_source import ModelSource
from bundler.progress import ProgressCallback
from runtime.decoder import FUSED_GRAPH, FUSED_PORTABLE_GRAPH, OPTIMUM_GRAPH
from runtime.manifest import ModelInfo

# One vocabulary for --quantization, the manifest's model.quantization, the budget and `info`.
GGUF_EXACT, INT4, INT8, FP32 = "gguf-exact", "int4", "int8", "fp32"


def _export_fused(source: ModelSource, quantization: str, work: Path, progress: ProgressCallback) -> ModelInfo:
    from bundler.fused_export import build_fused_model

    return build_fused_model(source, quantization, work, progress)


def _export_fused_portable(source: ModelSource, quantization: str, work: Path, progress: ProgressCallback
                           ) -> ModelInfo:
    from bundler.fused_export import build_fused_model

    return build_fused_model(source, quantization, work, progress, portable=True)


def _export_optimum(source: ModelSource, quantization: str, work: Path, progress: ProgressCallback) -> ModelInfo:
    from bundler.export_onnx import export_model

    return export_model(source, quantization, work / "model", progress)


@dataclass(frozen=True)
class GraphKind:
    name: str                                   # --graph
    manifest_name: str                          # ModelInfo.graph: which runtime decoder opens it
    quantizations: tuple[str, ...]              # --quantization values it accepts
    min_onnxruntime: tuple[int, int]            # oldest onnxruntime release that runs every operator it uses
    defaults: dict                              # source kind ("gguf", "hf") -> default quantization
    export: Callable[[ModelSource, str, Path, ProgressCallback], ModelInfo]  # writes work/model/
    summary: str

    def default_quantization(self, source: ModelSource) -> str:
        return self.defaults[source.kind]

    def runs_on(self, onnxruntime_version: str) -> bool:
        major, minor = (int(part) for part in onnxruntime_version.split(".")[:2])
        return (major, minor) >= self.min_onnxruntime


GRAPH_KINDS: dict[str, GraphKind] = {kind.name: kind for kind in (
    # GroupQueryAttention, MatMulNBits and GatherBlockQuantized: the GGUF's own blocks. For every
    # block type: 8-bit MatMulNBits on the CPU from 1.22, 8-bit GatherBlockQuantized with zero points from 1.23.
    GraphKind("fused", FUSED_GRAPH, (GGUF_EXACT, INT4, INT8, FP32), (1, 23),
              {"gguf": GGUF_EXACT, "hf": INT4}, _export_fused,
              "ONNX Runtime contrib operators, fast; carries a GGUF's blocks exactly"),
    # The same graph and blocks with those two operators lowered (bundler/fused_lowering.py): runs
    # on 1.19.2, the glibc-2.31 aarch64 targets' runtime (GroupQueryAttention with rotary from 1.18).
    GraphKind("fused-portable", FUSED_PORTABLE_GRAPH, (GGUF_EXACT, INT4, INT8, FP32), (1, 19),
              {"gguf": GGUF_EXACT, "hf": INT4}, _export_fused_portable,
              "the fused graph in operators onnxruntime 1.19 has, same blocks; for the glibc-2.31 aarch64 targets"),
    # optimum's plain export; a GGUF's 4-bit blocks would be requantized (docs/MEASUREMENTS.md#requantized-int4),
    # so a GGUF source gets near-lossless int8 by default.
    GraphKind("optimum", OPTIMUM_GRAPH, (INT4, INT8, FP32), (1, 17),
              {"gguf": INT8, "hf": INT4}, _export_optimum,
              "optimum's plain export, the reference"),
)}
GRAPHS = tuple(GRAPH_KINDS)  # best first: the first one a target's onnxruntime runs is its default
QUANTIZATIONS = tuple(dict.fromkeys(q for kind in GRAPH_KINDS.values() for q in kind.quantizations))


def graph_for_target(onnxruntime_version: str) -> GraphKind:
    for kind in GRAPH_KINDS.values():
        if kind.runs_on(onnxruntime_version):
            return kind
    raise BuildError(None, f"no graph kind runs on onnxruntime {onnxruntime_version} "
                           f"(oldest supported: {min(k.min_onnxruntime for k in GRAPH_KINDS.values())})")


def choose(source: ModelSource, onnxruntime_version: str, graph: str | None, quantization: str | None
           ) -> tuple[GraphKind, str]:
    """What the user asked for, else the best graph the target runs and its default for the source."""
    if graph is not None and graph not in GRAPH_KINDS:
        raise BuildError(None, f"unknown graph {graph!r} (choose from {', '.join(GRAPHS)})")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise BuildError(None, f"unknown quantization {quantization!r} (choose from {', '.join(QUANTIZATIONS)})")
    kind = GRAPH_KINDS[graph] if graph else graph_for_target(onnxruntime_version)
    quantization = quantization or kind.default_quantization(source)
    if quantization not in kind.quantizations:
        others = [k.name for k in GRAPH_KINDS.values() if quantization in k.quantizations]
        raise BuildError(None, f"{quantization} needs the {' or '.join(others)} graph, not {kind.name} "
                               f"(drop --graph {kind.name}, or choose a target whose onnxruntime runs it)")
    return kind, quantization
