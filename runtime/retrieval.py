"""Finding the passages that answer a question: BM25, dense embeddings, or both fused.

Everything is read from the bundle lazily: arrays are memory-mapped, chunk records are
decoded only for the hits returned.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from runtime import layout
from runtime.bm25_search import Bm25Search
from runtime.dense_search import DenseSearch
from runtime.errors import UserError
from runtime.text_terms import ANALYZER

# Weighted fusion normalises each method's scores over this many of its best candidates; a search
# orders at least this many passages by document (one_document_at_a_time).
FUSION_CANDIDATES = 100
# top_k of a long score array first finds a floor among every this-many-th score (1M BM25 scores:
# 1.2 ms instead of 5.4 for the positive ones' argpartition)
SAMPLE_STRIDE = 16


class RetrievalError(UserError):
    """The index cannot be used or the query options are wrong; the message says which."""


def read_settings(bundle) -> dict:
    """The index's settings entry, checked for the fields the runtime reads."""
    where = f"{bundle.path}: {layout.SETTINGS}"
    try:
        settings = json.loads(bytes(bundle.read(layout.SETTINGS)))
        modes, analyzer = settings["modes"], settings["analyzer"]
        float(settings["fusion"]["dense_weight"])
        if "dense" in modes:
            int(settings["dense"]["max_length"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RetrievalError(f"{where}: malformed index settings ({type(exc).__name__}: {exc})") from None
    version = settings.get("format", 1)  # format 1 had no field
    if version != layout.FORMAT:
        raise RetrievalError(f"{where}: index format {version!r} is not supported by this runtime "
                             f"(expected {layout.FORMAT}); rebuild the executable with the current builder")
    if not isinstance(modes, list) or not modes or not set(modes) <= {"bm25", "dense"}:
        raise RetrievalError(f"{where}: malformed index settings (modes {modes!r})")
    if analyzer != ANALYZER:
        raise RetrievalError(f"{where}: index built with analyzer {analyzer!r}, runtime has {ANALYZER!r}")
    return settings


@dataclass
class SourceSpan:
    path: str             # relative to the documents folder, posix
    line_start: int       # 1-based, inclusive (within the page for paged formats)
    line_end: int
    page: Optional[int]   # 1-based, for paged formats
    heading: str          # heading path, " > " between levels
    char_start: int       # offsets into the decoded text of the file (of the page for paged formats)
    char_end: int
    # other files holding the same passage, indexed once (absent from records of older builds)
    also_in: list[str] = field(default_factory=list)

    def cite(self) -> str:
        lines = str(self.line_start) if self.line_start == self.line_end else f"{self.line_start}-{self.line_end}"
        page = f" p.{self.page}" if self.page is not None else ""
        return f"{self.path}{page}:{lines}"

    def cite_with_copies(self) -> str:
        """cite(), and how many other files hold the same passage: what a reader is shown."""
        if not self.also_in:
            return self.cite()
        files = "file" if len(self.also_in) == 1 else "files"
        return f"{self.cite()} (also in {len(self.also_in)} other {files})"


@dataclass
class Chunk:
    id: int
    text: str
    source: SourceSpan

    def to_record(self) -> dict:
        record = {"id": self.id, "text": self.text, **vars(self.source)}
        if not record["also_in"]:
            del record["also_in"]
        return record

    @classmethod
    def from_record(cls, record: dict) -> "Chunk":
        record = dict(record)
        return cls(id=record.pop("id"), text=record.pop("text"), source=SourceSpan(**record))


@dataclass
class Hit:
    rank: int
    score: float
    chunk: Chunk


class ChunkStore:
    """Chunk records as JSON lines with a byte-offset array: one record decoded per hit."""

    def __init__(self, records: bytes | memoryview, offsets: np.ndarray):
        self.records = records
        self.offsets = offsets

    @classmethod
    def from_bundle(cls, bundle) -> "ChunkStore":
        return cls(bundle.read(layout.CHUNKS), bundle.array(layout.CHUNK_OFFSETS))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, chunk_id: int) -> Chunk:
        start, end = int(self.offsets[chunk_id]), int(self.offsets[chunk_id + 1])
        return Chunk.from_record(json.loads(bytes(self.records[start:end])))


def top_k(scores: np.ndarray, k: int, positive_only: bool = False) -> np.ndarray:
    """Indices of the k highest scores, best first (ties by lower index)."""
    chosen = None
    if len(scores) >= SAMPLE_STRIDE * k * 4:
        # every SAMPLE_STRIDE-th score's k-th best is at most the k-th best of all: only the scores
        # at or above it can be chosen (about SAMPLE_STRIDE x k of them)
        sample = scores[::SAMPLE_STRIDE]
        floor = sample[np.argpartition(sample, len(sample) - k)[len(sample) - k]]
        if floor > 0 or not positive_only:
            chosen = np.flatnonzero(scores >= floor)
    if chosen is None and positive_only:
        chosen = np.flatnonzero(scores > 0)
    values = scores if chosen is None else scores[chosen]
    n = len(values)
    part = np.argpartition(values, n - k)[n - k :] if n > k else np.arange(n)
    best = part[np.lexsort((part, -values[part]))]
    return best if chosen is None else chosen[best]


def one_document_at_a_time(ids: np.ndarray, starts: np.ndarray, k: int) -> np.ndarray:
    """Positions in `ids` (passages, best first) of the k to return: every document's best passage,
    documents in the order of their best passage (max-passage), before any document's second-best
    passage, and so on. One long document cannot crowd the hits; a corpus of one document still
    gives k passages. starts: layout.DOCUMENT_STARTS."""
    documents = np.searchsorted(starts, ids, side="right") - 1
    by_document = np.argsort(documents, kind="stable")  # within a document, best first
    grouped = documents[by_document]
    group_start = np.maximum.accumulate(np.where(np.r_[True, grouped[1:] != grouped[:-1]], np.arange(len(ids)), 0))
    place = np.empty(len(ids), dtype=np.int64)  # 0 for a document's best passage, 1 for its second, ...
    place[by_document] = np.arange(len(ids)) - group_start
    return np.lexsort((np.arange(len(ids)), place))[:k]


@dataclass
class Candidates:
    """One method's best passages, best first, with their scores, and its score of any passage."""
    ids: np.ndarray
    values: np.ndarray
    score_of: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def of(cls, scores: np.ndarray, depth: int, positive_only: bool = False) -> "Candidates":
        """The best `depth` of a score for every passage."""
        ids = top_k(scores, depth, positive_only)
        return cls(ids, scores[ids], scores.__getitem__)


def fuse(bm25: Candidates, dense: Candidates, dense_weight: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of z-normalised scores over the union of both methods' best candidates.

    Normalising over each method's own top candidates (not the whole collection, where BM25 is
    mostly zeros) puts the two score scales on a comparable footing.
    """
    pool = np.union1d(bm25.ids, dense.ids)
    fused = np.zeros(len(pool), dtype=np.float64)
    for method, weight in ((bm25, 1.0 - dense_weight), (dense, dense_weight)):
        head = method.values[:FUSION_CANDIDATES].astype(np.float64)
        spread = head.std() if len(head) else 0.0
        if spread > 0:
            fused += weight * (method.score_of(pool) - head.mean()) / spread
    best = top_k(fused, min(k, len(pool)))
    return pool[best], fused[best]


class Retriever:
    def __init__(self, chunks: ChunkStore, document_starts: np.ndarray, bm25: Bm25Search | None, dense: DenseSearch | None,
                 dense_weight: float):
        self.chunks = chunks
        self.document_starts = document_starts
        self.bm25 = bm25
        self.dense = dense
        self.dense_weight = dense_weight
        self.modes = [m for m, ok in (("bm25", bm25), ("dense", dense)) if ok is not None]
        # a hybrid query scores BM25 on its own thread while the query is embedded and scanned
        self.background = None
        if bm25 is not None and dense is not None:
            self.modes.append("hybrid")
            if dense.parts > 1:
                self.background = ThreadPoolExecutor(1)

    @classmethod
    def from_bundle(cls, bundle, threads: int | None = None) -> "Retriever":
        settings = read_settings(bundle)
        chunks = ChunkStore.from_bundle(bundle)
        starts = bundle.array(layout.DOCUMENT_STARTS)
        if starts.ndim != 1 or starts.dtype != np.int64 or len(starts) < 2 or starts[0] != 0 or starts[-1] != len(chunks):
            raise RetrievalError(f"{bundle.path}: {layout.DOCUMENT_STARTS}: expected int64 chunk offsets from 0 to "
                                 f"{len(chunks)}, found {starts.dtype} {list(starts.shape)}")
        modes = settings["modes"]
        bm25 = Bm25Search.from_bundle(bundle, len(chunks)) if "bm25" in modes else None
        dense = None
        if "dense" in modes:
            dense = DenseSearch.from_bundle(bundle, settings["dense"]["max_length"], len(chunks), threads)
        return cls(chunks, starts, bm25, dense, settings["fusion"]["dense_weight"])

    def search(self, query: str, k: int = 4, mode: str = "hybrid") -> list[Hit]:
        if mode not in self.modes:
            raise RetrievalError(f"search mode {mode!r} is not in this index (available: {', '.join(self.modes)})")
        if k < 1:
            raise RetrievalError(f"number of passages must be at least 1, got {k}")
        if len(self.chunks) == 0 or not query.strip():
            return []
        # enough passages to find k documents, or k passages of fewer documents
        depth = max(FUSION_CANDIDATES, k)
        if mode == "bm25":
            scores = self.bm25.scores(query)
            ids = top_k(scores, depth, positive_only=True)
            values = scores[ids]
        elif mode == "dense":
            ids, values = self.dense.best(self.dense.encoder.encode([query])[0], depth)
        else:
            def bm25_candidates() -> Candidates:
                return Candidates.of(self.bm25.scores(query), depth, positive_only=True)

            bm25 = self.background.submit(bm25_candidates) if self.background is not None else None
            vector = self.dense.encoder.encode([query])[0]
            dense = Candidates(*self.dense.best(vector, depth), lambda ids: self.dense.exact(vector, ids))
            ids, values = fuse(bm25.result() if bm25 is not None else bm25_candidates(), dense, self.dense_weight, depth)
        chosen = one_document_at_a_time(ids, self.document_starts, k)
        ids, values = ids[chosen], values[chosen]
        return [Hit(rank=r + 1, score=float(v), chunk=self.chunks[int(i)]) for r, (i, v) in enumerate(zip(ids, values))]
