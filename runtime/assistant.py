"""Question answering over the bundle: retrieval, prompt, generation, citations."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

from runtime.answer_focus import focus_sentences
from runtime.bundle import Bundle
from runtime.decoder import Decoder, load_decoder
from runtime.generation import GenerationConfig, generate
from runtime.memory import bundle_threads
from runtime.prompt import (GroundingOptions, Prompt, answer_sources, fit_prompt, ground_hits, question_coverage,
                            unknown_citations)
from runtime.repetition import RepetitionGuard
from runtime.retrieval import Hit, Retriever
from runtime.stop_strings import StopStringFilter
from runtime.support_quote import Support, find_support
from runtime.tokenizer import ChatTokenizer

# Tokens kept free for the answer when the caller does not say how long it may be.
DEFAULT_ANSWER_TOKENS = 256
# The whole answer when the passages hold too little of the question (GroundingOptions.abstain_below).
ABSTAIN_ANSWER = "I don't know: the documents do not say."
# A finished sentence (or citation) followed by a blank line: where --stop-after-paragraph ends the
# answer. A blank line after "Here's how:" is no end.
PARAGRAPH_END = re.compile(r"[.!?)\]]\s*\n[ \t]*\n\s*$")


def ends_paragraph(text: str) -> bool:
    return PARAGRAPH_END.search(text) is not None


# A finished sentence, with the citations after it: "… venv module [1]." or "… venv module. [1]".
# Not after a list number ("1."), a version ("3.") or a common abbreviation, and not before
# the answer has a few words.
SENTENCE_END = re.compile(r"(?<![\d\s])(?<!\be\.g)(?<!\bi\.e)(?<!\betc)[.!?][\"')\u201d]*(?:\s*\[\d+\])*\.?$")
MIN_SENTENCE_WORDS = 3


def ends_sentence(text: str, following: str) -> bool:
    """`text` ends a sentence and `following` (the next piece of the answer) starts another
    (whitespace, then something other than a citation)."""
    return (bool(following[:1].isspace()) and not following.lstrip().startswith("[")
            and len(text.split()) >= MIN_SENTENCE_WORDS and SENTENCE_END.search(text.rstrip(" \t")) is not None
            and not text.endswith((" ", "\t")))


@dataclass
class AnswerStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    retrieval_s: float = 0.0
    first_token_s: float = 0.0
    total_s: float = 0.0
    # "stop" (end token, stop string or the repetition guard) or "length" (max_new_tokens);
    # the OpenAI API passes it on, so it keeps to those two values
    finish_reason: str = ""
    loop_stopped: bool = False      # the repetition guard ended the answer before a loop
    settings: dict = field(default_factory=dict)  # the sampling and repetition-guard settings used

    @property
    def decode_tokens_per_s(self) -> float:
        decode_s = self.total_s - self.first_token_s
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else 0.0


@dataclass
class Answer:
    """Iterate to receive the answer's text as it is generated; then read text, sources and stats."""

    prompt: Prompt
    _deltas: Iterator[str]
    text: str = ""
    stats: AnswerStats = field(default_factory=AnswerStats)
    question: str = ""

    @property
    def sources(self) -> list[Hit]:
        return self.prompt.sources

    @property
    def cited(self) -> list[Hit]:
        """Sources the answer cites by number or quotes; all sources given to the model when none."""
        return answer_sources(self.text, self.question, self.sources)

    @property
    def support(self) -> Optional[Support]:
        """The sentences of the cited passages that best back the text so far; None without passages."""
        return find_support(self.question, self.text, self.sources)

    def __iter__(self) -> Iterator[str]:
        for delta in self._deltas:
            self.text += delta
            yield delta

    def finish(self) -> "Answer":
        for _ in self:
            pass
        return self

    def close(self) -> None:
        """Stop generating (an abandoned stream, Ctrl-C); the text so far stays."""
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()


def generation_settings(config: GenerationConfig, grounding: GroundingOptions) -> dict:
    """Sampling, repetition-guard and grounding settings as plain JSON values (stop token ids
    left out: they are the tokenizer's)."""
    settings = {name: value for name, value in vars(config).items() if name != "stop_token_ids"}
    return {**settings, **vars(grounding)}


@dataclass
class AskOptions:
    """How a question is answered: the one parameter object from the CLI, the chat and the server to
    Assistant.ask, with every default here."""

    k: int = 4                          # passages retrieved
    mode: Optional[str] = None          # retrieval mode; None: the best the index has
    use_documents: bool = True
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=DEFAULT_ANSWER_TOKENS))
    grounding: GroundingOptions = field(default_factory=GroundingOptions)
    stop: Sequence[str] = ()            # strings that end the answer; they are not part of it
    instructions: Optional[str] = None  # added to the system prompt (an API client's own system message)


