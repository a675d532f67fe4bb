"""Model source -> `model/` of the staging folder: decoder ONNX graph with KV cache + tokenizer files.

optimum exports the fp32 decoder (task text-generation-with-past: one graph taking past key/values);
`bundler.quantize` then turns its MatMul weights into MatMulNBits blocks when asked.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bundler.errors import BuildError
from bundler.gguf_convert import convert_gguf
from bundler.model_source import ModelSource
from bundler.progress import ProgressCallback, no_progress
from bundler.silence import silence_third_party
from bundler.quantize import QUANTIZATIONS, quantize
from runtime.decoder import OPTIMUM_GRAPH
from runtime.layout import GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from runtime.manifest import ModelInfo

GRAPH_KIND = OPTIMUM_GRAPH
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)
STEP = "export model"


def save_onnx(model, path: Path) -> None:
    """`path` + `path`.data (all weights in one external file); onnx.save appends to an old .data."""
    import onnx

    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024
    )


def _count_parameters(hf_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():
                count = 1
                for dim in handle.get_slice(name).get_shape():
                    count *= dim
                total += count
    return total


def copy_tokenizer_files(hf_dir: Path, out_dir: Path, config: dict) -> None:
    for name in TOKENIZER_FILES:
        if not (hf_dir / name).is_file():
            raise BuildError(hf_dir, f"missing {name}")
        shutil.copyfile(hf_dir / name, out_dir / name)
    generation = hf_dir / GENERATION_CONFIG_FILE
    if generation.is_file():
        shutil.copyfile(generation, out_dir / generation.name)
    else:
        eos = config.get("eos_token_id")
        stop = eos if isinstance(eos, list) else [eos] if eos is not None else []
        text = json.dumps({"eos_token_id": stop, "bos_token_id": config.get("bos_token_id")}, indent=1)
        (out_dir / generation.name).write_text(text, encoding="utf-8")


def model_info(source: ModelSource, hf_dir: Path, quantization: str) -> ModelInfo:
    spec = source.spec
    return ModelInfo(
        name=source.name,
        source=str(source.path),
        architecture=source.architecture,
        graph=GRAPH_KIND,
        quantization=quantization,
        parameters=_count_parameters(hf_dir),
        **spec.info_fields(),
        license=source.license,
        source_sha256=source.fingerprint(),
    )


def export_model(
    source: ModelSource, quantization: str, out_dir: Path, progress: ProgressCallback = no_progress
) -> ModelInfo:
    """Write model.onnx, model.onnx.data and tokenizer files into `out_dir` (replaced as a whole)."""
    if quantization not in QUANTIZATIONS:
        raise BuildError(None, f"unknown quantization {quantization!r} (expected one of {', '.join(QUANTIZATIONS)})")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        progress(STEP, 0, 4)
        hf_dir = source.path
        if source.kind == "gguf":
            hf_dir = convert_gguf(source.path, work / "hf")
        progress(STEP, 1, 4)
        import onnx
        from optimum.exporters.onnx import main_export

        exported = work / "optimum"
        with silence_third_party():
            try:
                main_export(
                    str(hf_dir),
                    str(exported),
                    task="text-generation-with-past",
                    do_validation=False,
                    local_files_only=True,
                )
            except Exception as exc:  # the exporter's failure modes are many; name the source
                raise BuildError(source.path, f"ONNX export failed: {exc}") from None
        progress(STEP, 2, 4)
        model = onnx.load(str(exported / MODEL_FILE), load_external_data=True)
        with silence_third_party():
            model = quantize(model, quantization)
        progress(STEP, 3, 4)
        staged = work / "model"
        staged.mkdir()
        save_onnx(model, staged / MODEL_FILE)
        del model
        config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
        copy_tokenizer_files(hf_dir, staged, config)
        info = model_info(source, hf_dir, quantization)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(STEP, 4, 4)
    return info
