"""The supporting quote: which sentences of the cited passages back an answer (hand-made passages)."""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from runtime.prompt import answer_sources
from runtime.retrieval import Chunk, Hit, SourceSpan
from runtime.support_quote import find_support, sentence_spans
from runtime.text_terms import terms
from tests.fixtures_queryapp import PUMP_QUESTION, TEST_CTX

PUMP = ("Coolant pump P-7 sits in the basement. Before the first start it must be primed. "
        "Open the bleed valve V12 and fill the casing with water until no air escapes. "
        "Close V12 again before you start the pump.")
SOLAR = ("The solar array has 24 panels.\nClean the panels with deionised water every month.\n"
         "Never use a pressure washer.")
FILTER = "The intake filter F-2 is replaced every 500 hours. A spare filter is kept in cabinet C."


def hit(rank: int, path: str, text: str) -> Hit:
    return Hit(rank=rank, score=1.0 / rank, chunk=Chunk(id=rank, text=text, source=SourceSpan(
        path=path, line_start=1, line_end=3, page=None, heading="", char_start=0, char_end=len(text))))


SOURCES = [hit(1, "pumps/coolant-pump.md", PUMP), hit(2, "power/solar.txt", SOLAR), hit(3, "filters.md", FILTER)]


def test_sentences_split_at_full_stops_and_line_breaks_keeping_exact_offsets():
    spans = sentence_spans(SOLAR)
    assert [SOLAR[a:b] for a, b in spans] == [
        "The solar array has 24 panels.", "Clean the panels with deionised water every month.",
        "Never use a pressure washer."]
    assert [PUMP[a:b] for a, b in sentence_spans(PUMP)][2].startswith("Open the bleed valve V12")
    assert sentence_spans("Version 1.5 is current. Yes!") == [(0, 23), (24, 28)]
    wrapped = "# Priming\n\nOpen valve V12 for thirty\nseconds while the pump idles.\n- close V12\n- start"
    assert [wrapped[a:b] for a, b in sentence_spans(wrapped)] == [
        "# Priming", "Open valve V12 for thirty\nseconds while the pump idles.", "- close V12", "- start"]


def test_the_sentence_sharing_most_terms_with_answer_and_question_is_quoted():
    support = find_support("How is the coolant pump P-7 primed?",
                           "Open the bleed valve V12 and fill the casing with water [1].", SOURCES)
    assert support.supported
    first = support.quotes[0]
    assert first.text == "Open the bleed valve V12 and fill the casing with water until no air escapes."
    assert first.source == 1 and first.citation == "pumps/coolant-pump.md:1-3"
    assert PUMP[first.char_start:first.char_end] == first.text


def test_a_second_sentence_is_quoted_only_when_it_backs_answer_terms_the_first_does_not():
    both = find_support("How is pump P-7 primed?",
                        "Open the bleed valve V12, fill the casing with water, then close V12 before "
                        "you start the pump [1].", SOURCES)
    assert [q.text for q in both.quotes] == [
        "Open the bleed valve V12 and fill the casing with water until no air escapes.",
        "Close V12 again before you start the pump."]
    one = find_support("When is the filter replaced?", "Every 500 hours [3].", SOURCES)
    assert [q.text for q in one.quotes] == ["The intake filter F-2 is replaced every 500 hours."]
    assert one.quotes[0].source == 3


def test_only_the_cited_passages_are_quoted_and_all_when_none_is_cited():
    cited = find_support("How are the panels cleaned?", "With deionised water [2].", SOURCES)
    assert {q.source for q in cited.quotes} == {2}
    assert cited.quotes[0].text == "Clean the panels with deionised water every month."
    uncited = find_support("What is replaced every 500 hours?", "The intake filter F-2.", SOURCES)
    assert uncited.quotes[0].source == 3


