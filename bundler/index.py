"""Building the retrieval index of a documents folder into the staging folder's `index/`.

Incremental: each document's chunks (and embeddings) are cached under the builder cache,
keyed by a hash of its bytes and of everything that shapes the result, so an unchanged
document is neither parsed nor embedded again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from bundler.code_digest import code_digest
from bundler.embedder_export import Embedder, export_embedder
from bundler.embedding_pool import EmbeddingPool
from bundler.chunking import ChunkDraft, ChunkingConfig, chunk_blocks
from bundler.errors import BuildError
from bundler.formats import PARSER_VERSION, SkipFile
from bundler.fs import replace_folder, write_atomic
from bundler.index_bm25 import Bm25Config, build_bm25
from bundler.isolated_parse import ParseLimitExceeded, ParseLimits, run_isolated
from bundler.ingest import DEFAULT_MAX_FILE_BYTES, SkippedFile, SourceFile, find_documents, parse_source, unpack_source
from bundler.leftovers import temp_prefix
from bundler.progress import ProgressCallback, no_progress
from runtime import layout
from runtime.dense_search import quantize_vectors
from runtime.manifest import IndexInfo
from runtime.retrieval import Chunk, SourceSpan
from runtime.text_terms import ANALYZER

if TYPE_CHECKING:
    from bundler.index_reuse import IndexReuse

# The code that turns a file into chunks: a document's cache entry names its hash and is made again
# when it changes (the hash is part of the entry's key, and checked with the entry's own sha256).
PARSE_MAKERS = ("bundler.ingest", "bundler.chunking", "bundler.formats")
# Weight of the dense z-score in hybrid fusion (0.6-0.7 best on Cranfield and a second collection: docs/MEASUREMENTS.md#dense-weight).
DENSE_WEIGHT = 0.65


@dataclass
class IndexResult:
    info: IndexInfo
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # "path: message", for the CLI to print
    left_out: list[str] = field(default_factory=list)   # hidden and key files, links to them (not indexed)
    parsed: int = 0            # documents parsed in this build (the rest came from the cache)
    embedded: int = 0          # documents whose chunks were embedded in this build
    chunks_embedded: int = 0
    duplicate_passages: int = 0  # passages indexed once although more files (or places) hold them
    files: list[dict] = field(default_factory=list)  # layout.DOCUMENTS records: each parsed file's key
    reused: int = 0            # documents taken from an earlier bundle's index (bundler/index_reuse.py)


@dataclass
class _Document:
    relative: str
    key: str
    drafts: list[ChunkDraft]


def index_text(chunk: Chunk) -> str:
    """What BM25 and the embedder read: the heading path gives a chunk its context."""
    heading = chunk.source.heading
    return f"{heading}\n{chunk.text}" if heading else chunk.text


def build_index(
    docs_dir: Path,
    out_dir: Path,
    cache_dir: Path,
    progress: ProgressCallback = no_progress,
    strict: bool = False,
    modes: tuple[str, ...] = ("bm25", "dense"),
    chunking: ChunkingConfig = ChunkingConfig(),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    limits: ParseLimits = ParseLimits(),
    include_hidden: bool = False,
    bm25: Bm25Config = Bm25Config(),
    reuse: Optional["IndexReuse"] = None,
    ray: str | None = None,
) -> IndexResult:
    """Writes the index into out_dir/index/ (out_dir is the staging folder), replacing any
    previous index only once the new one is complete. Hidden and key files are left out unless
    `include_hidden` (see `find_documents`). With `reuse` (an update), documents an earlier index
    holds unchanged take its passages and vectors, and the embedder is the one it carries.
    `ray`: a Ray cluster address, or "local", where the documents missing from the cache are
    parsed and embedded (`bundler.ray_build`)."""
    docs_dir, out_dir, cache_dir = Path(docs_dir), Path(out_dir), Path(cache_dir)
    unknown = set(modes) - {"bm25", "dense"}
    if unknown or not modes:
        raise BuildError(None, f"index modes must be among bm25, dense (got {', '.join(modes) or 'none'})")
    modes = tuple(m for m in ("bm25", "dense") if m in modes)
    scan = find_documents(docs_dir, max_file_bytes, include_hidden)
    result = IndexResult(IndexInfo(documents=0, chunks=0), skipped=scan.skipped, left_out=scan.left_out)
    remote = None
    if ray is not None:
        from bundler.ray_build import prepare_on_ray  # Ray is an optional extra

        remote = prepare_on_ray(ray, scan.found, cache_dir, chunking, max_file_bytes, limits, "dense" in modes, progress)
    documents = _load_documents(scan.found, cache_dir, chunking, max_file_bytes, limits, progress, result, reuse)
    if strict and result.skipped:
        first = result.skipped[0]
        raise BuildError(docs_dir / first.path, f"{first.reason} (--strict: {len(result.skipped)} file(s) skipped)")
    drafts = [d for doc in documents for d in doc.drafts]
    kept = _unique_passages(drafts)
    chunks = [Chunk(n, drafts[i].text, span) for n, (i, span) in enumerate(kept)]
    result.duplicate_passages = len(drafts) - len(chunks)
    if not chunks:
        raise BuildError(docs_dir, f"no usable documents ({len(result.skipped)} file(s) skipped)")

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=temp_prefix(".index"), dir=out_dir))
    try:
        settings = {
            "format": layout.FORMAT,
            "analyzer": ANALYZER,
            "modes": list(modes),
            "chunking": dataclasses.asdict(chunking),
            "fusion": {"method": "weighted z-score", "dense_weight": DENSE_WEIGHT},
        }
        all_texts = [index_text(Chunk(0, d.text, d.span)) for d in drafts]
        texts = [all_texts[i] for i, _ in kept]
        _write_chunks(chunks, work)
        _write_document_starts(documents, [i for i, _ in kept], work)
        # each file's content key: an update (bundler/index_reuse.py) knows from it what is unchanged
        (work / layout.DOCUMENTS).write_text(json.dumps({"format": 1, "files": result.files}, ensure_ascii=False),
                                             encoding="utf-8")
        if "bm25" in modes:
            progress("bm25 index", 0, 1)
            settings["bm25"] = {**dataclasses.asdict(bm25), "terms": build_bm25(texts, work, bm25)}
            progress("bm25 index", 1, 1)
        if "dense" in modes:
            settings["dense"] = _write_dense(documents, all_texts, [i for i, _ in kept], work, cache_dir, progress, result,
                                             reuse)
            result.info.embedding_model = settings["dense"]["model"]
        (work / layout.SETTINGS).write_text(json.dumps(settings, indent=1), encoding="utf-8")
        replace_folder(work / "index", out_dir / "index")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if remote is not None:
        result.parsed += remote.parsed
        result.embedded += remote.embedded
        result.chunks_embedded += remote.chunks_embedded
    result.info.documents = len(documents)
    result.info.chunks = len(chunks)
    result.info.modes = list(modes) + (["hybrid"] if len(modes) == 2 else [])
    result.info.skipped = [f"{s.path}: {s.reason}" for s in result.skipped]
    return result


def _unique_passages(drafts: list[ChunkDraft]) -> list[tuple[int, SourceSpan]]:
    """(draft index, span) of the first draft of each distinct passage text, its span listing the
    other files that hold the same text: a man page installed under several names, a licence
    copied into every package, must not fill several sources of one answer."""
    first: dict[str, int] = {}
    others: dict[int, list[str]] = {}
    for index, draft in enumerate(drafts):
        seen = first.setdefault(draft.text, index)
        path = draft.span.path
        if seen != index and path != drafts[seen].span.path and path not in others.setdefault(seen, []):
            others[seen].append(path)
    return [(i, dataclasses.replace(drafts[i].span, also_in=others.get(i, []))) for i in first.values()]


def document_key(source: SourceFile, data: bytes, chunking: ChunkingConfig, max_file_bytes: int) -> str:
    """Everything that shapes a document's chunks: its bytes, how they are parsed and cut."""
    digest = hashlib.sha256()
    recipe = {"parser": PARSER_VERSION, "format": source.format, "gz": source.relative.lower().endswith(".gz"),
              "chunking": dataclasses.asdict(chunking), "max_file_bytes": max_file_bytes,
              "code": code_digest(*PARSE_MAKERS)}
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    digest.update(data)
    return digest.hexdigest()


