"""Document ingestion, chunking, index building and retrieval, on generated sample files."""
from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundler.chunking import ChunkingConfig, chunk_blocks, token_cost
from bundler.errors import BuildError
from bundler.formats import parser_for
from bundler.index import build_index
from runtime.bundle import Bundle
from runtime.retrieval import Retriever, RetrievalError
from tests.fixtures_retrieval import REPO, write_pdf
from tests.sample_documents import write_docs

STATION = {
    "pumps/coolant-pump.md": (
        "# Coolant pump P-7\n\nGeneral description of the pump housing.\n\n"
        "## Priming\n\nThe coolant pump P-7 is primed by opening bleed valve V12 for thirty seconds\n"
        "while the pump runs at idle speed.\n"
    ),
    "power/solar-array.txt": "Solar array maintenance\n\nClean the solar panels every ninety days with deionised water.\n",
    "radio/antenna.md": "# Antenna alignment\n\nPoint the high-gain antenna at azimuth 212 degrees before the evening pass.\n",
}


def open_retriever(staging: Path) -> Retriever:
    """The runtime's view: a folder holding the index, opened as a bundle."""
    return Retriever.from_bundle(Bundle.open(staging))


def chunks_of(path: Path, root: Path, config: ChunkingConfig = ChunkingConfig()):
    relative = path.relative_to(root).as_posix()
    data = path.read_bytes()
    if relative.endswith(".gz"):
        data = gzip.decompress(data)
    return chunk_blocks(relative, parser_for(relative)(data, lambda m: None), config)


def find(drafts, phrase):
    matches = [d for d in drafts if phrase in d.text]
    assert matches, f"no chunk holds {phrase!r}: {[d.text for d in drafts]}"
    return matches[0]


# --- formats and spans -------------------------------------------------------------------


def test_markdown_chunk_keeps_heading_path_lines_and_exact_text(sample_formats):
    drafts = chunks_of(sample_formats / "guide.md", sample_formats)
    chunk = find(drafts, "azimuth 212")
    assert chunk.span.heading == "Guide > Antenna"
    assert (chunk.span.line_start, chunk.span.line_end) == (5, 7)
    source = (sample_formats / "guide.md").read_text()
    assert source[chunk.span.char_start : chunk.span.char_end] == chunk.text
    assert chunk.span.cite() == "guide.md:5-7"


def test_markdown_setext_titles_and_fenced_code(tmp_path):
    path = tmp_path / "readme.md"
    path.write_text("Station\n=======\n\nIntro.\n\nSetup\n-----\n\n```\n# not a heading\n```\n\nText\n---\n\nBody.\n")
    drafts = chunks_of(path, tmp_path)
    code = find(drafts, "# not a heading")
    assert code.span.heading == "Station > Setup" and (code.span.line_start, code.span.line_end) == (6, 11)
    assert find(drafts, "Body.").span.heading == "Station > Text"


def test_plain_text_paragraphs_of_one_section_share_a_chunk_with_their_lines(sample_formats):
    chunk = find(chunks_of(sample_formats / "notes.txt", sample_formats), "Diesel tank")
    assert "Fuel log" in chunk.text and chunk.span.line_start == 1 and chunk.span.line_end == 4
    assert chunk.span.page is None and chunk.span.heading == ""


def test_rst_underlined_titles_become_heading_levels(sample_formats):
    chunk = find(chunks_of(sample_formats / "manual.rst", sample_formats), "Charge the battery")
    assert chunk.span.heading == "Manual > Battery"
    assert (chunk.span.line_start, chunk.span.line_end) == (6, 9)


def test_html_text_without_scripts_with_source_lines(sample_formats):
    drafts = chunks_of(sample_formats / "page.html", sample_formats)
    chunk = find(drafts, "channel 16")
    assert "Tune the radio to channel 16 for distress calls." in chunk.text
    assert chunk.span.heading == "Radio"
    assert chunk.span.line_start == 2 and chunk.span.line_end == 4
    assert not any("hidden" in d.text or "p{}" in d.text for d in drafts)


def test_pdf_chunks_carry_page_numbers(sample_formats):
    drafts = chunks_of(sample_formats / "handbook.pdf", sample_formats)
    chunk = find(drafts, "ceramic filter")
    assert chunk.span.page == 2
    assert chunk.span.line_start == 1 and chunk.span.line_end == 2
    assert chunk.span.cite() == "handbook.pdf p.2:1-2"
    assert find(drafts, "Handbook cover").span.page == 1