class Assistant:
    def __init__(self, tokenizer: ChatTokenizer, decoder: Decoder, retriever: Retriever):
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.retriever = retriever

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: Optional[int] = None, ctx: Optional[int] = None) -> "Assistant":
        threads = bundle_threads(bundle.manifest, threads)
        return cls(
            tokenizer=ChatTokenizer.from_bundle(bundle),
            decoder=load_decoder(bundle, threads=threads, max_length=ctx),
            retriever=Retriever.from_bundle(bundle),
        )

    @property
    def default_mode(self) -> str:
        modes = self.retriever.modes
        return "hybrid" if "hybrid" in modes else modes[0]

    def search(self, query: str, k: int = 4, mode: Optional[str] = None, by_document: bool = True) -> list[Hit]:
        return self.retriever.search(query, k=k, mode=mode or self.default_mode, by_document=by_document)

    def ask(self, question: str, options: Optional[AskOptions] = None, history: Sequence[dict] = ()) -> Answer:
        """Raises runtime.prompt.ContextOverflow when the question cannot fit the context window.

        history: the conversation so far, as chat messages (oldest first).
        """
        options = options or AskOptions()
        config, grounding, instructions = options.generation, options.grounding, options.instructions
        started = time.perf_counter()
        hits = (self.search(question, k=options.k, mode=options.mode,
                            by_document=grounding.passage_order == "documents")
                if options.use_documents and options.k > 0 else [])
        retrieval_s = time.perf_counter() - started
        hits = ground_hits(question, hits, grounding)
        if hits and grounding.abstain_below > 0 and max(
                question_coverage(question, f"{hit.chunk.source.heading}\n{hit.chunk.text}") for hit in hits
        ) < grounding.abstain_below:
            return self._abstain(retrieval_s, config, grounding, started)
        # The answer's room is what it asks for, but at most half the window: a long --max-tokens
        # should not starve the passages; generation then simply stops at the window's end.
        budget = self.decoder.max_length - min(config.max_new_tokens, self.decoder.max_length // 2)
        prompt = fit_prompt(question, hits, self.tokenizer, budget, history, instructions, grounding)
        prompt_ids = self.tokenizer.encode_chat(prompt.messages)
        # Only with passages: the prefix steers how an answer from sources opens.
        prefix = grounding.answer_prefix if prompt.sources else ""
        if prefix:
            prompt_ids = prompt_ids + self.tokenizer.encode(prefix)
        stop_ids = frozenset(config.stop_token_ids) | self.tokenizer.eos_token_ids
        config = GenerationConfig(**{**vars(config), "stop_token_ids": stop_ids})
        answer = Answer(prompt=prompt, _deltas=iter(()))
        answer.question = question
        answer.stats.prompt_tokens = len(prompt_ids)
        answer.stats.retrieval_s = retrieval_s
        answer.stats.settings = generation_settings(config, grounding)
        stops = list(options.stop)
        if grounding.stop_at_unknown_citation and prompt.sources:
            stops += unknown_citations(len(prompt.sources))
        answer._deltas = stream_text(self.decoder, self.tokenizer, prompt_ids, config, answer.stats, started,
                                     StopStringFilter(stops), grounding.stop_after_paragraph,
                                     grounding.stop_after_sentences, prefix,
                                     [self.tokenizer.encode(hit.chunk.text.strip()) for hit in prompt.sources],
                                     [self.tokenizer.encode(sentence) for sentence in
                                      focus_sentences(question, prompt.sources, config.copy_focus)])
        return answer

    def _abstain(self, retrieval_s: float, config: GenerationConfig, grounding: GroundingOptions,
                 started: float) -> Answer:
        """The fixed "I don't know" answer, with no sources and no generation."""
        answer = Answer(prompt=Prompt(messages=[], sources=[]), _deltas=iter([ABSTAIN_ANSWER]))
        answer.stats.retrieval_s = retrieval_s
        answer.stats.settings = generation_settings(config, grounding)
        answer.stats.finish_reason = "stop"
        answer.stats.first_token_s = answer.stats.total_s = time.perf_counter() - started
        return answer


def stream_text(decoder: Decoder, tokenizer: ChatTokenizer, prompt_ids: list[int], config: GenerationConfig,
                stats, started: float, stops: Optional[StopStringFilter] = None,
                stop_after_paragraph: bool = False, stop_after_sentences: int = 0,
                prefix: str = "", copy_sources: Sequence[Sequence[int]] = (),
                focus_sources: Sequence[Sequence[int]] = (), wrap_up_after: int = 0) -> Iterator[str]:
    """The text generated after `prompt_ids`, as it decodes (whole characters only), for answers and
    summaries alike. Keeps the bookkeeping in `stats`: new_tokens (added to), first_token_s (this
    stream's first token, from `started`), finish_reason, loop_stopped and total_s.
    prefix: the answer's opening, already at the end of `prompt_ids`; it comes first in the text.
    copy_sources: token ids of the passages, for the copy bias (config.copy_bonus); focus_sources: of
    the sentences it favours more (config.copy_focus_bonus).
    wrap_up_after: past this many tokens the text ends with its next finished sentence (0: never), so
    that a long text tends to end on a sentence rather than in the middle of one at the limit."""
    stops = stops or StopStringFilter(())
    stream = tokenizer.StreamDecoder(tokenizer)
    stats.finish_reason = "length"
    guard = RepetitionGuard.from_config(config, copy_sources, focus_sources, tokenizer.number_token_ids,
                                        tokenizer.word_ids)
    shown, produced, sentences = prefix, 0, 0
    try:
        if prefix:
            yield prefix
        for token in generate(decoder, prompt_ids, config, guard):
            if token in config.stop_token_ids:
                stats.finish_reason = "stop"
                break
            produced += 1
            stats.new_tokens += 1
            if produced == 1:
                stats.first_token_s = time.perf_counter() - started
            text = stops.push(stream.push(token))
            wrapping_up = 0 < wrap_up_after < produced
            if text and (stop_after_sentences > 0 or wrapping_up) and ends_sentence(shown, text):
                sentences += 1
                if wrapping_up or sentences >= stop_after_sentences > 0:
                    stats.finish_reason = "stop"
                    break
            if text:
                shown += text
                yield text
            if stops.stopped or (stop_after_paragraph and ends_paragraph(shown)):
                stats.finish_reason = "stop"
                break
        else:
            stats.loop_stopped = guard.stopped
            if produced < config.max_new_tokens:
                stats.finish_reason = "stop"
        tail = stops.push(stream.flush()) + stops.flush()
        if tail:
            yield tail
    finally:
        stats.total_s = time.perf_counter() - started
