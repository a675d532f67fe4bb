"""The build, step by step: model → index → staging folder → executable."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from bundler import __version__
from bundler.cache_record import code_digest, record_matches, replace_folder, write_record
from bundler.errors import BuildError
from bundler.leftovers import remove_build_leftovers, temp_prefix
from bundler.progress import ProgressCallback, no_progress
from bundler.scratch import scratch_folder
from runtime.bundle import MANIFEST_NAME
from runtime.manifest import BuildInfo, IndexInfo, Manifest, ModelInfo, from_plain

if TYPE_CHECKING:
    from bundler.index import IndexResult

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOCS = REPO_ROOT / "examples" / "python-docs"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "build"
QUANTIZATIONS = ("gguf-exact", "int4", "int8", "fp32")
GRAPHS = ("fused", "optimum")
# The code a model export depends on: a change here invalidates cached exports, other changes do not.
MODEL_CODE = ("model_source.py", "gguf_convert.py", "gguf_tokenizer.py", "gguf_reader.py", "llama_weights.py",
              "block_quant.py", "export_onnx.py", "quantize.py", "fused_graph.py", "fused_export.py")


@dataclass
class BuildConfig:
    """Every setting of one build; `build.py` fills it from the command line."""

    model: Optional[Path] = None
    docs: Path = DEFAULT_DOCS
    output: Optional[Path] = None
    quantization: Optional[str] = None    # None: chosen by model_choice() from the source and the graph
    graph: Optional[str] = None           # fused contrib-op graph, or optimum's plain export; None: by target
    quality_text: Optional[Path] = None   # None: the built-in sample
    max_ppl_ratio: float = 1.05
    target: str = "host"
    cache_dir: Path = DEFAULT_CACHE
    strict: bool = False
    include_hidden: bool = False           # index hidden and key files, and symlinks to them or out of docs
    sign_key: Optional[Path] = None        # ed25519 secret key file: sign the manifest
    runtime_stub: Optional[Path] = None    # a stub built elsewhere (e.g. natively on Windows) instead of the cache

    def output_path(self) -> Path:
        return self.output or REPO_ROOT / "dist" / self.docs.resolve().name


@dataclass
class BuildResult:
    executable: Path
    manifest: Manifest
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    model_cached: bool = False
    report: Optional[Path] = None        # the build report beside the executable
    skip_summary: str = ""               # one line for the CLI; "" when nothing was skipped
    left_out: list[str] = field(default_factory=list)  # hidden and key files not indexed


@dataclass
class StagedBuild:
    manifest: Manifest
    skipped: list[str]
    warnings: list[str]
    model_cached: bool
    index: Optional[IndexResult] = None


def build(config: BuildConfig, progress: ProgressCallback = no_progress) -> BuildResult:
    from bundler.build_report import report_path, summarise_skips, write_build_report
    from bundler.package import package
    from bundler.signing import load_signer
    from targets import load_target

    signer = load_signer(config.sign_key) if config.sign_key is not None else None
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    remove_build_leftovers(config.cache_dir, config.output_path())
    with tempfile.TemporaryDirectory(prefix=temp_prefix("staging"), dir=config.cache_dir) as tmp, \
            tempfile.TemporaryDirectory(prefix=temp_prefix("scratch"), dir=config.cache_dir) as scratch, \
            scratch_folder(Path(scratch)):
        staging = Path(tmp)
        staged = stage(config, staging, progress)
        executable = package(staging, load_target(config.target), config.output_path(), config.cache_dir / "stubs",
                             progress, runtime_stub=config.runtime_stub, signer=signer)
    index = staged.index
    report = report_path(executable)
    write_build_report(report, index.info.documents, index.info.chunks, index.duplicate_passages, index.skipped, index.warnings)
    summary = summarise_skips(index.skipped, report.name) if index.skipped else ""
    return BuildResult(executable=executable, manifest=staged.manifest, skipped=staged.skipped,
                       warnings=staged.warnings, model_cached=staged.model_cached, report=report, skip_summary=summary,
                       left_out=index.left_out)


def stage(config: BuildConfig, staging: Path, progress: ProgressCallback = no_progress) -> StagedBuild:
    """Write the staging folder (index, model, manifest): what `python -m runtime --bundle DIR` opens."""
    from bundler.index import build_index
    from bundler.model_source import default_model_path, resolve_model
    from targets import load_target

    if config.quantization is not None and config.quantization not in QUANTIZATIONS:
        raise BuildError(None, f"unknown quantization {config.quantization!r} (choose from {', '.join(QUANTIZATIONS)})")
    if config.graph is not None and config.graph not in GRAPHS:
        raise BuildError(None, f"unknown graph {config.graph!r} (choose from {', '.join(GRAPHS)})")
    target = load_target(config.target)
    source = resolve_model(config.model or default_model_path())
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    # Documents first: their errors are found in seconds, a model export takes minutes.
    index = build_index(config.docs, staging, config.cache_dir / "index", progress, strict=config.strict,
                        include_hidden=config.include_hidden)
    graph, quantization = model_choice(source, target, config)
    model_info, model_cached = _stage_model(source, graph, quantization, config, staging, progress)
    manifest = _write_manifest(staging, model_info, target.name, index.info)
    return StagedBuild(manifest=manifest, skipped=index.info.skipped, warnings=index.warnings,
                       model_cached=model_cached, index=index)


def model_choice(source, target, config: BuildConfig) -> tuple[str, str]:
    """Graph and quantization: what the user asked for, else the best the target's runtime runs.

    The fused graph needs contrib operators that old onnxruntime releases (the aarch64 glibc-2.31
    targets) lack. Requantizing a GGUF's 4-bit blocks to int4 costs ~25% perplexity (docs/MEASUREMENTS.md#requantized-int4), so
    without the fused graph's exact transfer a GGUF source falls back to near-lossless int8.
    """
    from bundler.fused_export import default_quantization
    from bundler.target_ops import runs_fused_graph

    graph = config.graph or ("fused" if runs_fused_graph(target) else "optimum")
    if config.quantization:
        quantization = config.quantization
    elif graph == "fused":
        quantization = default_quantization(source)
    else:
        quantization = "int8" if source.kind == "gguf" else "int4"
    if graph == "optimum" and quantization == "gguf-exact":
        raise BuildError(None, "gguf-exact needs the fused graph (drop --graph optimum, or choose a target "
                               "whose onnxruntime runs it)")
    return graph, quantization


def _stage_model(source, graph: str, quantization: str, config: BuildConfig, staging: Path,
                 progress: ProgressCallback) -> tuple[ModelInfo, bool]:
    """Export and gate the model once per (source, graph, quantization, exporter code, quality text).

    Later builds copy the cached result and only re-apply the perplexity limit.
    """
    from bundler.export_onnx import export_model
    from bundler.fused_export import build_fused_model
    from bundler.quality_gate import DEFAULT_TEXT, check_quality, enforce_quality
    from runtime.bundle import DirectoryBundle
    from runtime.decoder import load_decoder

    text = Path(config.quality_text or DEFAULT_TEXT)
    try:
        text_digest = hashlib.sha256(text.read_bytes()).hexdigest()
    except OSError as exc:
        raise BuildError(text, f"cannot read quality text ({exc.strerror})") from None
    fingerprint = source.fingerprint()
    code = code_digest(MODEL_CODE)
    key = _digest([fingerprint, graph, quantization, code, text_digest])
    cached = config.cache_dir / "models" / key
    hit = record_matches(cached, code)
    if not hit:
        cached.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=temp_prefix(key), dir=cached.parent))
        try:
            if graph == "fused":
                info = build_fused_model(source, quantization, work, progress)
            else:
                info = export_model(source, quantization, work / "model", progress)
            # The gate runs the model through the runtime's own decoder, as the bundle will.
            _write_manifest(work, info, target_name="host")
            progress("quality gate", 0, 1)
            info.quality = check_quality(
                work / "model", source.path, config.quality_text, max_ratio=float("inf"),
                decoder_factory=lambda _, length: load_decoder(DirectoryBundle(work), max_length=length))
            progress("quality gate", 1, 1)
            (work / "model_info.json").write_text(json.dumps(dataclasses.asdict(info)))
            os.unlink(work / MANIFEST_NAME)
            write_record(work, code)
            replace_folder(work, cached)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    info = from_plain(ModelInfo, json.loads((cached / "model_info.json").read_text()))
    # The manifest tells nothing about the build machine: inputs by file name and content hash,
    # from this build's own inputs (the cached export may have read them from another path).
    info.source, info.source_sha256 = source.path.name, fingerprint
    if config.quality_text is not None:
        info.quality.text = text.name
    info.quality.max_ratio = config.max_ppl_ratio
    enforce_quality(info.quality, source.path)
    shutil.copytree(cached / "model", staging / "model")
    return info, hit


def _write_manifest(staging: Path, model: ModelInfo, target_name: str, index: Optional[IndexInfo] = None) -> Manifest:
    manifest = Manifest(
        model=model,
        index=index or IndexInfo(documents=0, chunks=0),
        build=BuildInfo(
            created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            builder_version=__version__,
            host=f"{platform.system()} {platform.machine()}",  # the platform, never the machine's name
            python=platform.python_version(),
        ),
        target=target_name,
    )
    (staging / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
