"""The build, step by step: model → index → staging folder → executable."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from bundler import __version__
from bundler.cache_record import record_matches, write_record
from bundler.code_digest import code_digest
from bundler.errors import BuildError
from bundler.fs import replace_folder
from bundler.graph_kinds import GraphKind, choose
from bundler.leftovers import remove_build_leftovers, temp_prefix
from bundler.progress import ProgressCallback, no_progress
from bundler.scratch import scratch_folder
from runtime import layout
from runtime.bundle import MANIFEST_NAME
from runtime.manifest import BuildInfo, IndexInfo, Manifest, ModelInfo

if TYPE_CHECKING:
    from bundler.index import IndexResult
    from bundler.payload_writer import Signer

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOCS = REPO_ROOT / "examples" / "python-docs"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "build"
# The code a model export depends on: a change here invalidates cached exports, other changes do not.
# What makes a staged model: every exporter, the quality gate and the decoders it runs (their import
# closure keys the model cache; runtime.decoder names its implementations by string, hence listed).
MODEL_MAKERS = ("bundler.graph_kinds", "bundler.quality_gate", "runtime.decoder", "runtime.fused_decoder")


@dataclass
class BuildConfig:
    """Every setting of one build; `build.py` fills it from the command line."""

    model: Optional[Path] = None
    docs: Path = DEFAULT_DOCS
    output: Optional[Path] = None
    quantization: Optional[str] = None    # None: the graph kind's default for the source (graph_kinds.py)
    graph: Optional[str] = None           # fused contrib-op graph, or optimum's plain export; None: by target
    quality_text: Optional[Path] = None   # None: the built-in sample
    max_ppl_ratio: float = 1.05
    target: str = "host"
    cache_dir: Path = DEFAULT_CACHE
    strict: bool = False
    include_hidden: bool = False           # index hidden and key files, and symlinks to them or out of docs
    sign_key: Optional[Path] = None        # ed25519 secret key file: sign the manifest
    require_signature: bool = False        # pin sign_key's public key: the executable starts only while signed by it
    runtime_stub: Optional[Path] = None    # a stub built elsewhere (e.g. natively on Windows) instead of the cache
    context: Optional[int] = None          # lowers the context the bundle runs with (min with model and target)
    ray: Optional[str] = None              # Ray cluster address, or "local": parse and embed documents there

    def output_path(self) -> Path:
        return self.output or REPO_ROOT / "dist" / self.docs.resolve().name


@dataclass
class BuildResult:
    executable: Path
    manifest: Manifest
    sha256: str                # of the whole executable: what `sha256sum` and `EXE info` print
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
    signing = signing_of(config)
    with staging_folder(config.cache_dir, config.output_path()) as staging:
        staged = stage(config, staging, progress)
        return package_staged(config, staging, staged, signing, progress)


def signing_of(config: BuildConfig) -> tuple[Optional[Signer], Optional[bytes]]:
    """The signer and the key to pin, checked before anything is built."""
    from bundler.signing import load_signer, public_key

    if config.require_signature and config.sign_key is None:
        raise BuildError(None, "--require-signature needs --sign-key KEY (make a key pair with --new-sign-key KEY)")
    signer = load_signer(config.sign_key) if config.sign_key is not None else None
    return signer, (public_key(config.sign_key) if config.require_signature else None)


@contextmanager
def staging_folder(cache_dir: Path, *outputs: Path) -> Iterator[Path]:
    """A temporary staging folder (and scratch space) in the cache, after clearing killed builds' leftovers."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for output in outputs:
        remove_build_leftovers(cache_dir, output)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("staging"), dir=cache_dir) as tmp, \
            tempfile.TemporaryDirectory(prefix=temp_prefix("scratch"), dir=cache_dir) as scratch, \
            scratch_folder(Path(scratch)):
        yield Path(tmp)


def package_staged(config: BuildConfig, staging: Path, staged: StagedBuild,
                   signing: tuple[Optional[Signer], Optional[bytes]], progress: ProgressCallback = no_progress
                   ) -> BuildResult:
    """The executable for config.target and config.output_path() from a staging folder, with its build report."""
    from bundler.build_report import report_path, summarise_skips, write_build_report
    from bundler.fs import sha256_file
    from bundler.package import package
    from targets import load_target

    signer, pinned_key = signing
    executable = package(staging, load_target(config.target), config.output_path(), config.cache_dir / "stubs",
                         progress, runtime_stub=config.runtime_stub, signer=signer, context=config.context,
                         pinned_key=pinned_key)
    index = staged.index
    report = report_path(executable)
    write_build_report(report, index.info.documents, index.info.chunks, index.duplicate_passages, index.skipped, index.warnings)
    summary = summarise_skips(index.skipped, report.name) if index.skipped else ""
    # one staging folder may serve several targets (bundler/multi_target.py): name the one built here
    manifest = dataclasses.replace(staged.manifest, target=config.target)
    return BuildResult(executable=executable, manifest=manifest, sha256=sha256_file(executable),
                       skipped=staged.skipped, warnings=staged.warnings, model_cached=staged.model_cached,
                       report=report, skip_summary=summary, left_out=index.left_out)


