"""Grounding options of `ask`: passages given, trimming, prompt wording, abstaining, recorded settings."""
from __future__ import annotations

import pytest

from runtime.prompt import (ANSWER_FIRST, SHORTENED_MARK, SYSTEM_PROMPTS, GroundingOptions, build_prompt,
                            ground_hits, question_coverage, trim_passage)
from runtime.retrieval import Chunk, Hit, SourceSpan
from tests.fixtures_queryapp import PUMP_QUESTION

PASSAGE = ("Valves are checked weekly. The coolant pump is primed by opening valve V12. "
           "Close V12 when coolant flows without bubbles. Antennas point south. Panels are cleaned monthly.")


def hit(rank: int, text: str) -> Hit:
    return Hit(rank=rank, score=1.0 / rank, chunk=Chunk(id=rank, text=text, source=SourceSpan(
        path=f"doc{rank}.md", line_start=1, line_end=3, page=None, heading="", char_start=0, char_end=len(text))))


def test_trimmed_passage_keeps_the_sentences_holding_the_question_terms():
    trimmed = trim_passage(PASSAGE, "How is the coolant pump primed?", 2)
    assert trimmed == ("… The coolant pump is primed by opening valve V12. "
                       "Close V12 when coolant flows without bubbles." + SHORTENED_MARK)


def test_passage_no_longer_than_the_window_is_left_whole():
    assert trim_passage("One sentence. Two sentences.", "sentence", 2) == "One sentence. Two sentences."


def test_question_coverage_counts_stemmed_terms_without_stopwords():
    assert question_coverage("How is the pump primed?", "Priming the pumps") == 1.0
    assert question_coverage("How is the pump primed?", "The pump") == 0.5
    assert question_coverage("What is it?", "anything") == 1.0  # nothing to look for


def test_only_the_best_ranked_passages_are_given_trimmed_when_asked():
    hits = [hit(1, PASSAGE), hit(2, "Other text."), hit(3, "More text.")]
    given = ground_hits("Which valve primes the coolant pump?", hits, GroundingOptions(passages=2, trim_sentences=1))
    assert [h.rank for h in given] == [1, 2]
    assert given[0].chunk.text == "… The coolant pump is primed by opening valve V12." + SHORTENED_MARK
    assert given[1].chunk.text == "Other text."


def test_prompt_wording_follows_the_options():
    plain = build_prompt("Why?", [hit(1, PASSAGE)], options=GroundingOptions(system_prompt="cite"))
    assert plain.messages[0]["content"] == SYSTEM_PROMPTS["cite"]
    assert plain.messages[-1]["content"].endswith("Question: Why?")
    brief = build_prompt("Why?", [hit(1, PASSAGE)], options=GroundingOptions(system_prompt="brief", answer_first=True))
    assert brief.messages[0]["content"] == SYSTEM_PROMPTS["brief"]
    assert brief.messages[-1]["content"].endswith(f"Question: Why?\n{ANSWER_FIRST}")
    assert build_prompt("Why?", [hit(1, PASSAGE)]).messages[0]["content"] == \
        SYSTEM_PROMPTS[GroundingOptions().system_prompt]


def test_unknown_system_prompt_is_refused_by_name():
    with pytest.raises(ValueError, match="'chatty'"):
        GroundingOptions(system_prompt="chatty")


def test_assistant_says_it_does_not_know_when_the_passages_lack_the_question(query_assistant):
    from runtime.assistant import ABSTAIN_ANSWER, AskOptions

    answer = query_assistant.ask("Which telescope mirror coating resists xenon plasma?",
                                 AskOptions(grounding=GroundingOptions(abstain_below=0.5))).finish()
    assert answer.text == ABSTAIN_ANSWER
    assert answer.sources == [] and answer.stats.new_tokens == 0
    assert answer.stats.settings["abstain_below"] == 0.5


def test_assistant_answers_when_the_passages_hold_the_question(query_assistant):
    from runtime.assistant import ABSTAIN_ANSWER, AskOptions
    from runtime.generation import GenerationConfig

    answer = query_assistant.ask(PUMP_QUESTION, AskOptions(generation=GenerationConfig(max_new_tokens=4),
                                                           grounding=GroundingOptions(passages=1, abstain_below=0.5))).finish()
    assert answer.text != ABSTAIN_ANSWER and answer.stats.new_tokens > 0
    assert [hit.chunk.source.path for hit in answer.sources] == ["pumps/coolant-pump.md"]