def test_docx_headings_and_paragraph_lines(sample_formats):
    chunk = find(chunks_of(sample_formats / "procedures.docx", sample_formats), "foam extinguisher")
    assert chunk.span.heading == "Procedures > Fire"
    assert (chunk.span.line_start, chunk.span.line_end) == (3, 4)


@pytest.mark.parametrize("name", ["man/pumpctl.8", "man/pumpctl-copy.8.gz"])
def test_man_page_sections_and_escapes(sample_formats, name):
    drafts = chunks_of(sample_formats / name, sample_formats)
    assert find(drafts, "control the coolant pumps").span.heading == "PUMPCTL(8) > NAME"
    chunk = find(drafts, "bleed valve")
    assert chunk.span.heading == "PUMPCTL(8) > DESCRIPTION"
    assert "pumpctl\nprimes, starts and stops coolant pumps." in chunk.text
    assert chunk.span.line_start == 8 and chunk.span.line_end == 12
    assert "[-p pump] prime" in find(drafts, "[-p").text


def test_long_paragraph_becomes_overlapping_windows_within_budget(tmp_path):
    words = [f"word{i}" for i in range(600)]
    lines = [" ".join(words[i : i + 10]) for i in range(0, 600, 10)]
    path = tmp_path / "long.txt"
    path.write_text("\n".join(lines) + "\n")
    config = ChunkingConfig(max_tokens=100, overlap_tokens=20)
    drafts = chunks_of(path, tmp_path, config)
    assert len(drafts) > 6
    assert all(token_cost(d.text) <= 100 for d in drafts)
    text = path.read_text()
    for first, second in zip(drafts, drafts[1:]):
        assert first.text.split()[-1] in second.text.split()  # overlap
        assert second.span.line_start >= first.span.line_start
        assert text[second.span.char_start : second.span.char_end] == second.text
    joined = " ".join(d.text for d in drafts).split()
    assert set(joined) == set(words)


def test_a_long_underlined_heading_shares_its_chunk_with_the_first_paragraph(tmp_path):
    # The FAQ's question headings: the title plus its underline leave no room for the paragraph
    # under them, and a chunk holding only the heading answers nothing when it is retrieved.
    title = "How do I check if an object is an instance of a given class or of a subclass of it?"
    answer = "Use the built-in function isinstance(obj, cls). " + " ".join(f"w{i}" for i in range(140))
    path = tmp_path / "faq.rst"
    path.write_text(f"{title}\n{'-' * len(title)}\n\n{answer}\n\nA second paragraph about subclasses.\n")
    drafts = chunks_of(path, tmp_path)
    first = drafts[0]
    assert first.text.startswith(title) and "isinstance(obj, cls)" in first.text
    assert first.span.line_start == 1 and first.span.line_end == 4
    assert path.read_text()[first.span.char_start : first.span.char_end] == first.text
    assert not any(d.text.strip() == f"{title}\n{'-' * len(title)}" for d in drafts)
    assert "A second paragraph about subclasses." in drafts[-1].text


def test_a_section_holding_only_its_title_makes_no_chunk(tmp_path):
    path = tmp_path / "faq.rst"
    path.write_text("Python in the real world\n========================\n\n"
                    "How stable is Python?\n---------------------\n\nVery stable.\n\nSee also\n--------\n")
    drafts = chunks_of(path, tmp_path)
    assert [d.text for d in drafts] == ["How stable is Python?\n---------------------\n\nVery stable."]
    assert drafts[0].span.heading == "Python in the real world > How stable is Python?"
    # A document of nothing but titles keeps them: they are all it has to find.
    path.write_text("Contents\n========\n")
    assert [d.text for d in chunks_of(path, tmp_path)] == ["Contents\n========"]

# --- building and searching -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_known_question_retrieves_the_right_chunk_in_each_mode(tmp_path, index_cache, mode):
    docs = write_docs(tmp_path / "docs", STATION)
    build_index(docs, tmp_path / "staging", index_cache)
    retriever = open_retriever(tmp_path / "staging")
    assert retriever.modes == ["bm25", "dense", "hybrid"]
    questions = {
        "How do I prime the coolant pump?": ("pumps/coolant-pump.md", "bleed valve V12"),
        "How often should the solar panels be cleaned?": ("power/solar-array.txt", "ninety days"),
        "Which direction must the antenna point?": ("radio/antenna.md", "azimuth 212"),
    }
    for question, (path, phrase) in questions.items():
        best = retriever.search(question, k=2, mode=mode)[0]
        assert best.chunk.source.path == path and phrase in best.chunk.text, (question, best)
        assert best.rank == 1


