"""`build.py update OLD --docs DIR -o NEW`: a new bundle for new documents, made from OLD alone.

OLD gives the runtime stub, the model entries, the index settings, the embedder and every
unchanged document's passages and vectors (bundler/index_reuse.py); only added and modified
documents are parsed and embedded. The result is what a full build of DIR with OLD's model,
target and settings writes (the index entries byte for byte), without the model file.
"""
from __future__ import annotations

import dataclasses
import mmap
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bundler.errors import BuildError
from bundler.leftovers import remove_build_leftovers, temp_prefix
from bundler.onnx_relocate import unrelocate
from bundler.pipeline import DEFAULT_CACHE, write_manifest
from bundler.progress import ProgressCallback, no_progress
from runtime.bundle import FileBundle
from runtime.manifest import Manifest
from runtime.memory import MB
from runtime.payload_coverage import CoverageError, find_stub_end

COPY_BLOCK = 4 << 20


@dataclass
class UpdateConfig:
    old: Path
    docs: Path
    output: Path
    sign_key: Optional[Path] = None
    cache_dir: Path = DEFAULT_CACHE      # parse and vector cache only: an update needs nothing from it
    strict: bool = False
    include_hidden: bool = False


@dataclass
class UpdateResult:
    executable: Path
    manifest: Manifest
    sha256: str
    reused: int                  # documents taken over from OLD
    parsed: int                  # documents parsed now
    embedded: int                # documents embedded now
    removed: int                 # documents OLD held that DIR no longer does
    warnings: list[str] = field(default_factory=list)
    report: Optional[Path] = None
    skip_summary: str = ""


def update(config: UpdateConfig, progress: ProgressCallback = no_progress) -> UpdateResult:
    from bundler.build_report import report_path, summarise_skips, write_build_report
    from bundler.fs import atomic_file, sha256_file
    from bundler.index import build_index
    from bundler.index_reuse import read_reuse
    from bundler.payload_writer import write_bundle
    from bundler.signing import load_signer

    old = FileBundle(Path(config.old))
    progress("check old bundle", 0, 1)
    old.verify()  # nothing damaged is carried into the new file
    progress("check old bundle", 1, 1)
    signer = load_signer(config.sign_key) if config.sign_key is not None else None
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    remove_build_leftovers(config.cache_dir, config.output)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("update"), dir=config.cache_dir) as tmp:
        work = Path(tmp)
        staging = work / "staging"
        stub = _extract_stub(old, work / "stub")
        _check_pinned_key(old, stub, config.sign_key)
        _stage_model(old, staging)
        reuse, settings = read_reuse(old, work / "embedder")
        index = build_index(config.docs, staging, config.cache_dir / "index", progress, strict=config.strict,
                            modes=settings.modes, chunking=settings.chunking, include_hidden=config.include_hidden,
                            bm25=settings.bm25, reuse=reuse)
        manifest = write_manifest(staging, old.manifest.model, old.manifest.target, index.info)
        _carry_target(old.manifest, manifest, staging)
        with atomic_file(config.output, 0o755 if stub is not None else 0o644) as out:
            write_bundle(out, staging, manifest, stub=stub, signer=signer, progress=progress)
    report = report_path(config.output)
    write_build_report(report, index.info.documents, index.info.chunks, index.duplicate_passages, index.skipped,
                       index.warnings)
    new_paths = {record["path"] for record in index.files} | {s.path for s in index.skipped}
    return UpdateResult(executable=config.output, manifest=manifest, sha256=sha256_file(config.output),
                        reused=index.reused, parsed=index.parsed, embedded=index.embedded,
                        removed=len(reuse.paths - new_paths), warnings=index.warnings, report=report,
                        skip_summary=summarise_skips(index.skipped, report.name) if index.skipped else "")


def _extract_stub(old: FileBundle, dest: Path) -> Optional[Path]:
    """OLD's runtime stub as a file (None for a bare payload file): the bytes its manifest's
    stub_sha256 covers, before the zero padding up to the payload."""
    start = old.layout.trailer.payload_start
    if not start:
        return None
    with open(old.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            end = find_stub_end(data, start, old.manifest.stub_sha256, str(old.path))
        except CoverageError as exc:
            raise BuildError(None, str(exc)) from None
        with open(dest, "wb") as out:
            for block in range(0, end, COPY_BLOCK):
                out.write(data[block:min(end, block + COPY_BLOCK)])
    return dest


def _check_pinned_key(old: FileBundle, stub: Optional[Path], sign_key: Optional[Path]) -> None:
    """A stub pinned to a key runs only bundles that key signed: the update must be signed by it."""
    from bundler.signing import public_key, read_pinned_key

    pinned = read_pinned_key(stub) if stub is not None else None
    if pinned is None:
        return
    if sign_key is None:
        raise BuildError(old.path, "its runtime stub is pinned to a signing key (--require-signature): "
                                   "give that key with --sign-key")
    if public_key(sign_key) != pinned:
        raise BuildError(sign_key, f"is not the key {old.path}'s runtime stub is pinned to ({pinned.hex()[:16]}…)")


def _stage_model(old: FileBundle, staging: Path) -> None:
    """Every entry of OLD but the index, as the staging folder of a full build holds it: ONNX
    models point at their weights' entries again (bundler/onnx_relocate.py)."""
    spans = {entry.name: (entry.offset, entry.size) for entry in old.manifest.entries}
    for entry in old.manifest.entries:
        if entry.name.startswith("index/"):
            continue
        path = staging / entry.name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = old.read(entry.name)
        if entry.name.endswith(".onnx"):
            path.write_bytes(unrelocate(bytes(data), entry.name, spans, str(old.path)))
        else:
            with open(path, "wb") as out:
                for block in range(0, len(data), COPY_BLOCK):
                    out.write(data[block:block + COPY_BLOCK])


def _carry_target(old: Manifest, manifest: Manifest, staging: Path) -> None:
    """OLD's target, licences and stub digest; the memory estimate and budget check of the new index."""
    from bundler.budget import check_budget
    from targets import load_target

    manifest.licenses = old.licenses
    manifest.stub_sha256 = old.stub_sha256
    profile = old.target_profile
    if profile is None:
        return
    report = check_budget(staging, manifest, load_target(profile.name), profile.context)
    manifest.target_profile = dataclasses.replace(profile, memory_mb=-(-report.total // MB))