def _load_documents(sources, cache_dir, chunking, max_file_bytes, limits, progress, result, reuse) -> list[_Document]:
    documents = []
    for done, source in enumerate(sources):
        progress("parse documents", done, len(sources))
        raw = source.path.read_bytes()
        key = document_key(source, raw, chunking, max_file_bytes)
        entry = reuse.entries.get(key) if reuse is not None else None
        result.reused += entry is not None
        entry = entry or read_entry(entry_path(cache_dir, key))
        if entry is None:
            try:
                entry = run_isolated(parse_document, (source, raw, chunking, max_file_bytes), limits)
            except ParseLimitExceeded as exc:
                # not cached: a limit hit on a busy machine should not stick to the file
                result.skipped.append(SkippedFile(source.relative, str(exc), "parse limit"))
                continue
            result.parsed += 1
            store_entry(cache_dir, key, entry)
        result.warnings.extend(f"{source.relative}: {w}" for w in entry["warnings"])
        result.files.append({"path": source.relative, "key": key, **{k: v for k, v in entry.items() if k != "chunks"}})
        if "skip" in entry:
            result.skipped.append(SkippedFile(source.relative, entry["skip"], entry["kind"]))
            continue
        drafts = [ChunkDraft(c["text"], SourceSpan(path=source.relative, **{k: v for k, v in c.items() if k != "text"}))
                  for c in entry["chunks"]]
        documents.append(_Document(source.relative, key, drafts))
    progress("parse documents", len(sources), len(sources))
    result.skipped.sort(key=lambda s: s.path)
    return documents