def test_every_format_is_indexed_and_searchable(sample_formats, tmp_path, index_cache):
    result = build_index(sample_formats, tmp_path / "staging", index_cache, modes=("bm25",))
    assert result.skipped == [] and result.info.documents == 8
    retriever = open_retriever(tmp_path / "staging")
    assert retriever.modes == ["bm25"]
    hit = retriever.search("ceramic filter cartridge", k=1, mode="bm25")[0]
    assert hit.chunk.source.cite() == "handbook.pdf p.2:1-2"
    hit = retriever.search("foam extinguisher fuel fires", k=1, mode="bm25")[0]
    assert hit.chunk.source.path == "procedures.docx"
    with pytest.raises(RetrievalError, match="dense"):
        retriever.search("anything", mode="dense")


def test_search_options_limit_hits_and_bm25_needs_a_matching_term(tmp_path, index_cache):
    docs = write_docs(tmp_path / "docs", STATION)
    result = build_index(docs, tmp_path / "staging", index_cache)
    retriever = open_retriever(tmp_path / "staging")
    assert retriever.search("zebra xylophone", k=3, mode="bm25") == []
    hits = retriever.search("pump antenna solar", k=2, mode="hybrid")
    assert [h.rank for h in hits] == [1, 2] and hits[0].score >= hits[1].score
    assert len(retriever.search("pump", k=50, mode="dense")) == result.info.chunks
    with pytest.raises(RetrievalError, match="'fuzzy' is not in this index"):
        retriever.search("pump", mode="fuzzy")


def test_incremental_rebuild_reembeds_only_the_changed_file(tmp_path, index_cache):
    docs = write_docs(tmp_path / "docs", STATION)
    staging = tmp_path / "staging"
    first = build_index(docs, staging, index_cache)
    assert (first.parsed, first.embedded) == (3, 3)
    (docs / "power/solar-array.txt").write_text(
        "Solar array maintenance\n\nClean the panels monthly.\n\nCheck the charge controller fuses.\n")
    second = build_index(docs, staging, index_cache)
    assert (second.parsed, second.embedded, second.chunks_embedded) == (1, 1, 1)
    third = build_index(docs, staging, index_cache)
    assert (third.parsed, third.embedded) == (0, 0)
    retriever = open_retriever(staging)
    hit = retriever.search("charge controller fuses", k=1, mode="hybrid")[0]
    assert hit.chunk.source.path == "power/solar-array.txt" and "fuses" in hit.chunk.text


def test_index_is_plain_arrays_int8_vectors_and_json_lines(tmp_path, index_cache):
    import numpy as np

    docs = write_docs(tmp_path / "docs", STATION)
    staging = tmp_path / "staging"
    build_index(docs, staging, index_cache)
    index_dir = staging / "index"
    names = sorted(p.relative_to(index_dir).as_posix() for p in index_dir.rglob("*") if p.is_file())
    assert names == ["bm25/doc_ids.npy", "bm25/indptr.npy", "bm25/vocab.json", "bm25/weights.npy", "chunk_offsets.npy",
                     "chunks.jsonl", "dense/model.onnx", "dense/scales.npy", "dense/tokenizer.json", "dense/vectors.npy",
                     "document_starts.npy", "documents.json", "index.json"]
    vectors, scales = np.load(index_dir / "dense/vectors.npy"), np.load(index_dir / "dense/scales.npy")
    records = [json.loads(line) for line in (index_dir / "chunks.jsonl").read_text().splitlines()]
    starts = np.load(index_dir / "document_starts.npy")
    assert starts.dtype == np.int64 and list(starts) == [0] + [i for i in range(1, len(records) + 1)
                                                              if i == len(records) or records[i]["path"] != records[i - 1]["path"]]
    assert vectors.dtype == np.int8 and vectors.shape == (len(records), 384)
    assert scales.dtype == np.float32 and scales.shape == (len(records),)
    assert np.allclose(np.linalg.norm(vectors * scales[:, None], axis=1), 1.0, atol=0.01)  # unit vectors
    assert [r["id"] for r in records] == list(range(len(records)))
    assert [p.name for p in staging.iterdir()] == ["index"]  # no temp folder left
    again = tmp_path / "again"
    build_index(docs, again, index_cache)
    for name in ("dense/vectors.npy", "dense/scales.npy", "index.json"):
        assert (again / "index" / name).read_bytes() == (index_dir / name).read_bytes(), name


