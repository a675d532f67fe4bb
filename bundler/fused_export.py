"""Build step: a model source -> the fused graph in the staging folder's `model/`."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import onnx

from bundler.errors import BuildError
from bundler.fused_graph import GRAPH_NAME, ExternalData, QuantizationPlan, build_graph
from bundler.fused_lowering import lower_for_onnxruntime_119
from bundler.llama_weights import LlamaWeights, load_llama
from bundler.model_spec import MAX_ROPE_POSITIONS
from bundler.model_source import ModelSource, resolve_model
from bundler.progress import ProgressCallback, no_progress
from runtime.decoder import FUSED_PORTABLE_GRAPH
from runtime.manifest import ModelInfo

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
STEP = "fused graph"


def build_fused_model(source: str | Path | ModelSource, quantization: str | QuantizationPlan, out_dir: str | Path,
                      progress: ProgressCallback = no_progress, portable: bool = False) -> ModelInfo:
    """Write `out_dir/model/`: model.onnx, model.onnx.data and the tokenizer files.

    `portable`: lowered for onnxruntime 1.19 (bundler/fused_lowering.py), same inputs and outputs."""
    source = source if isinstance(source, ModelSource) else resolve_model(source)
    plan = quantization if isinstance(quantization, QuantizationPlan) else QuantizationPlan(quantization)
    try:
        plan.check()
    except ValueError as exc:
        raise BuildError(source.path, str(exc)) from None
    weights = load_llama(source.path)
    model_dir = Path(out_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)

    def graph_progress(step: str, done: int, total: int) -> None:
        progress(STEP, done, total + 1)  # one more unit for writing the file (a 3B graph's 2 GB take a while)

    try:
        if portable:
            # The lowering rewrites initializers, so this graph is held in memory.
            model = build_graph(weights, plan, graph_progress)
        else:
            save_streamed(lambda external: build_graph(weights, plan, graph_progress, external), model_dir)
    except ValueError as exc:
        raise BuildError(source.path, str(exc)) from None
    if portable:
        save_model(lower_for_onnxruntime_119(model), model_dir)
        del model
    steps = 2 + weights.spec.num_layers
    progress(STEP, steps, steps)
    _write_tokenizer(source, model_dir)
    info = model_info(weights, plan)
    info.graph = FUSED_PORTABLE_GRAPH if portable else GRAPH_NAME
    info.name, info.license, info.source_sha256 = source.name, source.license, source.fingerprint()
    return info


def _write_tokenizer(source: ModelSource, model_dir: Path) -> None:
    """The model room's tokenizer files: rebuilt and checked from a GGUF, copied from a folder."""
    if source.kind == "gguf":
        from bundler.gguf_convert import check_tokenizer
        from bundler.gguf_reader import open_reader
        from bundler.gguf_tokenizer import read_vocabulary, write_tokenizer_files

        vocab = read_vocabulary(source.path, open_reader(source.path))
        check_tokenizer(source.path, vocab)
        write_tokenizer_files(vocab, model_dir)
    else:
        from bundler.export_onnx import copy_tokenizer_files

        copy_tokenizer_files(source.path, model_dir, json.loads((source.path / "config.json").read_text(encoding="utf-8")))


def save_model(model: onnx.ModelProto, model_dir: Path) -> None:
    """Write graph and external data side by side, replacing both only when both are complete."""
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".fused-") as tmp:
        onnx.save_model(model, os.path.join(tmp, MODEL_FILE), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
        os.replace(os.path.join(tmp, DATA_FILE), model_dir / DATA_FILE)
        os.replace(os.path.join(tmp, MODEL_FILE), model_dir / MODEL_FILE)


def save_streamed(make: Callable[[ExternalData], onnx.ModelProto], model_dir: Path) -> None:
    """`make(external)` writes the initializers into the data file as it builds the graph; then the
    graph is written beside it, and both replace the old pair only when both are complete."""
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".fused-") as tmp:
        with open(os.path.join(tmp, DATA_FILE), "wb") as data:
            model = make(ExternalData(data, DATA_FILE))
        with open(os.path.join(tmp, MODEL_FILE), "wb") as out:
            out.write(model.SerializeToString())
        os.replace(os.path.join(tmp, DATA_FILE), model_dir / DATA_FILE)
        os.replace(os.path.join(tmp, MODEL_FILE), model_dir / MODEL_FILE)


def weight_summary(weights: LlamaWeights, plan: QuantizationPlan) -> str:
    """Which GGUF tensor types the graph holds and whether exactly: shown by the build and `info`."""
    if weights.kind != "gguf":
        return ""
    counts: dict[str, int] = {}
    for tensor in weights.tensors.values():
        if len(tensor.shape) == 2:
            counts[tensor.type] = counts.get(tensor.type, 0) + 1
    types = ", ".join(f"{kind} x{count}" for kind, count in sorted(counts.items(), key=lambda kv: -kv[1]))
    if plan.mode == "gguf-exact":
        return f"exact GGUF blocks (bit for bit): {types}"
    return f"requantized to {plan.label} from {types}"


def model_info(weights: LlamaWeights, plan: QuantizationPlan) -> ModelInfo:
    spec = weights.spec
    parameters = sum(int(_size(t)) for t in weights.tensors.values())
    return ModelInfo(
        name=weights.source.stem if weights.kind == "gguf" else weights.source.name,
        source=str(weights.source),
        architecture="llama",
        graph=GRAPH_NAME,
        quantization=plan.mode,
        parameters=parameters,
        # the graph's rotary tables stop at MAX_ROPE_POSITIONS
        **{**spec.info_fields(), "context_length": min(spec.context_length, MAX_ROPE_POSITIONS)},
        weights=weight_summary(weights, plan),
    )


def _size(tensor) -> int:
    shape = tensor.shape
    total = 1
    for dim in shape:
        total *= int(dim)
    return total
