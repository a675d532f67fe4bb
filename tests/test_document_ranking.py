"""Hits are passages ranked by document: every document's best passage first (max-passage), so one
long document cannot crowd the hits, and a one-document corpus still gives k passages."""
from __future__ import annotations

import numpy as np
import pytest

from bundler.index import build_index
from runtime import layout
from runtime.retrieval import RetrievalError, one_document_at_a_time
from tests.sample_documents import write_docs
from tests.test_retrieval import open_retriever

MANUAL = "# Coolant manual\n\n" + "\n\n".join(
    f"## Step {n}\n\nStep {n} of the coolant pump service: check the coolant pump seal number {n} and its gasket." for n in range(1, 7))
LIBRARY = {
    "manual.md": MANUAL,
    "spares.txt": "Spare parts\n\nThe coolant pump spare seal kit is in locker B.\n",
    "radio.md": "# Antenna\n\nPoint the high-gain antenna at azimuth 212 degrees.\n",
}


def test_documents_come_in_order_of_their_best_passage_before_any_second_passage():
    starts = np.array([0, 3, 5, 9])               # documents: chunks 0-2, 3-4, 5-8
    ranked = np.array([4, 3, 0, 1, 6, 2, 8])      # documents 1, 1, 0, 0, 2, 0, 2
    assert list(ranked[one_document_at_a_time(ranked, starts, 10)]) == [4, 0, 6, 3, 1, 8, 2]
    assert list(ranked[one_document_at_a_time(ranked, starts, 2)]) == [4, 0]


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_a_long_document_cannot_crowd_out_a_short_one(tmp_path, index_cache, mode):
    result = build_index(write_docs(tmp_path / "docs", LIBRARY), tmp_path / "staging", index_cache)
    retriever = open_retriever(tmp_path / "staging")
    assert retriever.bm25.scores("coolant pump seal")[: result.info.chunks - 2].min() > 0  # every manual passage matches
    hits = retriever.search("coolant pump seal", k=3, mode=mode)
    assert {h.chunk.source.path for h in hits[:2]} == {"manual.md", "spares.txt"}
    assert [h.rank for h in hits] == [1, 2, 3]
    if mode == "bm25":  # no other document matches: the manual's second-best passage comes next
        assert hits[2].chunk.source.path == "manual.md" and len({h.chunk.id for h in hits}) == 3
    else:  # the embedder scores every passage: the third document's best comes before a second manual passage
        assert hits[2].chunk.source.path == "radio.md"


def test_a_corpus_of_one_document_still_gives_k_passages_best_first(tmp_path, index_cache):
    build_index(write_docs(tmp_path / "docs", {"manual.md": MANUAL}), tmp_path / "staging", index_cache)
    retriever = open_retriever(tmp_path / "staging")
    hits = retriever.search("seal number 4", k=3, mode="bm25")
    assert len(hits) == 3 and "seal number 4" in hits[0].chunk.text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_document_starts_that_do_not_cover_the_chunks_are_refused_naming_the_entry(tmp_path, index_cache):
    build_index(write_docs(tmp_path / "docs", LIBRARY), tmp_path / "staging", index_cache)
    np.save(tmp_path / "staging" / layout.DOCUMENT_STARTS, np.array([0, 1], dtype=np.int64))
    with pytest.raises(RetrievalError, match="document_starts.npy: expected int64 chunk offsets from 0 to"):
        open_retriever(tmp_path / "staging")