def test_dense_scores_of_mapped_vectors_match_numpy_cosine(tmp_path):
    import numpy as np

    from runtime.dense_search import SCORE_BLOCK_ROWS, DenseSearch, quantize_vectors

    rng = np.random.default_rng(3)
    rows = 5 * SCORE_BLOCK_ROWS + 77  # several blocks per thread and a short last block
    unit = rng.standard_normal((rows, 384)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    quantized, scales = quantize_vectors(unit)
    np.save(tmp_path / "vectors.npy", quantized)
    np.save(tmp_path / "scales.npy", scales)
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")  # as a bundle maps its .npy entries
    query = unit[123] * 0.6 + unit[2600] * 0.8
    query /= np.linalg.norm(query)
    expected = (quantized.astype(np.float64) * scales[:, None].astype(np.float64)) @ query.astype(np.float64)
    for threads in (1, 2, 3):
        scores = DenseSearch(None, mapped, np.load(tmp_path / "scales.npy", mmap_mode="r"), threads).score_vector(query)
        assert scores.dtype == np.float32 and scores.shape == (rows,)
        assert np.abs(scores - expected).max() < 1e-5
    assert np.abs(scores - unit @ query).max() < 0.01  # int8 rounding against the float vectors
    assert set(np.argsort(-scores)[:2]) == {123, 2600}


def test_index_of_an_older_format_is_refused_with_a_clear_error(tmp_path, index_cache):
    docs = write_docs(tmp_path / "docs", STATION)
    staging = tmp_path / "staging"
    build_index(docs, staging, index_cache)
    settings_path = staging / "index" / "index.json"
    settings = json.loads(settings_path.read_text())
    del settings["format"]  # as format 1 wrote it, vectors inside an ONNX scorer graph
    settings_path.write_text(json.dumps(settings))
    with pytest.raises(RetrievalError, match="index format 1 is not supported.*rebuild"):
        open_retriever(staging)


def test_vectors_that_do_not_match_the_chunks_are_refused_naming_the_entry(tmp_path, index_cache):
    import numpy as np

    from runtime.errors import UserError

    docs = write_docs(tmp_path / "docs", STATION)
    staging = tmp_path / "staging"
    build_index(docs, staging, index_cache)
    vectors = staging / "index" / "dense" / "vectors.npy"
    np.save(vectors, np.load(vectors)[:-1])
    with pytest.raises(UserError, match=r"index/dense/vectors.npy: expected int8 \[4, dim\] vectors.*found int8 \[3, 384\]"):
        open_retriever(staging)


def test_runtime_retrieval_imports_no_builder_or_heavy_library():
    code = (
        "import sys, runtime.retrieval\n"
        "bad = [m for m in ('scipy', 'bm25s', 'torch', 'transformers', 'onnx', 'bundler', 'pypdf', 'docx') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- bad input -----------------------------------------------------------------------------


def test_missing_documents_folder_is_a_build_error(tmp_path, index_cache):
    with pytest.raises(BuildError, match="does not exist") as error:
        build_index(tmp_path / "nope", tmp_path / "out", index_cache)
    assert error.value.path == str(tmp_path / "nope")


def test_folder_without_usable_documents_is_a_build_error(tmp_path, index_cache):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (docs / "empty.txt").write_text("")
    with pytest.raises(BuildError, match="no usable documents"):
        build_index(docs, tmp_path / "out", index_cache)
    assert not (tmp_path / "out" / "index").exists()


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (64 * 1024 * 1024))
    return buffer.getvalue()


BAD_INPUTS = {
    "corrupt.pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\ngarbage\n%%EOF\n", "PDF"),
    "empty.txt": (b"", "empty file"),
    "binary.txt": (bytes(range(256)) * 64, "binary data"),
    "one-line.txt": (b"x " * 150_000, "a line of 300000 characters"),
    "bomb.docx": (zip_bomb(), "zip bomb"),
    "not-a-zip.docx": (b"this is not a zip archive", "not a zip archive"),
}


def test_each_bad_file_is_skipped_with_its_reason_and_the_build_goes_on(tmp_path, index_cache):
    docs = write_docs(tmp_path / "docs", STATION)
    for name, (data, _) in BAD_INPUTS.items():
        (docs / name).write_bytes(data)
    write_pdf(docs / "locked.pdf", [["secret text"]], password="hunter2")
    (docs / "latin1.txt").write_bytes("Caf\xe9 opening hours: nine to five.\n".encode("latin-1"))
    result = build_index(docs, tmp_path / "staging", index_cache, modes=("bm25",))
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == set(BAD_INPUTS) | {"locked.pdf"}
    for name, (_, reason) in BAD_INPUTS.items():
        assert reason in reasons[name], (name, reasons[name])
    assert "encrypted" in reasons["locked.pdf"]
    assert result.info.documents == 4
    assert any(w.startswith("latin1.txt: not valid UTF-8") for w in result.warnings)
    assert f"bomb.docx: {reasons['bomb.docx']}" in result.info.skipped
    retriever = open_retriever(tmp_path / "staging")
    assert retriever.search("Caf opening hours", k=1, mode="bm25")[0].chunk.source.path == "latin1.txt"