def stage(config: BuildConfig, staging: Path, progress: ProgressCallback = no_progress) -> StagedBuild:
    """Write the staging folder (index, model, manifest): what `python -m runtime --bundle DIR` opens."""
    from bundler.index import build_index
    from bundler.model_source import default_model_path, resolve_model
    from targets import load_target

    target = load_target(config.target)
    source = resolve_model(config.model or default_model_path())
    # Checked before the documents are indexed: a wrong combination is known at once.
    kind, quantization = choose(source, target.onnxruntime, config.graph, config.quantization)
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    # Documents first: their errors are found in seconds, a model export takes minutes.
    index = build_index(config.docs, staging, config.cache_dir / "index", progress, strict=config.strict,
                        include_hidden=config.include_hidden, ray=config.ray)
    model_info, model_cached = _stage_model(source, kind, quantization, config, staging, progress)
    manifest = write_manifest(staging, model_info, target.name, index.info)
    return StagedBuild(manifest=manifest, skipped=index.info.skipped, warnings=index.warnings,
                       model_cached=model_cached, index=index)


def _stage_model(source, kind: GraphKind, quantization: str, config: BuildConfig, staging: Path,
                 progress: ProgressCallback) -> tuple[ModelInfo, bool]:
    """Export and gate the model once per (source, graph, quantization, exporter code, quality text).

    Later builds copy the cached result and only re-apply the perplexity limit.
    """
    from bundler.quality_gate import DEFAULT_TEXT, check_quality, enforce_quality
    from runtime.bundle import DirectoryBundle
    from runtime.decoder import load_decoder

    text = Path(config.quality_text or DEFAULT_TEXT)
    try:
        text_digest = hashlib.sha256(text.read_bytes()).hexdigest()
    except OSError as exc:
        raise BuildError(text, f"cannot read quality text ({exc.strerror})") from None
    fingerprint = source.fingerprint(progress)
    code = code_digest(*MODEL_MAKERS)
    key = _digest([fingerprint, kind.name, quantization, code, text_digest])
    cached = config.cache_dir / "models" / key
    hit = record_matches(cached, code)
    if not hit:
        cached.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=temp_prefix(key), dir=cached.parent))
        try:
            info = kind.export(source, quantization, work, progress)
            info.graph = kind.manifest_name  # the registry names the graph; the runtime opens it by this name
            # The gate runs the model through the runtime's own decoder, as the bundle will.
            (work / layout.MODEL_INFO).write_text(info.to_json())
            info.quality = check_quality(
                work / "model", source.path, config.quality_text, max_ratio=float("inf"),
                decoder_factory=lambda _, length: load_decoder(DirectoryBundle(work), max_length=length),
                progress=progress)
            (work / layout.MODEL_INFO).write_text(info.to_json())
            write_record(work, code)
            replace_folder(work, cached)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    info = ModelInfo.from_json((cached / layout.MODEL_INFO).read_bytes())
    # The manifest tells nothing about the build machine: inputs by file name and content hash,
    # from this build's own inputs (the cached export may have read them from another path).
    info.source, info.source_sha256 = source.path.name, fingerprint
    if config.quality_text is not None:
        info.quality.text = text.name
    info.quality.max_ratio = config.max_ppl_ratio
    enforce_quality(info.quality, source.path)
    shutil.copytree(cached / "model", staging / "model")
    return info, hit


def write_manifest(staging: Path, model: ModelInfo, target_name: str, index: IndexInfo) -> Manifest:
    """The staging folder's manifest.json: what the packager reads and a runtime opening the folder sees."""
    manifest = Manifest(
        model=model,
        index=index,
        build=BuildInfo(
            created=build_date(),
            builder_version=__version__,
            host=f"{platform.system()} {platform.machine()}",  # the platform, never the machine's name
            python=platform.python_version(),
        ),
        target=target_name,
    )
    (staging / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def build_date() -> str:
    """The build date the manifest records: SOURCE_DATE_EPOCH (reproducible-builds.org) when set,
    else none, so that the same inputs built at another time give the same bytes."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return ""
    try:
        return datetime.fromtimestamp(int(epoch), timezone.utc).isoformat()
    except (ValueError, OverflowError, OSError):
        raise BuildError(None, f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds since 1970") from None


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
