"""Build step: a model source -> the fused graph in the staging folder's `model/`."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from bundler.errors import BuildError
from bundler.fused_graph import GRAPH_NAME, QuantizationPlan, build_graph
from bundler.llama_weights import MAX_ROPE_POSITIONS, LlamaWeights, load_llama
from bundler.progress import ProgressCallback, no_progress
from runtime.manifest import ModelInfo

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                      "special_tokens_map.json")


def build_fused_model(source: str | Path, quantization: str | QuantizationPlan, out_dir: str | Path,
                      progress: ProgressCallback = no_progress) -> ModelInfo:
    """Write `out_dir/model/model.onnx(+.data)` (+ tokenizer files of an HF folder)."""
    plan = quantization if isinstance(quantization, QuantizationPlan) else QuantizationPlan(quantization)
    try:
        plan.check()
    except ValueError as exc:
        raise BuildError(source, str(exc)) from None
    weights = load_llama(source)
    try:
        model = build_graph(weights, plan, progress)
    except ValueError as exc:
        raise BuildError(source, str(exc)) from None
    model_dir = Path(out_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, model_dir)
    if weights.kind == "hf":
        for name in HF_TOKENIZER_FILES:
            if (weights.source / name).is_file():
                shutil.copyfile(weights.source / name, model_dir / name)
    return model_info(weights, plan)


def save_model(model: onnx.ModelProto, model_dir: Path) -> None:
    """Write graph and external data side by side, replacing both only when both are complete."""
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".fused-") as tmp:
        onnx.save_model(model, os.path.join(tmp, MODEL_FILE), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
        os.replace(os.path.join(tmp, DATA_FILE), model_dir / DATA_FILE)
        os.replace(os.path.join(tmp, MODEL_FILE), model_dir / MODEL_FILE)


def model_info(weights: LlamaWeights, plan: QuantizationPlan) -> ModelInfo:
    spec = weights.spec
    parameters = sum(int(_size(t)) for t in weights.tensors.values())
    return ModelInfo(
        name=weights.source.stem if weights.kind == "gguf" else weights.source.name,
        source=str(weights.source),
        architecture="llama",
        graph=GRAPH_NAME,
        quantization=plan.label,
        parameters=parameters,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        hidden_size=spec.hidden_size,
        vocab_size=spec.vocab_size,
        context_length=min(spec.context_length, MAX_ROPE_POSITIONS),
    )


def _size(tensor) -> int:
    shape = tensor.shape
    total = 1
    for dim in shape:
        total *= int(dim)
    return total