def test_strict_build_fails_on_any_skipped_file(tmp_path, index_cache):
    docs = write_docs(tmp_path / "docs", STATION)
    (docs / "empty.txt").write_bytes(b"")
    with pytest.raises(BuildError, match="empty file") as error:
        build_index(docs, tmp_path / "staging", index_cache, strict=True)
    assert error.value.path == str(docs / "empty.txt")
    assert not (tmp_path / "staging" / "index").exists()


SECRETS = {
    ".env": "API_TOKEN=hunter2-env\n",
    ".ssh/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\nhunter2-rsa\n",
    ".ssh/notes.txt": "hunter2-ssh-notes\n",
    ".git/COMMIT_EDITMSG.md": "hunter2-git\n",
    "certs/server.pem": "hunter2-pem\n",
    "certs/client.key": "hunter2-key\n",
    "certs/id_ed25519": "hunter2-ed25519\n",
}


def _secret_docs(tmp_path: Path) -> Path:
    docs = write_docs(tmp_path / "docs", {**STATION, **SECRETS})
    os.symlink(".ssh/id_rsa", docs / "keys.txt")            # a document-looking link to a key
    os.symlink("../.env", docs / "certs" / "settings.md")   # a link into a hidden file
    (tmp_path / "outside.txt").write_text("hunter2-outside\n")
    os.symlink(tmp_path / "outside.txt", docs / "shared.txt")
    return docs


def _indexed_text(staging: Path) -> str:
    return (staging / "index" / "chunks.jsonl").read_text()


def test_hidden_folders_key_files_and_links_to_them_are_left_out_and_counted(tmp_path, index_cache):
    docs = _secret_docs(tmp_path)
    result = build_index(docs, tmp_path / "staging", index_cache, modes=("bm25",))
    assert result.left_out == sorted([".env", ".git/", ".ssh/", "certs/client.key", "certs/id_ed25519",
                                      "certs/server.pem", "certs/settings.md", "keys.txt"])
    assert [s.path for s in result.skipped] == ["shared.txt"]
    assert "outside the documents folder" in result.skipped[0].reason
    assert result.info.documents == len(STATION)
    assert "hunter2" not in _indexed_text(tmp_path / "staging")


def test_include_hidden_indexes_hidden_files_key_files_and_every_symlink(tmp_path, index_cache):
    docs = _secret_docs(tmp_path)
    result = build_index(docs, tmp_path / "staging", index_cache, modes=("bm25",), include_hidden=True)
    assert result.left_out == []
    text = _indexed_text(tmp_path / "staging")
    # text files, with or without a suffix, are read; .pem and .key are no document format
    for word in ("hunter2-env", "hunter2-rsa", "hunter2-ssh-notes", "hunter2-git", "hunter2-ed25519", "hunter2-outside"):
        assert word in text
    assert {s.path for s in result.skipped} == {"certs/client.key", "certs/server.pem"}


def test_hidden_files_unsupported_types_outside_symlinks_and_oversized_files(tmp_path, index_cache):
    docs = write_docs(tmp_path / "docs", STATION)
    (docs / ".git").mkdir()
    (docs / ".git" / "notes.txt").write_text("hidden folder text")
    (docs / ".draft.md").write_text("hidden file text")
    (docs / "diagram.png").write_bytes(b"\x89PNG")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside the documents folder")
    os.symlink(outside, docs / "link.txt")
    os.symlink(docs / "radio/antenna.md", docs / "antenna-link.md")
    (docs / "huge.txt").write_text("big text\n" * 2000)
    result = build_index(docs, tmp_path / "staging", index_cache, modes=("bm25",), max_file_bytes=10_000)
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == {"diagram.png", "link.txt", "huge.txt"}
    assert reasons["diagram.png"] == "unsupported file type"
    assert "outside the documents folder" in reasons["link.txt"]
    assert "10000 byte limit" in reasons["huge.txt"]
    assert result.info.documents == 4  # three documents and the in-folder symlink
