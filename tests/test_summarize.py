"""Summaries: which passages a scope selects, map-reduce inside the context window, and every
sentence citing passages that exist; through the CLI and the server."""
from __future__ import annotations

import json
import re

import pytest

from runtime import cli
from runtime.assistant import Assistant
from runtime.bundle import Bundle
from runtime.generation import GenerationConfig
from runtime.retrieval import Chunk, SourceSpan
from runtime.summarize import Scope, Summarizer, SummaryError, attribute_sentences, passages_in_scope
from tests.test_queryapp import raw


def chunk(number: int, text: str, path: str = "manual.md", line: int = 1) -> Chunk:
    return Chunk(id=number, text=text, source=SourceSpan(path=path, line_start=line, line_end=line + 2, page=None,
                                                         heading="", char_start=0, char_end=len(text)))


@pytest.mark.parametrize("spec, expected", [
    ("guide.md", Scope("guide.md")),
    ("docs/guide.md:10-80", Scope("docs/guide.md", lines=(10, 80))),
    ("guide.md:12", Scope("guide.md", lines=(12, 12))),
    ("manual.pdf:p3-5", Scope("manual.pdf", pages=(3, 5))),
    ("C:/odd:name.txt", Scope("C:/odd:name.txt")),
])
def test_scope_reads_files_lines_and_pages_as_citations_print_them(spec, expected):
    assert Scope.parse(spec) == expected


@pytest.mark.parametrize("spec", ["guide.md:80-10", "manual.pdf:p0-2", ""])
def test_impossible_scopes_are_refused(spec):
    with pytest.raises(SummaryError):
        Scope.parse(spec)


def test_a_document_scope_takes_only_that_files_passages_and_finds_it_by_its_name(query_assistant):
    chunks = query_assistant.retriever.chunks
    passages = passages_in_scope(chunks, Scope.parse("coolant-pump.md"))
    assert passages and {p.source.path for p in passages} == {"pumps/coolant-pump.md"}
    with pytest.raises(SummaryError, match="nothing.md: no such document"):
        passages_in_scope(chunks, Scope.parse("nothing.md"))
    with pytest.raises(SummaryError, match="no passage"):
        passages_in_scope(chunks, Scope.parse("pumps/coolant-pump.md:900-990"))


def test_sentences_keep_the_models_citations_or_cite_the_passage_sharing_the_most_words():
    passages = [chunk(0, "The coolant pump is primed through valve V12."),
                chunk(1, "Solar panels are cleaned with deionised water every ninety days.")]
    text = ("Open V12 to prime the pump [1]. Panels get deionised water. Zebras dance at dawn. "
            "Cite nothing real [7].")
    sentences = attribute_sentences(text, passages)
    assert [(s.sources, s.cited_by_model) for s in sentences] == [
        ([1], True), ([2], False), ([], False), ([], False)]


def test_a_selection_longer_than_the_window_is_summarised_in_parts_then_combined(query_staging):
    assistant = Assistant.from_bundle(Bundle.open(query_staging), threads=1, ctx=320)
    words = "valve pump coolant bleed prime idle bubbles flow pressure seal".split()
    passages = [chunk(i, " ".join(words[(i + j) % len(words)] for j in range(70)), line=1 + 5 * i)
                for i in range(10)]
    summarizer = Summarizer(assistant.tokenizer, assistant.decoder)
    batches = summarizer._batches(passages, 320 - 16, topic=None)
    numbers = [[int(n) for n in re.findall(r"^\[(\d+)\]", m[1]["content"], flags=re.M)] for m in batches]
    assert len(batches) > 1
    assert sum(numbers, []) == list(range(1, 11))  # numbered once across the parts, in order
    assert all(len(assistant.tokenizer.encode_chat(m)) <= 320 - 16 for m in batches)
    passes = []
    summary = summarizer.summarize(passages, GenerationConfig(max_new_tokens=16),
                                   on_pass=lambda done, total: passes.append((done, total)))
    summary.finish()
    assert summary.stats.batches == len(batches)
    assert summary.stats.passes == len(batches) + 1
    assert passes == [(i, len(batches) + 1) for i in range(1, len(batches) + 1)]
    assert summary.text and all(1 <= n <= 10 for s in summary.sentences for n in s.sources)


