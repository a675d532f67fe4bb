"""Passages for an answer: the best-scoring ones (often two of one document), not the search's one document at a time."""
from __future__ import annotations

import pytest

from bundler.index import build_index
from runtime.prompt import GroundingOptions
from tests.sample_documents import write_docs
from tests.test_document_ranking import LIBRARY
from tests.test_retrieval import open_retriever


def test_by_score_alone_a_long_documents_passages_may_all_come_first(tmp_path, index_cache):
    build_index(write_docs(tmp_path / "docs", LIBRARY), tmp_path / "staging", index_cache)
    retriever = open_retriever(tmp_path / "staging")
    by_document = retriever.search("service step: seal number 4 and its gasket", k=3, mode="bm25")
    by_score = retriever.search("service step: seal number 4 and its gasket", k=3, mode="bm25", by_document=False)
    assert [h.chunk.source.path for h in by_document][:2] == ["manual.md", "spares.txt"]
    assert [h.chunk.source.path for h in by_score] == ["manual.md"] * 3
    assert "seal number 4" in by_score[0].chunk.text
    assert [h.score for h in by_score] == sorted((h.score for h in by_score), reverse=True)
    assert [h.rank for h in by_score] == [1, 2, 3]


def test_answers_are_given_the_best_scoring_passages_by_default():
    assert GroundingOptions().passage_order == "relevance"
    with pytest.raises(ValueError, match="'alphabetical'"):
        GroundingOptions(passage_order="alphabetical")