def test_command_line_flags_reach_the_generation_and_grounding_settings():
    from runtime.assistant import AskOptions
    from runtime.cli import ask_options, build_parser

    args = build_parser().parse_args(["ask", "q", "--dry-multiplier", "0.5", "--loop-ngram", "0", "--passages", "1",
                                      "--trim-sentences", "3", "--system-prompt", "brief", "--answer-first",
                                      "--stop-after-paragraph", "--abstain-below", "0.25", "--copy-bonus", "1.5",
                                      "--copy-min-match", "2", "--copy-focus", "2", "--copy-focus-bonus", "3",
                                      "--loop-number-repeats", "5",
                                      "--answer-prefix", "In short,",
                                      "--passage-order", "documents"])
    options = ask_options(args)
    assert (options.generation.dry_multiplier, options.generation.loop_ngram) == (0.5, 0)
    assert (options.generation.copy_bonus, options.generation.copy_min_match) == (1.5, 2)
    assert (options.generation.copy_focus, options.generation.copy_focus_bonus) == (2, 3.0)
    assert options.generation.loop_number_repeats == 5
    assert options.grounding == GroundingOptions(passages=1, trim_sentences=3, system_prompt="brief",
                                                 answer_first=True, stop_after_paragraph=True, abstain_below=0.25,
                                                 answer_prefix="In short,", passage_order="documents")
    assert ask_options(build_parser().parse_args(["ask", "q"])) == AskOptions()  # one source of defaults


def test_a_paragraph_ends_at_a_blank_line_after_a_finished_sentence_only():
    from runtime.assistant import ends_paragraph

    assert ends_paragraph("Use the venv module [1].\n\n")
    assert ends_paragraph("It is primed by opening V12.\n \n")
    assert not ends_paragraph("Here is how to do it:\n\n")
    assert not ends_paragraph("Use venv.\n\n1. Open a terminal.")


def test_answer_prefix_opens_the_answer_and_the_model_continues_it(query_assistant):
    from runtime.answer_focus import focus_sentences
    from runtime.assistant import AskOptions
    from runtime.generation import GenerationConfig, generate
    from runtime.repetition import RepetitionGuard

    prefix = 'The sources say: "'
    config = GenerationConfig(max_new_tokens=6, copy_bonus=2.0)
    grounding = GroundingOptions(passages=1, abstain_below=0.0, stop_after_sentences=0, answer_prefix=prefix)
    answer = query_assistant.ask(PUMP_QUESTION, AskOptions(generation=config, grounding=grounding)).finish()
    assert answer.text.startswith(prefix) and answer.stats.new_tokens == 6
    assert (answer.stats.settings["answer_prefix"], answer.stats.settings["copy_bonus"]) == (prefix, 2.0)
    assert answer.stats.settings["passage_order"] == "relevance"
    tokenizer = query_assistant.tokenizer
    prompt_ids = tokenizer.encode_chat(answer.prompt.messages) + tokenizer.encode(prefix)
    assert answer.stats.prompt_tokens == len(prompt_ids)
    # the copy bias favours the passages' own tokens, not the prompt's, and the focus sentence most
    focus = [tokenizer.encode(s) for s in focus_sentences(PUMP_QUESTION, answer.sources, config.copy_focus)]
    assert focus
    guard = RepetitionGuard.from_config(config, [tokenizer.encode(hit.chunk.text.strip()) for hit in answer.sources],
                                        focus, tokenizer.number_token_ids)
    continued = list(generate(query_assistant.decoder, prompt_ids, config, guard))
    assert answer.text == prefix + tokenizer.decode(continued)


def test_answer_prefix_is_left_out_when_answering_without_passages(query_assistant):
    from runtime.assistant import AskOptions
    from runtime.generation import GenerationConfig

    answer = query_assistant.ask(PUMP_QUESTION, AskOptions(
        use_documents=False, generation=GenerationConfig(max_new_tokens=3),
        grounding=GroundingOptions(answer_prefix="According to the sources,"))).finish()
    assert not answer.text.startswith("According to the sources,")
