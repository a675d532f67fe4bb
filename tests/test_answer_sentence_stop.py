"""--stop-after-sentence: the answer ends with its first finished sentence and the citations after it."""
from __future__ import annotations

import numpy as np

from runtime.assistant import AnswerStats, ends_sentence, stream_text
from runtime.generation import GenerationConfig
from runtime.prompt import SYSTEM_PROMPTS, GroundingOptions, build_prompt


class ScriptedDecoder:
    """A decoder whose greedy choice is always the next token of a fixed answer (then end of text)."""

    max_length = 2048
    prefill_chunk = None

    def __init__(self, answer_ids: list[int], end_id: int, vocab: int):
        self.script = [*answer_ids, end_id]
        self.vocab = vocab
        self.produced = 0

    def reset(self) -> None:
        self.produced = 0

    def forward(self, ids, rows=None) -> np.ndarray:
        logits = np.zeros((1, self.vocab), dtype=np.float32)
        logits[0, self.script[min(self.produced, len(self.script) - 1)]] = 10.0
        self.produced += 1
        return logits


def _answer(query_assistant, scripted: str, stop_after_sentences: int) -> tuple[str, AnswerStats]:
    tokenizer = query_assistant.tokenizer
    end_id = min(tokenizer.eos_token_ids)
    decoder = ScriptedDecoder(tokenizer.encode(scripted), end_id, vocab=max(end_id, *tokenizer.encode(scripted)) + 1)
    config = GenerationConfig(max_new_tokens=64, speculative=False, stop_token_ids=frozenset(tokenizer.eos_token_ids))
    stats = AnswerStats()
    text = "".join(stream_text(decoder, tokenizer, [1, 2, 3], config, stats, 0.0,
                               stop_after_sentences=stop_after_sentences))
    return text, stats


def test_answer_stops_after_its_first_sentence_and_keeps_the_citation(query_assistant):
    scripted = "The answer is:\n\nUse the venv module [1]. Then activate it with source."
    text, stats = _answer(query_assistant, scripted, stop_after_sentences=1)
    assert text == "The answer is:\n\nUse the venv module [1]."
    assert stats.finish_reason == "stop"
    assert _answer(query_assistant, scripted, stop_after_sentences=0)[0] == scripted


def test_answer_stops_after_its_nth_sentence(query_assistant):
    scripted = "Use venv [1]. Here is how:\n\n1. Open a terminal.\n2. Run python3 -m venv env.\n3. Activate it."
    text, _ = _answer(query_assistant, scripted, stop_after_sentences=3)
    assert text == "Use venv [1]. Here is how:\n\n1. Open a terminal.\n2. Run python3 -m venv env."


def test_a_citation_after_the_full_stop_still_belongs_to_the_sentence():
    assert not ends_sentence("Use the venv module.", " [1]")
    assert ends_sentence("Use the venv module. [1]", " Then")
    assert ends_sentence("Use the venv module [1].", "\n")


def test_list_numbers_versions_abbreviations_and_colons_end_no_sentence():
    assert not ends_sentence("Here is how:", "\n")
    assert not ends_sentence("Do this:\n1.", " Open")
    assert not ends_sentence("It needs Python 3.", " x")
    assert not ends_sentence("Use a tool, e.g.", " venv")
    assert not ends_sentence("Use venv.", "py")      # no whitespace: the word goes on
    assert not ends_sentence("Yes.", " It is")       # too few words for an answer yet


def test_example_prompt_shows_one_worked_answer_that_cites_its_source():
    system = build_prompt("Why?", [], options=GroundingOptions(system_prompt="example")).messages[0]["content"]
    assert system.startswith(SYSTEM_PROMPTS["brief"])
    assert "Question: How do I prime the pump?\nAnswer: Open valve V12 until water runs from the vent [1]." in system


def test_stop_after_sentence_flag_reaches_the_grounding_settings():
    from runtime.cli import ask_options, build_parser

    options = ask_options(build_parser().parse_args(["ask", "q", "--stop-after-sentences", "1"]))
    assert options.grounding.stop_after_sentences == 1
    assert ask_options(build_parser().parse_args(["ask", "q", "--stop-after-sentences", "0"])).grounding \
        .stop_after_sentences == 0


def test_answer_ends_before_citing_a_source_it_was_not_given(query_assistant):
    from runtime.assistant import Assistant, AskOptions
    from tests.fixtures_queryapp import PUMP_QUESTION

    tokenizer = query_assistant.tokenizer
    scripted = "Open valve V12 [1]. See also [2] [3] [4] [5]"
    ids = tokenizer.encode(scripted)
    end_id = min(tokenizer.eos_token_ids)
    assistant = Assistant(tokenizer, ScriptedDecoder(ids, end_id, vocab=max(end_id, *ids) + 1),
                          query_assistant.retriever)
    generation = GenerationConfig(max_new_tokens=64, speculative=False)
    answer = assistant.ask(PUMP_QUESTION, AskOptions(generation=generation, grounding=GroundingOptions(
        passages=2, abstain_below=0, stop_after_sentences=0))).finish()
    assert len(answer.sources) == 2
    assert answer.text == "Open valve V12 [1]. See also [2] "
    assert answer.stats.finish_reason == "stop"
    free = assistant.ask(PUMP_QUESTION, AskOptions(generation=generation, grounding=GroundingOptions(
        passages=2, abstain_below=0, stop_after_sentences=0, stop_at_unknown_citation=False))).finish()
    assert free.text == scripted