def _scripted_summary(query_assistant, wrap_up: float):
    from tests.test_answer_sentence_stop import ScriptedDecoder

    tokenizer = query_assistant.tokenizer
    script = ("The pump starts first. Then valve A opens slowly. Water fills the red tank. "
              "A gauge shows the pressure. Operators check every seal twice. Alarms sound below two bar. "
              "Filters are changed each month. Spare parts sit in locker nine. The log records each run. "
              "Night shifts watch the heaters. Nobody vents gas indoors. Reports go to the chief engineer.")
    end_id = min(tokenizer.eos_token_ids)
    ids = tokenizer.encode(script)
    decoder = ScriptedDecoder(ids, end_id, vocab=max(end_id, *ids) + 1)
    summary = Summarizer(tokenizer, decoder).summarize(
        [chunk(1, "The coolant loop has twelve valves.")], GenerationConfig(max_new_tokens=40, speculative=False),
        wrap_up=wrap_up).finish()
    return summary, script


def test_a_summary_past_its_wrap_up_share_ends_with_its_next_sentence(query_assistant):
    summary, script = _scripted_summary(query_assistant, wrap_up=0.75)
    assert summary.stats.finish_reason == "stop"
    assert summary.text.endswith(".") and script.startswith(summary.text) and not summary.stats.loop_stopped
    assert 30 < summary.stats.new_tokens <= 40
    cut, _ = _scripted_summary(query_assistant, wrap_up=0)
    assert cut.stats.finish_reason == "length" and cut.stats.new_tokens == 40
    assert not cut.text.endswith(".") and len(cut.text) > len(summary.text)


def test_summarize_command_prints_json_with_sentences_citing_the_documents_passages(query_staging, capsys):
    code = cli.main(["--bundle", str(query_staging), "summarize", "radio/antenna.md", "--max-tokens", "12", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passages"] and {p["source"]["path"] for p in out["passages"]} == {"radio/antenna.md"}
    assert out["summary"] and out["stats"]["passes"] == 1
    assert all(1 <= n <= len(out["passages"]) for s in out["sentences"] for n in s["sources"])


def test_summarize_needs_exactly_one_of_a_document_and_a_query(query_staging, capsys):
    assert cli.main(["--bundle", str(query_staging), "summarize"]) == 2
    assert cli.main(["--bundle", str(query_staging), "summarize", "a.md", "--query", "pump"]) == 2
    assert capsys.readouterr().err.count("error:") == 2


def test_server_summarizes_a_topic_and_refuses_an_unknown_document(query_server):
    status, _, body = raw(query_server, "POST", "/v1/summarize",
                          json.dumps({"query": "solar panels", "k": 2, "max_tokens": 8}).encode(),
                          {"Content-Type": "application/json"})
    summary = json.loads(body)
    assert status == 200 and summary["object"] == "summary" and len(summary["passages"]) == 2
    assert "power/solar-array.txt" in {p["source"]["path"] for p in summary["passages"]}
    status, _, body = raw(query_server, "POST", "/v1/summarize", json.dumps({"document": "nope.md"}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 400 and "nope.md" in json.loads(body)["error"]["message"]
    status, _, body = raw(query_server, "POST", "/v1/summarize", json.dumps({"query": "solar", "wrap_up": 2}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 400 and "wrap_up must be between 0 and 1" in json.loads(body)["error"]["message"]


def test_web_page_summarises_a_document_and_lists_its_passages(query_server):
    from tests.test_queryapp import CHROMIUM, CHROMIUM_FLAGS

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(query_server.url + "/")
            page.fill("#max-tokens", "8")
            page.fill("#question", "radio/antenna.md")
            page.click("#summarize")
            page.wait_for_selector(".turn.assistant[data-state=done]", timeout=120_000)
            shown = page.eval_on_selector(".turn.assistant .text", "e => e.textContent")
            sources = page.locator(".turn.assistant .sources summary").all_inner_texts()
        finally:
            browser.close()
    status, _, body = raw(query_server, "POST", "/v1/summarize",
                          json.dumps({"document": "radio/antenna.md", "max_tokens": 8}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 200 and shown == json.loads(body)["summary"]
    assert sources and all("radio/antenna.md" in s for s in sources)