def test_a_passage_the_answer_quotes_is_its_source_whatever_number_it_writes():
    # The model copies passage [1] word for word and cites [2] after it.
    answer = "Open the bleed valve V12 and fill the casing with water [2]."
    assert answer_sources(answer, "How is the pump primed?", SOURCES) == [SOURCES[1], SOURCES[0]]
    support = find_support("How is the pump primed?", answer, SOURCES)
    assert support.quotes[0].source == 1 and support.quotes[0].text.startswith("Open the bleed valve V12")
    # Seven words in common are not a quote; nor is a run the question holds too.
    assert answer_sources("Open the bleed valve V12 and fill [2].", "How?", SOURCES) == [SOURCES[1]]
    question = "Why open the bleed valve V12 and fill the casing with water?"
    assert answer_sources(answer, question, SOURCES) == [SOURCES[1]]
    # Without a number every passage given stays a source, quoted or not.
    assert answer_sources("Clean the panels with deionised water every month.", "How?", SOURCES) == SOURCES


def test_an_answer_sharing_nothing_with_its_sources_is_unsupported():
    support = find_support("When must it be primed?", "Bananas are yellow [1].", SOURCES)
    assert not support.supported
    # The sentence closest to the question is still shown, for the person to check.
    assert support.quotes[0].text == "Before the first start it must be primed."
    nothing = find_support("Bananas?", "Bananas are yellow.", SOURCES)
    assert not nothing.supported and nothing.quotes == []


def test_no_support_is_reported_for_an_answer_given_without_passages():
    assert find_support("Hello?", "Hello there.", []) is None


# -- through the server, the CLI and the web page (tiny random model: its answer is gibberish,
#    so what is checked is that the quotes are exact sentences of the sources and that
#    `supported` says whether the answer shares a term with them) -------------------------------


def shares_terms(answer: str, source_texts: list[str]) -> bool:
    answer_terms = set(terms(re.sub(r"\[\d+\]", " ", answer)))
    return any(answer_terms & set(terms(text)) for text in source_texts)


def check_quotes(quotes: list, sources_by_number: dict) -> None:
    assert quotes, "the question's own terms pick a sentence of the pump passage"
    assert len(quotes) <= 2
    for quote in quotes:
        source = sources_by_number[quote["source"]]
        assert source["citation"] == quote["citation"]
        assert source["text"][quote["char_start"]:quote["char_end"]] == quote["text"]
    assert quotes[0]["citation"].startswith("pumps/coolant-pump.md:")


def test_server_answer_carries_quotes_from_its_sources_and_says_if_it_is_supported(query_server):
    host, port = query_server.server_address[:2]
    body = {"messages": [{"role": "user", "content": PUMP_QUESTION}], "max_tokens": 8, "temperature": 0}
    connection = http.client.HTTPConnection(host, port, timeout=120)
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    reply = json.loads(connection.getresponse().read())
    connection.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})
    events = [json.loads(line[6:]) for line in connection.getresponse().read().decode().splitlines()
              if line.startswith("data: {")]
    connection.close()
    answer = reply["choices"][0]["message"]["content"]
    sources = {n: source for n, source in enumerate(reply["sources"], 1)}
    check_quotes(reply["quotes"], sources)
    cited = [sources[int(n)] for n in re.findall(r"\[(\d+)\]", answer) if int(n) in sources] or sources.values()
    assert reply["supported"] is shares_terms(answer, [s["text"] for s in cited])
    final = [e for e in events if e.get("choices") and e["choices"][0]["finish_reason"]]
    assert final[0]["quotes"] == reply["quotes"] and final[0]["supported"] == reply["supported"]


def test_ask_prints_the_supporting_quote_and_json_carries_it(query_staging):
    repo = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "runtime", "--bundle", str(query_staging), "ask", PUMP_QUESTION,
               "--max-tokens", "8", "--threads", "1", "--ctx", str(TEST_CTX)]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    as_json = subprocess.run([*command, "--json"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    as_text = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert as_json.returncode == 0 and as_text.returncode == 0, as_json.stderr + as_text.stderr
    reply = json.loads(as_json.stdout)
    check_quotes(reply["quotes"], {q["source"]: {"citation": s["citation"], "text": s["text"]}
                                   for q in reply["quotes"] for s in reply["sources"]
                                   if s["citation"] == q["citation"]})
    assert reply["supported"] is shares_terms(reply["answer"], [s["text"] for s in reply["sources"]])
    for quote in reply["quotes"]:
        assert f'quote [{quote["source"]}]: "{quote["text"]}"' in as_text.stdout
    assert ("unsupported: the answer shares no words with its sources" in as_text.stdout) is not reply["supported"]
