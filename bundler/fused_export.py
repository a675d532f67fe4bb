"""Build step: a model source -> the fused graph in the staging folder's `model/`."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from bundler.errors import BuildError
from bundler.fused_graph import GRAPH_NAME, KQUANT_METADATA, KQUANT_STASH, ExternalData, QuantizationPlan, build_graph
from bundler.fused_lowering import lower_for_onnxruntime_119
from bundler.llama_weights import LlamaWeights, load_llama
from bundler.model_spec import MAX_ROPE_POSITIONS
from bundler.model_source import ModelSource, resolve_model
from bundler.progress import ProgressCallback, no_progress
from runtime.decoder import FUSED_PORTABLE_GRAPH
from runtime.kquant_expand import DATA_FILE as KQUANT_DATA_FILE, DERIVED_ALIGNMENT, RECIPE_FILE as KQUANT_RECIPE_FILE
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
            # onnxruntime 1.19 targets get the full tensors, held in memory: the lowering splits the
            # 8-bit codes it reads.
            model = build_graph(weights, plan, graph_progress)
        else:
            save_streamed(lambda external: build_graph(weights, plan, graph_progress, compact=True, external=external),
                          model_dir)
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
    """Write graph and external data side by side, replacing all only when all are complete.

    A compact graph's K-quant block heads go to kquant.npy and their recipe to kquant.json
    (runtime/kquant_expand.py), out of the ONNX file."""
    model_dir = Path(model_dir)
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".fused-") as tmp:
        kquant = _split_kquant(model, Path(tmp))
        onnx.save_model(model, os.path.join(tmp, MODEL_FILE), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
        _put_in_place(Path(tmp), model_dir, kquant)


def save_streamed(make: Callable[[ExternalData], onnx.ModelProto], model_dir: Path) -> None:
    """As save_model, for a graph whose initializers `make(external)` writes into the data file as it
    builds the graph (memory never holds them all)."""
    model_dir = Path(model_dir)
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".fused-") as tmp:
        with open(os.path.join(tmp, DATA_FILE), "wb") as data:
            model = make(ExternalData(data, DATA_FILE))
        kquant = _split_kquant(model, Path(tmp))
        with open(os.path.join(tmp, MODEL_FILE), "wb") as out:
            out.write(model.SerializeToString())
        _put_in_place(Path(tmp), model_dir, kquant)


def _put_in_place(tmp: Path, model_dir: Path, kquant: bool) -> None:
    """Replace the folder's model files with the finished ones in `tmp` (the K-quant files only for a compact graph)."""
    for name in (KQUANT_RECIPE_FILE, KQUANT_DATA_FILE):
        if kquant:
            os.replace(tmp / name, model_dir / name)
        else:
            (model_dir / name).unlink(missing_ok=True)
    os.replace(tmp / DATA_FILE, model_dir / DATA_FILE)
    os.replace(tmp / MODEL_FILE, model_dir / MODEL_FILE)


def _split_kquant(model: onnx.ModelProto, folder: Path) -> bool:
    """Move the stashed K-quant block heads out of `model` into folder/kquant.npy and their recipe,
    with byte offsets, into folder/kquant.json. False for a graph without them."""
    props = {p.key: p.value for p in model.metadata_props}
    if KQUANT_METADATA not in props:
        return False
    recipe = json.loads(props[KQUANT_METADATA])
    stash = {init.name: init for init in model.graph.initializer if init.name.startswith(KQUANT_STASH)}
    offsets, total = {}, 0
    for name, init in stash.items():
        offsets[name] = total
        total += len(init.raw_data)
    data = np.lib.format.open_memmap(folder / KQUANT_DATA_FILE, mode="w+", dtype=np.uint8, shape=(total,))
    for name, init in stash.items():
        data[offsets[name]:offsets[name] + len(init.raw_data)] = np.frombuffer(init.raw_data, dtype=np.uint8)
    data.flush()
    del data
    placeholders = {init.name: init for init in model.graph.initializer}
    end = 0
    for weight in recipe["weights"]:
        for part in weight["parts"]:
            part["offset"] = offsets[part.pop("stash")]
        for output in weight["outputs"]:
            # where the runtime writes this tensor in its file, and the graph reads it
            external = {e.key: e for e in placeholders[output["name"]].external_data}
            output["offset"] = -(-end // DERIVED_ALIGNMENT) * DERIVED_ALIGNMENT
            external["offset"].value = str(output["offset"])
            end = output["offset"] + int(external["length"].value)
    recipe["derived_bytes"] = end
    (folder / KQUANT_RECIPE_FILE).write_text(json.dumps(recipe), encoding="utf-8")
    kept = [init for init in model.graph.initializer if init.name not in stash]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    kept_props = [p for p in model.metadata_props if p.key != KQUANT_METADATA]
    del model.metadata_props[:]
    model.metadata_props.extend(kept_props)
    return True


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