def _entry_sha256(entry: dict) -> str:
    return hashlib.sha256(json.dumps(entry, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    """Where a document's parsed entry (its chunks, or its skip reason) is cached."""
    return cache_dir / "documents" / key[:2] / f"{key}.json"


def store_entry(cache_dir: Path, key: str, entry: dict) -> None:
    record = {"code": code_digest(*PARSE_MAKERS), "sha256": _entry_sha256(entry), "entry": entry}
    write_atomic(entry_path(cache_dir, key), json.dumps(record, ensure_ascii=False).encode("utf-8"))


def read_entry(path: Path) -> dict | None:
    """A cached document entry; None when there is none, or it names other code or fails its sha256."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["code"] == code_digest(*PARSE_MAKERS) and record["sha256"] == _entry_sha256(record["entry"]):
            return record["entry"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def vectors_folder(cache_dir: Path, embedder_key: str) -> Path:
    # "-one": vectors embedded one text per run (bundler/embedding_pool.py); older ones were batched
    return cache_dir / "embeddings" / f"{embedder_key}-one"


def store_vectors(folder: Path, key: str, vectors: np.ndarray, embedder_key: str) -> None:
    data = _npy_bytes(vectors)
    write_atomic(folder / f"{key}.npy", data)
    write_atomic(folder / f"{key}.json", json.dumps({"code": embedder_key, "sha256": hashlib.sha256(data).hexdigest()}).encode())


def read_vectors(folder: Path, key: str, embedder_key: str) -> np.ndarray | None:
    """A document's cached embeddings; None when there are none, or they fail the sha256 beside them."""
    try:
        record = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        data = (folder / f"{key}.npy").read_bytes()
        if record["code"] == embedder_key and record["sha256"] == hashlib.sha256(data).hexdigest():
            return np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def parse_document(source: SourceFile, raw: bytes, chunking: ChunkingConfig, max_file_bytes: int) -> dict:
    """Chunks of one file (its bytes as read) as cacheable JSON, or the reason it is skipped."""
    try:
        parsed = parse_source(source, unpack_source(source, raw, max_file_bytes))
    except SkipFile as exc:
        return {"skip": str(exc), "kind": _skip_kind(str(exc)), "warnings": []}
    except Exception as exc:  # a parser library choking on a malformed file must not end the build
        return {"skip": f"cannot be parsed ({type(exc).__name__}: {exc})", "kind": "unreadable", "warnings": []}
    drafts = chunk_blocks(source.relative, parsed.blocks, chunking)
    records = []
    for draft in drafts:
        span = vars(draft.span).copy()
        del span["path"], span["also_in"]
        records.append({"text": draft.text, **span})
    return {"chunks": records, "warnings": parsed.warnings}


def _skip_kind(reason: str) -> str:
    """The summary's name for a parser's reason (SkipFile messages of bundler.formats)."""
    for start, kind in (("empty file", "empty"), ("binary data", "binary"), ("not UTF-8", "binary"), ("no text", "no text"),
                        ("no extractable text", "no text"), ("encrypted", "encrypted"), ("decompresses to more", "too large"),
                        ("man page alias", "man page alias")):
        if reason.startswith(start):
            return kind
    return "unreadable"


def _write_chunks(chunks: list[Chunk], work: Path) -> None:
    (work / "index").mkdir(parents=True)
    lines = [json.dumps(c.to_record(), ensure_ascii=False).encode("utf-8") + b"\n" for c in chunks]
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum([len(line) for line in lines], out=offsets[1:])
    (work / layout.CHUNKS).write_bytes(b"".join(lines))
    np.save(work / layout.CHUNK_OFFSETS, offsets)


def _write_document_starts(documents: list[_Document], kept: list[int], work: Path) -> None:
    """Chunks are kept in document order (a passage held by several files stays with the first), so
    each document's chunks are one range: hits can be ranked and capped per document."""
    document_of_draft = np.repeat(np.arange(len(documents)), [len(doc.drafts) for doc in documents])
    counts = np.bincount(document_of_draft[kept], minlength=len(documents))
    np.save(work / layout.DOCUMENT_STARTS, np.concatenate(([0], np.cumsum(counts))).astype(np.int64))


def _write_dense(documents, texts, kept, work, cache_dir, progress, result, reuse) -> dict:
    """Embeds every passage of every document (cached per document), stores the kept ones.

    Vectors are quantized per row (quantize_vectors), so a document's int8 rows do not depend on
    the others: an update takes an unchanged document's rows from the earlier index as they are."""
    embedder: Embedder = reuse.embedder if reuse is not None else export_embedder(cache_dir, progress)
    folder = vectors_folder(cache_dir, embedder.key)
    rows: list[tuple[np.ndarray, np.ndarray] | None] = []  # each document's int8 rows and scales
    pending: list[int] = []  # documents to embed now
    start = 0
    spans = []
    for index, doc in enumerate(documents):
        spans.append((start, start + len(doc.drafts)))
        start += len(doc.drafts)
        known = reuse.vectors.get(doc.key) if reuse is not None else None
        if known is None:
            cached = read_vectors(folder, doc.key, embedder.key)
            known = quantize_vectors(cached) if cached is not None else None
        rows.append(known)
        if known is None:
            pending.append(index)
    if pending:
        # all pending chunks in one pass: each is embedded alone, so batch-mates cannot shift its vector
        pool = EmbeddingPool(embedder.model, embedder.tokenizer, embedder.max_length)
        flat = pool.encode_each([t for d in pending for t in texts[slice(*spans[d])]],
                                lambda done, total: progress("embed chunks", done, total))
        ends = np.cumsum([spans[d][1] - spans[d][0] for d in pending])
        for d, doc_vectors in zip(pending, np.split(flat, ends[:-1])):
            vectors = doc_vectors.astype(np.float32)
            store_vectors(folder, documents[d].key, vectors, embedder.key)
            rows[d] = quantize_vectors(vectors)
    result.embedded = len(pending)
    result.chunks_embedded = sum(spans[d][1] - spans[d][0] for d in pending)

    quantized = np.concatenate([q for q, _ in rows])[kept]
    scales = np.concatenate([s for _, s in rows])[kept]
    (work / layout.DENSE_MODEL).parent.mkdir(parents=True, exist_ok=True)
    np.save(work / layout.DENSE_VECTORS, quantized)
    np.save(work / layout.DENSE_SCALES, scales)
    shutil.copyfile(embedder.model, work / layout.DENSE_MODEL)
    shutil.copyfile(embedder.tokenizer, work / layout.DENSE_TOKENIZER)
    return {"model": embedder.name, "key": embedder.key, "max_length": embedder.max_length, "dim": int(quantized.shape[1])}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


